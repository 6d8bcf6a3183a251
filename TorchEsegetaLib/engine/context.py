"""How a method runs: device, batching, progress, cancellation and time budget.

Methods say *what* to compute as a function of a batch of samples; :meth:`Context.map_batches`
decides *how*: in batches sized to the device, halving the batch when memory runs out, reporting
progress after each batch and checking the cancel token and the time budget between batches.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BudgetExceededError, CancelledError, OutOfMemoryError

if TYPE_CHECKING:
    import torch

ProgressCallback = Callable[[float, str], None]

#: What the running batch of :meth:`Context.map_batches` does with the progress of a long pass
#: inside it (see :func:`pass_progress`).
_PASS_HOOK: ContextVar[Callable[[float | None], None] | None] = ContextVar(
    "torchesegeta_pass_hook", default=None
)


def pass_progress(fraction: float | None) -> None:
    """Called by long single passes (a sliding-window inference, window batch by window batch)
    with the fraction of the pass done, or None: the batch of :meth:`Context.map_batches`
    running it moves the progress bar within the batch (from a fraction) and checks cancel and
    time budget, so that even one pass over a large volume shows progress and stops promptly.
    Outside a method run, nothing happens."""
    hook = _PASS_HOOK.get()
    if hook is not None:
        hook(fraction)


class CancelToken:
    """A thread-safe flag: set it from anywhere, the running method stops at its next batch."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


#: How allocators say they ran out: CUDA ("CUDA out of memory"), and the CPU allocator on
#: Linux ("can't allocate memory") and Windows ("not enough memory").
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and any(m in message for m in _OUT_OF_MEMORY)


def free_cached_memory(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings on CUDA are otherwise meaningless)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory_bytes(device: torch.device) -> float:
    """Memory available to new tensors on ``device`` (CUDA: free device memory; CPU: MemAvailable)."""
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(
            free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        )
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(4 * 2**30)  # no /proc (macOS, Windows): assume a modest 4 GiB


def measure_sample_bytes(
    score: Callable[[torch.Tensor], torch.Tensor], sample: torch.Tensor, times: Any = None
) -> float:
    """Memory of one forward + backward pass of ``score`` on one sample.

    ``times``: a :class:`~TorchEsegetaLib.runs.cost.PassTimes` that gets the seconds of the pass this measurement
    ran (forward and backward on CUDA, a forward without gradients for eager CPU models).

    On CUDA the allocator's peak is measured. On the CPU, where PyTorch keeps no such count,
    it is estimated from the tensors the forward pass keeps for backward plus their gradients:
    an upper bound that errs on the safe side. Those tensors are every leaf module's output
    (forward hooks) for eager models, and what autograd itself saves for TorchScript models,
    whose modules refuse hooks.
    """
    import torch

    sample = sample[:1].detach()
    if sample.device.type == "cuda":
        torch.cuda.synchronize(sample.device)
        base = torch.cuda.memory_allocated(sample.device)
        torch.cuda.reset_peak_memory_stats(sample.device)
        began = time.perf_counter()
        with torch.enable_grad():
            x = sample.clone().requires_grad_(True)
            score(x).sum().backward()
        torch.cuda.synchronize(sample.device)
        if times is not None:
            times.record("backward", 1, time.perf_counter() - began)
        del x
        return float(torch.cuda.max_memory_allocated(sample.device) - base)
    network = getattr(getattr(score, "forward", None), "network", None)
    if network is not None and any(
        isinstance(m, torch.jit.ScriptModule) for m in network.modules()
    ):
        total = saved_for_backward_bytes(score, sample)
    else:
        began = time.perf_counter()
        total = _leaf_output_bytes(score, sample, network)
        if times is not None:
            times.record("forward", 1, time.perf_counter() - began)
    return float(2 * total + 4 * sample.numel() * sample.element_size())


def _leaf_output_bytes(
    score: Callable[[torch.Tensor], torch.Tensor], sample: torch.Tensor, network: Any
) -> int:
    """Bytes of every leaf module's output in one forward pass (without gradients)."""
    import torch

    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    modules = (
        [m for m in network.modules() if not list(m.children())] if network is not None else []
    )
    handles = [m.register_forward_hook(count) for m in modules]
    try:
        with torch.no_grad():
            score(sample)
    finally:
        for handle in handles:
            handle.remove()
    return total


def saved_for_backward_bytes(
    score: Callable[[torch.Tensor], torch.Tensor], sample: torch.Tensor
) -> int:
    """Bytes autograd keeps for the backward pass of one forward pass, each storage once.

    Autograd's saved-tensor hooks see the tensors saved by TorchScript's operations too; the
    graph is dropped unused.
    """
    import torch

    seen: set[tuple[int, int]] = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen.add((storage.data_ptr(), storage.nbytes()))
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        score(sample.clone().requires_grad_(True))
    return sum(nbytes for _, nbytes in seen)


@dataclass
class Context:
    """Everything a method needs to know about *how* it runs.

    Attributes:
        device: where tensors live.
        max_batch: the largest number of samples per forward/backward pass. None: sized from
            the free memory of the device and ``sample_bytes`` (at most 4 on CPU, where larger
            batches buy no speed, and 64 on CUDA), then tuned for speed by the first batches;
            halved automatically on out-of-memory.
        sample_bytes: measured memory of one sample's forward + backward pass
            (:func:`measure_sample_bytes`), None when unknown.
        progress: called with (fraction in [0, 1], message) after each batch.
        cancel: checked between batches.
        budget_s: seconds this method may run (None: no limit).
        seed: seed of the method's random draws (noise, baselines).
        notes: what the run should tell the user about this method (run.json's warnings).
        facts: what the method measured about how it ran (the passes it really made, the
            levels of a refinement, what window reuse ran and skipped), kept in the method's
            entry of run.json.
    """

    device: Any = "cpu"
    max_batch: int | None = None
    progress: ProgressCallback | None = None
    cancel: CancelToken | None = None
    budget_s: float | None = None
    seed: int = 0
    sample_bytes: float | None = None
    started: float = field(default_factory=time.perf_counter)
    #: the batch sizes found fastest per kind of work, shared with the quiet copies
    tuned: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import torch

        self.device = torch.device(self.device)

    def batch_limit(self, kind: str = "backward") -> int:
        """Largest batch for ``kind`` of work: "backward" (forward + backward) or "forward"."""
        if self.max_batch is not None:
            return max(1, int(self.max_batch))
        if kind in self.tuned:
            return self.tuned[kind]
        cap = 64 if self.device.type == "cuda" else 4
        if not self.sample_bytes:
            return cap
        # Half of the free memory, the rest left for the volume-sized buffers and the allocator.
        return int(min(cap, max(1, 0.5 * free_memory_bytes(self.device) // self.sample_bytes)))

    def report(self, fraction: float, message: str = "") -> None:
        if self.progress is not None:
            self.progress(min(max(fraction, 0.0), 1.0), message)

    def check(self) -> None:
        """Raise if the run was cancelled or ran past its budget."""
        if self.cancel is not None and self.cancel.cancelled:
            raise CancelledError("cancelled")
        if self.budget_s is not None and time.perf_counter() - self.started > self.budget_s:
            raise BudgetExceededError(f"time budget of {self.budget_s:g} s exceeded")

    def quiet(self) -> Context:
        """The same context without progress reports (for a method run inside another)."""
        return dataclasses.replace(self, progress=None)

    def part(self, start: float, stop: float) -> Context:
        """The same context reporting its progress as the span ``start``..``stop`` of this
        one's (for a method that runs several rounds of batches, one after the other)."""
        progress = self.progress
        if progress is None:
            return self

        def within(fraction: float, message: str) -> None:
            progress(start + (stop - start) * fraction, message)

        return dataclasses.replace(self, progress=within)

    def fixed(self, batch: int) -> Context:
        """A quiet copy that runs batches of ``batch`` (halved only if memory runs out)."""
        return dataclasses.replace(self, progress=None, max_batch=batch)

    def _within(
        self,
        start: int,
        stop: int,
        total: int,
        message: str,
        outer: Callable[[float | None], None] | None,
    ) -> Callable[[float | None], None]:
        """The pass hook of batch ``start:stop``: progress within the batch (never backwards),
        cancel and budget checks, and the same for the batch of an enclosing run."""
        reached = [0.0]

        def hook(fraction: float | None) -> None:
            self.check()
            overall = None
            if fraction is not None:
                reached[0] = max(reached[0], fraction)
                overall = (start + (stop - start) * reached[0]) / max(total, 1)
                self.report(overall, f"{message} {start}/{total} ({reached[0]:.0%} of a pass)")
            if outer is not None:
                outer(overall)

        return hook

    def generator(self) -> torch.Generator:
        import torch

        generator = torch.Generator(device="cpu")
        generator.manual_seed(self.seed)
        return generator

    def map_batches(
        self,
        total: int,
        compute: Callable[[int, int], None],
        message: str = "",
        kind: str = "backward",
    ) -> None:
        """Call ``compute(start, stop)`` over ``range(total)`` in batches.

        The batch starts at :meth:`batch_limit` and is halved whenever a batch runs out of
        memory; a failure at batch size 1 is raised as :class:`OutOfMemoryError`. Unless the
        user fixed ``max_batch``, the first batches also tune the size for speed: a batch half
        as large is tried for as long as it processes samples faster (on CPUs a mid-sized batch
        often beats the largest that fits); the work done while tuning is kept, never repeated.
        ``compute`` must only accumulate its results once it has succeeded. ``kind`` says whether
        a batch runs forward and backward passes or forward passes only: each kind keeps its
        own tuned size (forward-only work usually prefers larger batches).
        """
        batch = min(self.batch_limit(kind), max(total, 1))
        tuning = self.max_batch is None and kind not in self.tuned and batch > 1
        best_rate = float("inf")
        best_batch = batch
        start = 0
        outer = _PASS_HOOK.get()
        while start < total:
            self.check()
            stop = min(start + batch, total)
            began = time.perf_counter()
            token = _PASS_HOOK.set(self._within(start, stop, total, message, outer))
            try:
                compute(start, stop)
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                free_cached_memory(self.device)
                if batch == 1:
                    raise OutOfMemoryError(
                        f"out of memory on {self.device} even with one sample per pass; run on a "
                        "device with more memory, use --device cpu, or crop the image / use a "
                        "sliding-window model with a smaller roi_size"
                    ) from error
                batch = max(1, batch // 2)
                best_batch = min(best_batch, batch)
                if kind in self.tuned:
                    self.tuned[kind] = min(self.tuned[kind], batch)
                self.notes.append(f"out of memory: batch size reduced to {batch}")
                continue
            finally:
                _PASS_HOOK.reset(token)
            warmed = f"{kind} warmed"
            if tuning and stop - start == batch and not self.tuned.get(warmed):
                # The first batch of a run pays one-off costs (allocations, caches): not timed.
                self.tuned[warmed] = 1
            elif tuning and stop - start == batch:
                synchronize(self.device)
                rate = (time.perf_counter() - began) / batch
                if rate < best_rate:
                    best_rate, best_batch = rate, batch
                    batch = max(1, batch // 2)
                    tuning = batch < best_batch
                else:
                    batch, tuning = best_batch, False
                if not tuning:
                    self.tuned[kind] = best_batch
            start = stop
            self.report(start / total, f"{message} {start}/{total}".strip())
