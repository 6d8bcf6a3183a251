"""What the two window reuses share (MONAI's sliding windows, :mod:`.window_reuse`; nnU-Net's,
:mod:`.nnunet.reuse`): where their cache lives and how large it may grow, the record ``run.json``
keeps of what they ran, and running their small bookkeeping operations on one CPU thread."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

#: Share of the free memory of a device the cache may take.
CACHE_SHARE = 0.25


def cache_budget(window_bytes: int, windows: int, device: torch.device) -> tuple[torch.device, int]:
    """Where the cache of ``windows`` predictions of ``window_bytes`` each lives, and how many
    of them it holds: on ``device`` when all fit in :data:`CACHE_SHARE` of its free memory, else
    on the host, as many as fit in that share of the host's free memory."""
    from ..engine.context import free_memory_bytes

    if device.type != "cpu" and windows * window_bytes <= CACHE_SHARE * free_memory_bytes(device):
        return device, windows
    host = torch.device("cpu")
    fitting = int(CACHE_SHARE * free_memory_bytes(host) // max(window_bytes, 1))
    return host, min(windows, fitting)


class ReuseRecord:
    """What a window reuse counts, and the record ``run.json`` keeps of it: network inputs run
    and skipped, copies that ran as full inferences, and the cache's size and place."""

    windows_run = 0  # network inputs run for perturbed copies
    windows_full = 0  # what a full inference per perturbed copy would have run
    perturbations = 0
    full_inferences = 0
    window_bytes = 0
    cache: dict[int, torch.Tensor]
    cache_device: torch.device
    gradient: torch.Tensor | None  # set where the score is linear: rescored per window

    @property
    def windows_per_inference(self) -> int:
        raise NotImplementedError

    def count(self, perturbations: int) -> None:
        self.perturbations += perturbations
        self.windows_full += perturbations * self.windows_per_inference

    def record(self) -> dict[str, Any]:
        return {
            "windows_per_inference": self.windows_per_inference,
            "perturbations": self.perturbations,
            "full_inferences": self.full_inferences,
            "windows_run": self.windows_run,
            "windows_skipped": self.windows_full - self.windows_run,
            "cache_windows": len(self.cache),
            "cache_bytes": len(self.cache) * self.window_bytes,
            "cache_device": str(self.cache_device),
            "rescoring": "per window" if self.gradient is not None else "re-blend",
        }


@contextmanager
def serial(device: torch.device) -> Iterator[None]:
    """Run the block's tensor operations on one CPU thread. Window reuse's bookkeeping is
    many operations on a window's worth of voxels: on a CPU, splitting each over threads costs
    more than it saves, and far more while other processes hold the cores (measured: 30 us on
    one thread against 2 to 7 ms on two busy ones for the same copy of 32^3 voxels)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
