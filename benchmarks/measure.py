"""What the benchmarks measure with: wall time, peak memory, map differences, the table."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # Linux: reset the process's peak resident set size
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def timed(fn: Callable[[], Any], device: torch.device, repeat: int) -> tuple[float, Any, float]:
    """Best wall time of ``repeat`` runs, the last result, and the peak memory (MB)."""
    best, result = float("inf"), None
    if repeat > 1:
        fn()  # warm-up: allocator, cudnn autotuning, lazy imports
    reset_peak(device)
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result, peak_mb(device)


def max_rel_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max().clamp(min=1e-30))


class Table:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        case: str,
        ours: float,
        reference: float,
        reference_name: str,
        floor: float | None,
        memory: float,
        diff: float | None,
    ) -> None:
        row = {
            "case": case,
            "ours_s": ours,
            "reference": reference_name,
            "reference_s": reference,
            "ratio": ours / reference if reference else None,
            "over_floor": ours / floor if floor else None,
            "peak_mb": memory,
            "max_rel_diff": diff,
        }
        self.rows.append(row)
        print(self.format(row), flush=True)

    @staticmethod
    def header() -> str:
        return f"| {'case':<44} | {'ours s':>8} | {'reference':<34} | {'ref s':>8} | {'ours/ref':>8} | {'ours/floor':>10} | {'peak MB':>8} | {'max diff':>9} |\n|{'-' * 46}|{'-' * 10}|{'-' * 36}|{'-' * 10}|{'-' * 10}|{'-' * 12}|{'-' * 10}|{'-' * 11}|"

    @staticmethod
    def format(row: dict[str, Any]) -> str:
        floor = f"{row['over_floor']:.2f}" if row["over_floor"] else "-"
        diff = f"{row['max_rel_diff']:.1e}" if row["max_rel_diff"] is not None else "-"
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        return f"| {row['case']:<44} | {row['ours_s']:8.3f} | {row['reference']:<34} | {row['reference_s']:8.3f} | {ratio:>8} | {floor:>10} | {row['peak_mb']:8.0f} | {diff:>9} |"


class WholeInference(torch.nn.Module):
    """A model's forward as a plain module: methods see none of its window machinery (window
    reuse, window-by-window passes), so every perturbed input runs every window and gradients
    go through the whole inference in one graph, as a reference computes them."""

    def __init__(self, forward: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.network = forward, forward.network

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.inner(inputs)
