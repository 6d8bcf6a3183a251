"""What each method of a run will cost, said before the run starts.

Each method declares the network passes it needs as a function of its parameters and the
input (:meth:`~TorchEsegetaLib.methods.base.Method.passes`, beside its parameters). The runner measures one
pass of this model on this input and device, without and with a backward pass, exactly as the
methods will run it (the sliding windows a local target needs, a crop, denormal floats flushed
to zero or kept as the first pass decided), and multiplies. The
measured pass is of one sample: batched passes on a GPU take less per sample, so the estimate
errs long there. A method estimated to take longer than ``warn_after_s`` is warned about with
the settings that would make it cheaper.

A model that runs its network once per window (MONAI's sliding windows, nnU-Net's windows,
mirror combinations and folds) is not run whole for the estimate: every pass of it repeats the
same batch of network inputs, so :func:`measure_window_batch` times one such batch without and
with its backward pass and multiplies by the batches of a pass (plus a pass without gradients
where the score's gradient needs the blended prediction first). Its memory per sample is that
batch's graph and the volume-sized buffers of a pass, not every window's graph.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..engine.denormals import DenormalFlush
    from ..methods.base import Method, Passes

#: Default threshold of the long-run warning, in seconds (``--warn-after``, ``warn_after_s``).
WARN_AFTER_S = 600.0


@dataclass
class PassTimes:
    """Measured seconds of one pass, per kind ("forward": without gradients, "backward": with
    its backward pass) and batch size: {kind: {batch: seconds of the whole batch}}."""

    seconds: dict[str, dict[int, float]] = field(default_factory=dict)
    #: a batch of samples takes as long as its samples one by one (windowed passes run one
    #: example's windows at a time): no batch needs timing
    linear: bool = False

    def record(self, kind: str, batch: int, seconds: float) -> None:
        self.seconds.setdefault(kind, {})[batch] = seconds

    def of(self, kind: str, passes: int) -> float:
        """Estimated seconds of ``passes`` passes of ``kind``, run in batches as large as the
        largest measured (a single pass at the time of one)."""
        measured = self.seconds.get(kind, {})
        if not passes or not measured:
            return 0.0
        if passes == 1 and 1 in measured:
            return measured[1]
        batch = max(measured)
        return passes * measured[batch] / batch


@dataclass
class Estimate:
    """One method's estimated cost.

    Attributes:
        label: the method's label in the run.
        passes: its forward-only and forward+backward passes.
        seconds: the estimated time.
        cheaper: settings that cost less (empty unless the estimate passes the threshold).
    """

    label: str
    passes: Passes
    seconds: float
    warn_after_s: float
    cheaper: list[str] = field(default_factory=list)
    #: the passes are an upper bound (the method decides them as it runs; run.json's facts
    #: keep the real count)
    upper_bound: bool = False

    @property
    def too_long(self) -> bool:
        return self.seconds > self.warn_after_s

    def describe(self) -> str:
        """One line: the passes, the time of each, the estimate."""
        parts = [
            f"{count:,} {what} pass{'' if count == 1 else 'es'}"
            for count, what in (
                (self.passes.forward, "forward"),
                (self.passes.backward, "forward+backward"),
            )
            if count
        ]
        passes = " + ".join(parts) or "no passes"
        if self.upper_bound:
            return f"{self.label}: at most {passes}, up to about {duration(self.seconds)}"
        return f"{self.label}: {passes}, about {duration(self.seconds)}"

    def warning(self) -> str:
        takes = "could take up to" if self.upper_bound else "would take"
        return (
            f"{self.label} {takes} about {duration(self.seconds)}, more than the "
            f"{duration(self.warn_after_s)} of --warn-after; cheaper: {'; '.join(self.cheaper)}"
        )

    def record(self) -> dict[str, Any]:
        """What run.json keeps of the estimate."""
        record = {
            "seconds": round(self.seconds, 3),
            "forward_passes": self.passes.forward,
            "backward_passes": self.passes.backward,
        }
        return {**record, "upper_bound": True} if self.upper_bound else record


def measure_pass_times(
    score: Any,
    x: torch.Tensor,
    times: PassTimes,
    batches: dict[str, int],
    denormals: DenormalFlush | None = None,
) -> PassTimes:
    """Time the passes the run will make: for each kind in ``batches``, one pass of one sample
    (unless already measured) and one batch of ``batches[kind]`` samples, the size the engine
    starts with (batched passes take less per sample, on CPUs too; the runner asks for a batch
    only when a method makes at least four times as many passes). ``denormals``: the run's
    arithmetic, which the passes are timed under (a pass over denormal weights takes tens of
    times longer exactly than flushed); None: the arithmetic of the caller's thread."""
    import torch

    from ..engine.context import is_out_of_memory, synchronize
    from ..methods import input_gradients

    if denormals is not None:
        with denormals.scope():
            return measure_pass_times(score, x, times, batches)

    def run(kind: str, batch: int) -> None:
        data = x[:1].detach().expand(batch, *x.shape[1:]).contiguous()
        synchronize(data.device)
        began = time.perf_counter()
        if kind == "forward":
            with torch.no_grad():
                score(data)
        else:
            input_gradients(score, data)
        synchronize(data.device)
        times.record(kind, batch, time.perf_counter() - began)

    for kind, batch in batches.items():
        for size in sorted({1} if times.linear else {1, max(1, batch)}):
            if size in times.seconds.get(kind, {}):
                continue
            try:
                run(kind, size)
            except Exception as error:  # a batch too large to time: the engine will halve it
                if not is_out_of_memory(error) or size == 1:
                    raise
    return times


def measure_window_batch(
    forward: Any, x: torch.Tensor, target: Any, times: PassTimes
) -> float | None:
    """Time one batch of network inputs of a windowed model's pass, without and with its
    backward pass, and record the passes they make up in ``times`` (see the module doc);
    returns the memory of one sample (that batch's graph and a pass's buffers) for the engine's
    batch sizes. None for a model whose pass is one network call per example."""
    import torch

    from ..engine.context import saved_for_backward_bytes, synchronize

    if not getattr(forward, "windowed", False):
        return None
    passes = forward.windowed_pass(x[:1].detach(), target)
    began = time.perf_counter()
    rows = next(iter(passes.row_batches(progress=None)))
    data = passes.inputs(rows)  # the pass's preparation (preprocessing, resampling) comes first
    network = passes.network(rows)
    synchronize(data.device)
    prepared = time.perf_counter() - began
    seconds = {}
    for kind in ("forward", "backward"):
        began = time.perf_counter()
        with torch.set_grad_enabled(kind == "backward"):
            inputs = data.detach().requires_grad_(kind == "backward")
            outputs = network(inputs)
            if kind == "backward":
                torch.autograd.grad(outputs, inputs, grad_outputs=torch.ones_like(outputs))
        synchronize(data.device)
        seconds[kind] = time.perf_counter() - began
    batches = passes.rows_per_example / len(rows)
    blend = seconds["forward"] if passes.gradient_needs_blend() else 0.0
    times.linear = True
    times.record("forward", 1, prepared + batches * seconds["forward"])
    times.record("backward", 1, prepared + batches * (blend + seconds["backward"]))
    graph = saved_for_backward_bytes(lambda d: network(d), data)
    buffers = 8 * x[:1].numel() * x.element_size() * max(1, int(forward.card.out_channels))
    return float(2 * graph + buffers)


def estimate(
    label: str,
    method: Method,
    passes: Passes,
    times: PassTimes,
    warn_after_s: float,
    hints: list[str],
) -> Estimate:
    """The estimate of one method from its passes and the measured times."""
    seconds = times.of("forward", passes.forward) + times.of("backward", passes.backward)
    result = Estimate(label, passes, seconds, warn_after_s, upper_bound=method.passes_are_bound)
    if result.too_long:
        result.cheaper = method.cheaper() + hints
    return result


def general_hints(device: torch.device, forward: Any, target_kind: str, cropped: bool) -> list[str]:
    """Cheaper settings of the run itself (any method): a smaller target, a GPU."""
    hints = []
    if getattr(forward, "sliding", False):
        if target_kind in ("class", "contrast", "boundary"):  # regions across the image
            hints.append(
                "an ROI target (--target roi:i0,j0,k0:i1,j1,k1): only the sliding windows that "
                "touch it run"
            )
    elif not cropped:
        hints.append(
            "--crop-margin 16: explain a crop around the target (a measured approximation)"
        )
    if device.type != "cuda":
        hints.append("a GPU (--device cuda)")
    return hints


def duration(seconds: float) -> str:
    """``seconds`` for people: "0.4 s", "12 s", "7 min", "3 h 5 min"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min"
