"""Peak memory of one piece of work (one method), measured as honestly as the platform allows.

* CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak, minus what was allocated
  before: the tensors the work itself created (PyTorch's caching allocator, not the driver).
* CPU on Linux: the process's resident-set high-water mark (``VmHWM``), reset through
  ``/proc/self/clear_refs`` before the work, minus the resident set at its start. It counts
  everything the process touched (PyTorch's CPU allocator is invisible to ``tracemalloc``).
  Freed heap memory is first handed back to the system (glibc ``malloc_trim``): otherwise a
  method would reuse what an earlier one freed and show almost no growth.
* Elsewhere: not measured (``None``), rather than a process-wide maximum that a previous
  method may have set.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int | None:
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _release_free_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the peak may then undercount reused memory


def _reset_rss_peak() -> bool:
    _release_free_heap()
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets the peak RSS (Linux >= 4.0)
    except OSError:
        return False
    return True


class PeakMemory:
    """Context manager: ``with PeakMemory(device) as peak: work()``; then ``peak.record()``."""

    def __init__(self, device: Any) -> None:
        import torch

        self.device = torch.device(device)
        self.kind: str | None = None
        self.peak_mb: float | None = None
        self._start = 0

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.kind = "cuda_max_allocated"
        elif _reset_rss_peak() and (rss := _status_kib("VmRSS")) is not None:
            self._start = rss * 1024
            self.kind = "rss_peak"
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.kind == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.kind == "rss_peak" and (hwm := _status_kib("VmHWM")) is not None:
            peak = hwm * 1024
        else:
            self.kind = None
            return
        self.peak_mb = round(max(peak - self._start, 0) / 2**20, 2)

    def record(self) -> dict[str, Any]:
        """``{"peak_memory_mb": ..., "memory_kind": ...}`` for run.json (None when not measured)."""
        return {"peak_memory_mb": self.peak_mb, "memory_kind": self.kind}
