"""A model's pass over a batch, network call by network call: the seam of per-window explanations.

A segmentation model calls its network once on the whole (padded) volume, once per sliding
window (MONAI's inferer), or once per window, mirror combination and fold (nnU-Net), and turns
the outputs into one prediction by a fixed recipe: a weighted blend, then (nnU-Net) a resampling
back to the input grid. A :class:`WindowedPass` exposes that structure, so that an explanation
can go one network call at a time, with memory set by one call, whatever the model:

* :meth:`~WindowedPass.row_batches` lists the network inputs ("rows": one window, one flip of a
  window, or one whole example) a batch at a time, in the order the model runs them;
  :meth:`~WindowedPass.inputs` and :meth:`~WindowedPass.network` give each batch's tensor and
  the network that runs it;
* :meth:`~WindowedPass.output_gradient` is the target score's gradient with respect to those
  rows' outputs (the blend is linear: the score's gradient with respect to the prediction,
  shared out by the blend's weights), so a backward pass through one batch gives its exact share
  of the whole pass's gradient (input gradients, layer gradients);
* :meth:`~WindowedPass.add_maps` and :meth:`~WindowedPass.maps` bring maps computed per row (on
  a layer's grid, or the row's own) back to the input grid exactly as the rows' predictions are
  brought back: upsampled to the window, flipped back, blended with the same weights, averaged
  over folds and resampled like the probabilities;
* :meth:`~WindowedPass.scores_replacing` is the target score when one row's output is replaced
  (Score-CAM's masked inputs, Ablation-CAM's ablated channels, or any perturbation confined to
  one network input): the others' contributions are kept, nothing else is rerun.

:class:`WholePass` (whole-volume models and plain networks) and :class:`SlidingPass` (MONAI's
sliding windows) are here; :class:`~.nnunet.windows.NnUNetPass` is nnU-Net's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..engine.windows import WindowCanvas, pad_to_multiple
from ..errors import UserInputError

if TYPE_CHECKING:
    from .inference import SegmentationForward

Target = Callable[[torch.Tensor], torch.Tensor]


class WindowedPass:
    """One pass of a model over a batch of examples, as the network calls it makes.

    Subclasses set :attr:`examples` and :attr:`rows_per_example` and implement the methods below
    (see the module docstring). Nothing is computed before it is asked for: the blended
    prediction (for scores) and the score's gradient with respect to it are computed once, on
    first use, by one pass without a graph.
    """

    examples: int
    #: network inputs per example in one pass
    rows_per_example: int
    target: Target | None

    def row_batches(self, progress: bool | None = True) -> Iterator[list[Any]]:
        """The rows (opaque descriptors) a batch at a time, in the model's order; after each
        batch the pass reports progress as :meth:`~..engine.windows.WindowPlan.window_batches`."""
        raise NotImplementedError

    def inputs(self, rows: Sequence[Any]) -> torch.Tensor:
        """The network inputs of ``rows``, (len(rows), C, *window), detached."""
        raise NotImplementedError

    def network(self, rows: Sequence[Any]) -> Callable[[torch.Tensor], torch.Tensor]:
        """The network that runs ``rows`` (one of several folds' networks for nnU-Net)."""
        raise NotImplementedError

    def output_gradient(self, rows: Sequence[Any]) -> torch.Tensor:
        """d score / d (the rows' network outputs), (len(rows), K, *window)."""
        raise NotImplementedError

    def gradient_needs_blend(self) -> bool:
        """Whether :meth:`output_gradient` first runs every row without gradients (the score's
        gradient depends on the blended prediction: a non-linear target, a clipped resampling)."""
        return getattr(self.target, "output_gradient", None) is None

    def add_maps(self, rows: Sequence[Any], maps: torch.Tensor) -> None:
        """Add per-row maps (len(rows), C', *s), on the row's grid or a layer's coarser grid
        (upsampled trilinearly, as captum's ``LayerAttribution.interpolate``)."""
        raise NotImplementedError

    def maps(self) -> torch.Tensor:
        """The maps added so far, blended and on the input grid: (examples, C', *input shape)."""
        raise NotImplementedError

    def scores(self) -> torch.Tensor:
        """The target scores (examples,) of the pass."""
        raise NotImplementedError

    def scores_replacing(
        self, rows: Sequence[Any], index: int, outputs: torch.Tensor, base: torch.Tensor
    ) -> torch.Tensor:
        """The target scores (n,) of the pass with the output of ``rows[index]`` (``base``,
        (1, K, *window)) replaced by each of ``outputs`` (n, K, *window); the other rows keep
        their outputs."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------
    def blend(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps of every row (examples * rows_per_example, C', *s), in the order of
        :meth:`row_batches`, brought to the input grid (see :meth:`add_maps`)."""
        start = 0
        for rows in self.row_batches(progress=None):
            self.add_maps(rows, maps[start : start + len(rows)])
            start += len(rows)
        if start != maps.shape[0]:
            raise ValueError(f"{maps.shape[0]} maps for {start} network inputs")
        return self.maps()

    def _needs_target(self) -> Target:
        if self.target is None:
            raise ValueError("this pass was made without a target")
        return self.target


def upsampled(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Maps on a layer's grid brought to ``size`` (linear interpolation, align_corners=False)."""
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[maps.dim()]
    return F.interpolate(maps, size=tuple(size), mode=mode, align_corners=False)


def windowed_pass(forward: Any, x: torch.Tensor, target: Target | None = None) -> WindowedPass:
    """The pass of ``forward`` (a :class:`~.inference.SegmentationForward` or a plain network)
    on ``x``: the forward's own, or one network call per example."""
    own = getattr(forward, "windowed_pass", None)
    return own(x, target) if own is not None else WholePass(forward, x, target)


class WholePass(WindowedPass):
    """A model that runs its network once per example, on the whole (padded) volume."""

    def __init__(self, forward: Any, x: torch.Tensor, target: Target | None = None) -> None:
        self.forward, self.x, self.target = forward, x, target
        self.examples, self.rows_per_example = x.shape[0], 1
        self._data: tuple[torch.Tensor, tuple[slice, ...]] | None = None
        self._canvas: torch.Tensor | None = None

    @property
    def data(self) -> tuple[torch.Tensor, tuple[slice, ...]]:
        """The network's input (padded) and where the input grid lies in it."""
        if self._data is None:
            prepare = getattr(self.forward, "network_input", None)
            with torch.no_grad():
                if prepare is None:
                    self._data = self.x.detach(), (slice(None),) * self.x.dim()
                else:
                    self._data = prepare(self.x.detach())
        return self._data

    def row_batches(self, progress=True):
        from ..engine.context import pass_progress

        for example in range(self.examples):
            yield [example]
            if progress is not None:
                pass_progress((example + 1) / self.examples if progress else None)

    def inputs(self, rows):
        return torch.cat([self.data[0][e : e + 1] for e in rows])

    def network(self, rows):
        return getattr(self.forward, "_network", self.forward)

    def _outputs(self, rows: Sequence[int]) -> torch.Tensor:
        with torch.no_grad():
            return self.network(rows)(self.inputs(rows))

    def output_gradient(self, rows):
        target = self._needs_target()
        data, crop = self.data
        with torch.enable_grad():
            outputs = self._outputs(rows).requires_grad_(True)
            (gradient,) = torch.autograd.grad(target(outputs[crop]).sum(), outputs)
        return gradient

    def add_maps(self, rows, maps):
        data, crop = self.data
        up = upsampled(maps, data.shape[2:])[crop]
        if self._canvas is None:
            shape = (self.examples, maps.shape[1], *self.x.shape[2:])
            self._canvas = torch.zeros(shape, dtype=maps.dtype, device=maps.device)
        for row, example in enumerate(rows):
            self._canvas[example] = up[row]

    def maps(self):
        if self._canvas is None:
            raise ValueError("no maps were added")
        return self._canvas

    def scores(self):
        target = self._needs_target()
        crop = self.data[1]
        return torch.cat([target(self._outputs([e])[crop]) for e in range(self.examples)])

    def scores_replacing(self, rows, index, outputs, base):
        with torch.no_grad():
            return self._needs_target()(outputs[self.data[1]])


class SlidingPass(WindowedPass):
    """MONAI's sliding-window inferer (:class:`~..engine.windows.WindowPlan`): one row per window
    in use, blended with the importance map and divided by the weight of all windows."""

    def __init__(
        self, forward: SegmentationForward, x: torch.Tensor, target: Target | None = None
    ) -> None:
        self.forward, self.x, self.target = forward, x, target
        self.examples = x.shape[0]
        shape = forward._plan_of(x.shape[2:]).input_shape  # the plan in x's dtype
        self.plan = forward.plan_for(shape, x.device, x.dtype)
        self.rows_per_example = len(self.plan.indices)
        self._prepared: tuple[torch.Tensor, tuple[slice, ...]] | None = None
        self._padded: torch.Tensor | None = None
        self._upstream: torch.Tensor | None = None
        self._blended: torch.Tensor | None = None
        self._canvas: WindowCanvas | None = None

    @property
    def prepared(self) -> tuple[torch.Tensor, tuple[slice, ...]]:
        """The preprocessed input padded to ``size_divisible``, and where the input lies in it."""
        if self._prepared is None:
            forward = self.forward
            with torch.no_grad():
                prepared = forward.preprocess(self.x.detach())
                self._prepared = pad_to_multiple(prepared, forward.card.size_divisible)
        return self._prepared

    def row_batches(self, progress=True):
        return self.plan.window_batches(self.examples, self.forward.card.sw_batch_size, progress)

    def inputs(self, rows):
        if self._padded is None:
            self._padded = self.plan.pad(self.prepared[0])
        return torch.cat([self._padded[r] for r in rows])

    def network(self, rows):
        return self.forward._network

    def output_gradient(self, rows):
        if self._upstream is None:
            prepared, crop = self.prepared
            upstream = self.forward._upstream(prepared, crop, self.plan, self._needs_target())
            count = self.plan.count.to(upstream.device, upstream.dtype)
            self._upstream = self.plan.pad(upstream) / count
        return torch.cat([self._upstream[r] for r in rows]) * self.plan.importance

    def add_maps(self, rows, maps):
        up = upsampled(maps, self.plan.roi_size)
        if self._canvas is None:
            self._canvas = WindowCanvas(self.plan, self.examples, up.shape[1], up.device, up.dtype)
        self._canvas.add(rows, up)

    def maps(self):
        if self._canvas is None:
            raise ValueError("no maps were added")
        return self._canvas.result()[self.forward._model_grid(self.x.shape[2:])]

    def _blended_padded(self) -> torch.Tensor:
        """The blended prediction on the plan's padded grid (no graph)."""
        if self._blended is None:
            prepared, _ = self.prepared
            with torch.no_grad():
                blended = self.plan.infer(
                    prepared, self.forward._network, self.forward.card.sw_batch_size
                )
            self._blended = self.plan.pad(blended)
        return self._blended

    def scores(self):
        blended = self.plan.crop(self._blended_padded())
        with torch.no_grad():
            return self._needs_target()(blended[self.prepared[1]])

    def scores_replacing(self, rows, index, outputs, base):
        example, _, *window = rows[index]
        plan = self.plan
        count = plan.count.to(outputs.device, outputs.dtype)[tuple(window)]
        blended = self._blended_padded()[example]
        changed = blended.expand(outputs.shape[0], *blended.shape[1:]).clone()
        at = (slice(None), slice(None), *window)
        changed[at] += (outputs - base) * plan.importance / count
        with torch.no_grad():
            return self._needs_target()(plan.crop(changed)[self.prepared[1]])


def layer_outputs(
    passes: WindowedPass,
    rows: Sequence[Any],
    layers: Sequence[torch.nn.Module],
    gradient: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One batch of rows through its network with a layer captured (``layers``: the layer in
    each network the pass may call): the layer's output, the score's gradient with respect to
    it (with ``gradient``; see :meth:`WindowedPass.output_gradient`) and the rows' outputs."""
    captured: list[torch.Tensor] = []

    def keep(_module: Any, _inputs: Any, output: Any) -> Any:
        captured.append(output)
        # the network goes on with a copy: a later in-place operation cannot change it
        return output.clone() if isinstance(output, torch.Tensor) else None

    handles = [layer.register_forward_hook(keep) for layer in layers]
    try:
        data = passes.inputs(rows)
        with torch.set_grad_enabled(gradient):
            outputs = passes.network(rows)(data.requires_grad_(gradient))
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != 1:
        raise UserInputError(
            f"the layer ran {len(captured)} times in 1 network call; a layer map needs one "
            "feature map per network input: choose another layer"
        )
    activation, grads = captured[0], None
    if not isinstance(activation, torch.Tensor) or activation.dim() != data.dim():
        shape = list(activation.shape) if isinstance(activation, torch.Tensor) else type(activation)
        raise UserInputError(
            f"the layer outputs {shape}, not a feature map (batch, channels, *spatial); choose "
            "a convolution, normalisation or activation layer"
        )
    if gradient:
        (grads,) = torch.autograd.grad(
            outputs, activation, grad_outputs=passes.output_gradient(rows), allow_unused=True
        )
        grads = torch.zeros_like(activation) if grads is None else grads
    return activation.detach(), grads, outputs.detach()


def layer_windows(
    passes: Sequence[WindowedPass],
    layers: Sequence[torch.nn.Module],
    gradients: Sequence[bool],
) -> Iterator[tuple[list[Any], list[tuple[torch.Tensor, torch.Tensor | None]]]]:
    """A layer's feature maps through several passes of one shape run in lockstep (a path
    point, a noisy input and a baseline: the same rows of each come together), one batch of
    rows at a time: yields the rows and, per pass, the layer's output and (where ``gradients``
    says so) the score's gradient with respect to it. Peak memory: one batch's graph."""
    batches = [p.row_batches(progress=i == 0) for i, p in enumerate(passes)]
    for together in zip(*batches):
        maps = []
        for p, rows, wanted in zip(passes, together, gradients):
            activation, grads, _ = layer_outputs(p, rows, layers, wanted)
            maps.append((activation, grads))
        yield together[0], maps
