"""Denormal floats on the CPU: flushed to zero for our own passes, counted in tensors.

A denormal (subnormal) float is a nonzero value below the smallest normal one (about 1.18e-38
in float32). x86 CPUs compute with them on a slow microcode path: a model whose weights or
gradients are full of them runs each pass several to tens of times slower. The SSE control
register's flush-to-zero and denormals-are-zero bits (``torch.set_flush_denormal``) make the CPU
treat them as zero instead.

Those bits belong to a thread. ``torch.set_flush_denormal`` sets them on the calling thread
only, while torch runs each operation's work on a pool of OpenMP threads: measured with two
threads, a multiplication of a tensor of denormals came out half flushed (the calling thread's
half), and a pass of ``benchmarks/denormals.py`` hardly gained. A thread the pool adds later
copies the bits of the thread that creates it. :class:`DenormalFlush` therefore sets them on the
calling thread and on every thread of its OpenMP pool (through the runtime's ``GOMP_parallel``),
checks on a parallel operation that every thread flushes, and gives each thread back its own
previous bits when the scope ends, so a Slicer session or a Python console is left as it was.
Autograd's backward pass of CPU tensors runs on the thread that calls it, with the same pool: the
scope covers it too. CUDA kernels do not read these bits. See docs/denormals.md.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: (integer view, exponent bits, mantissa bits) per floating dtype name: a denormal has a zero
#: exponent and a nonzero mantissa. Read from the bits, so the count does not depend on
#: whether the thread counting flushes (under denormals-are-zero, ``x != 0`` is False for one).
_BITS = {
    "float32": ("int32", 0x7F800000, 0x007FFFFF),
    "float64": ("int64", 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
    "float16": ("int16", 0x7C00, 0x03FF),
    "bfloat16": ("int16", 0x7F80, 0x007F),
}

_SMALLEST_DOUBLE = 5e-324  # a denormal double
_A_DENORMAL_FLOAT32 = 0x00200000  # the bits of 2.9e-39

#: elements per thread of the parallel multiplication that checks the flush (torch splits
#: elementwise work into chunks of 32768 elements, so each thread gets at least one)
_CHECK_CHUNK = 2 * 32768


def flushing_denormals() -> bool:
    """Whether the calling thread flushes denormals (a denormal times one gives zero)."""
    denormal, one = _SMALLEST_DOUBLE, 1.0  # variables: the compiler must not fold the product
    return denormal * one == 0.0


def denormal_mask(tensor: torch.Tensor) -> torch.Tensor:
    """Bool mask of the denormal values of a floating tensor (all False for other dtypes)."""
    import torch

    bits = _BITS.get(str(tensor.dtype).removeprefix("torch."))
    if bits is None:
        return torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
    integer, exponent, mantissa = bits
    raw = tensor.detach().contiguous().view(getattr(torch, integer))
    return ((raw & exponent) == 0) & ((raw & mantissa) != 0)


def count_denormals(tensors: Iterable[torch.Tensor]) -> tuple[int, int]:
    """(denormal values, floating-point values) over ``tensors``, each tensor once."""
    denormal = total = 0
    seen: set[int] = set()
    for tensor in tensors:
        if id(tensor) in seen or not tensor.is_floating_point():
            continue
        seen.add(id(tensor))
        denormal += int(denormal_mask(tensor).sum())
        total += tensor.numel()
    return denormal, total


# --- every thread of the calling thread's OpenMP pool ------------------------------------------

_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_NOT_FOUND = object()
_parallel: Any = None  # the runtime's GOMP_parallel, _NOT_FOUND, or None before the first look


def _openmp_parallel() -> Any:
    """``GOMP_parallel`` of the OpenMP runtime torch runs its work on, or None.

    The runtime shipped inside torch first (pip wheels: ``torch/lib/libgomp.so.1``; LLVM's and
    Intel's runtimes export the same entry point), then whatever the process has loaded. Which
    pool it reached is checked afterwards, by :func:`_unflushed_share`.
    """
    global _parallel
    if _parallel is None:
        import torch

        folder = Path(torch.__file__).parent
        candidates: list[str | None] = [
            str(path)
            for pattern in ("libgomp*", "libiomp5*", "libomp*")
            for place in (folder / "lib", folder.parent / "torch.libs")
            for path in sorted(place.glob(pattern))
        ]
        _parallel = _NOT_FOUND
        for candidate in [*candidates, None]:
            try:
                function = ctypes.CDLL(candidate).GOMP_parallel  # CDLL releases the GIL
            except (OSError, AttributeError, TypeError):  # TypeError: no CDLL(None) on Windows
                continue
            function.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
            function.restype = None
            _parallel = function
            break
    return None if _parallel is _NOT_FOUND else _parallel


def _on_every_thread(action: Callable[[int], None], threads: int) -> None:
    """``action(native thread id)`` on the calling thread and on each thread of its OpenMP pool
    of ``threads`` (a team of that size: libgomp reuses the calling thread's pool for it)."""
    parallel = _openmp_parallel()
    if parallel is None or threads <= 1:
        action(threading.get_native_id())
        return

    def body(_: Any) -> None:
        action(threading.get_native_id())

    parallel(_CALLBACK(body), None, threads, 0)


def _set_flags(on: dict[int, bool] | bool, default: bool = False) -> tuple[dict[int, bool], bool]:
    """Set every thread's flush bits (``on``: one value, or one per native thread id, ``default``
    for the others); returns each thread's previous bits and whether the CPU has them."""
    import torch

    previous: dict[int, bool] = {}
    supported = [True]

    def action(thread: int) -> None:
        previous[thread] = flushing_denormals()
        wanted = on if isinstance(on, bool) else on.get(thread, default)
        supported[0] = torch.set_flush_denormal(wanted) and supported[0]

    # as many threads as set before, should the pool have shrunk since
    _on_every_thread(action, max(torch.get_num_threads(), 0 if isinstance(on, bool) else len(on)))
    return previous, supported[0]


def _unflushed_share() -> float:
    """Share of a parallel multiplication of denormals that came out denormal: 0 when every
    thread torch runs the operation on flushes."""
    import torch

    count = _CHECK_CHUNK * max(1, torch.get_num_threads())
    # made from its bits: a float converted on a flushing thread would already be zero
    denormals = torch.full((count,), _A_DENORMAL_FLOAT32, dtype=torch.int32).view(torch.float32)
    return float(denormal_mask(denormals * 1.0).float().mean())


class DenormalFlush:
    """Whether a run's passes flush denormals to zero, and the scope in which they do.

    Args:
        requested: the job's ``flush_denormals`` (on by default).
        device: where the run computes; flushing applies to the CPU only.

    ``with flush.scope():`` flushes on the calling thread and its OpenMP pool when
    :attr:`active`, and restores every thread's own setting afterwards, after an exception
    too; nested scopes of one object are free. The first segmentation pass checks that
    flushing leaves the labelmap unchanged (:meth:`checked`); where it does not, the run keeps
    exact arithmetic from then on.
    """

    def __init__(self, requested: bool = True, device: Any = "cpu") -> None:
        import torch

        self.requested = bool(requested)
        self.device = torch.device(device)
        #: what the check of the first segmentation pass found (None: not checked)
        self.check: dict[str, Any] | None = None
        #: why this run keeps exact arithmetic although flushing was asked for
        self.exact_reason: str | None = None
        #: what the last scope found: how many threads flush, the share left unflushed
        self.coverage: dict[str, Any] = {}
        self._depth = 0
        self._previous: dict[int, bool] | None = None
        self._caller_previous = False

    @classmethod
    def of(cls, flush_denormals: bool | DenormalFlush, device: Any) -> DenormalFlush:
        """A run's own object as it is, or a new one for a bool (the setting of one call)."""
        if isinstance(flush_denormals, DenormalFlush):
            return flush_denormals
        return cls(flush_denormals, device)

    @property
    def active(self) -> bool:
        """Whether this run's passes flush denormals."""
        return self.requested and self.device.type == "cpu" and self.exact_reason is None

    @contextmanager
    def scope(self) -> Iterator[DenormalFlush]:
        """Flush denormals (when :attr:`active`) until the block ends."""
        if self._depth == 0 and self.active:
            self._caller_previous = flushing_denormals()
            self._previous, supported = _set_flags(True)
            if not supported:
                self._restore()
                self.exact_reason = "this CPU cannot flush denormals (no DAZ/FTZ support)"
            else:
                self.coverage = {
                    "threads": len(self._previous),
                    "unflushed_share": round(_unflushed_share(), 4),
                }
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._restore()

    @contextmanager
    def exact(self) -> Iterator[None]:
        """Exact arithmetic inside a flushing scope (the check's reference pass)."""
        if self._previous is None:
            yield
            return
        _set_flags(False)
        try:
            yield
        finally:
            _set_flags(True)

    def checked(self, check: dict[str, Any]) -> None:
        """Keep what the first pass's check found; where flushing changed the labelmap, the
        run computes exactly from now on."""
        self.check = check
        if not check["labelmaps_equal"]:
            self.exact_reason = (
                f"flushing denormal floats to zero changed the labelmap on the check region "
                f"({check['changed_voxels']} of {check['voxels']} voxels; largest probability "
                f"difference {check['max_probability_difference']:.3g}): this run keeps exact "
                "arithmetic (slower on CPU when the model is full of denormals)"
            )
            self._restore()

    def warnings(self, denormal_weight_share: float = 0.0) -> list[str]:
        """What the run's warnings say: flushing turned off by the check, or a model full of
        denormal weights run exactly on the CPU on request."""
        if self.check is not None and self.exact_reason is not None:
            return [self.exact_reason]
        if not self.requested and self.device.type == "cpu" and denormal_weight_share >= 0.01:
            return [
                f"{denormal_weight_share:.0%} of the model's weights are denormal floats and "
                "--no-flush-denormals keeps them: CPU passes may be many times slower"
            ]
        return []

    def record(self) -> dict[str, Any]:
        """What run.json keeps: asked for, used, why not, the check, the threads covered."""
        record: dict[str, Any] = {"requested": self.requested, "flush": self.active}
        if self.exact_reason is not None:
            record["exact_reason"] = self.exact_reason
        if self.check is not None:
            record["check"] = self.check
        if self.coverage:
            record.update(self.coverage)
        return record

    def _restore(self) -> None:
        if self._previous is not None:
            previous, self._previous = self._previous, None
            _set_flags(previous, default=self._caller_previous)
