"""The passes of a sliding-window model that go window batch by window batch.

Methods explain a sliding-window model through its whole blended prediction, but holding the
graph of every window at once would make memory grow with the volume. These passes use the
structure of the inferer instead: the score's gradient (or DeepLIFT's multipliers, or LRP's
relevance) with respect to the blended output is known first, shared out to each window by the
inferer's weights, and pulled back through one window batch at a time, so peak memory is set by
the window batch. Each equals the same quantity through the whole inference (tested). Per-window
maps (layer methods) are blended onto the volume as the predictions are, through the model's
:class:`~.windowed.WindowedPass`. A network that places windows of its own (nnU-Net's pipeline:
``windowed_pass``, ``windows_per_pass``, ``score_gradients``) is handed these passes instead.

:class:`WindowPasses` is a mixin of :class:`~TorchEsegetaLib.models.inference.SegmentationForward`,
which provides ``card``, ``sliding``, ``preprocess``, ``plan``, ``_plan_of`` and ``_network``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..engine.windows import PairedPass, divisible_crop, pad_to_multiple
from .window_reuse import WindowReuse, window_incidence
from .windowed import SlidingPass, Target, WholePass, WindowedPass, layer_windows

if TYPE_CHECKING:
    import numpy as np

    from ..engine.windows import WindowPlan
    from .card import ModelCard


class WindowPasses:
    """Window-by-window passes of a sliding-window forward (see the module docstring)."""

    if TYPE_CHECKING:  # what SegmentationForward provides
        card: ModelCard
        network: Any

        @property
        def windowed(self) -> bool: ...

        def _network(self, x: torch.Tensor) -> torch.Tensor: ...

        @property
        def sliding(self) -> bool: ...

        def preprocess(self, x: torch.Tensor) -> torch.Tensor: ...

        def plan(self, padded: torch.Tensor) -> WindowPlan: ...

        def _plan_of(self, spatial_shape: Sequence[int]) -> WindowPlan: ...

    def windows_per_pass(self, spatial_shape: Sequence[int]) -> int:
        """How many network inputs one example's pass runs (1 for whole-volume models)."""
        if self.sliding:
            return len(self._plan_of(spatial_shape).indices)
        if self.windowed:
            return int(self.network.windows_per_pass(spatial_shape))
        return 1

    def windowed_pass(self, x: torch.Tensor, target: Target | None = None) -> WindowedPass:
        """This model's pass over ``x`` network call by network call (:mod:`.windowed`): the
        sliding windows, the network's own windows (nnU-Net), or one call per example."""
        if self.sliding:
            return SlidingPass(self, x, target)  # type: ignore[arg-type]
        if self.windowed:
            return self.network.windowed_pass(self.preprocess(x), target)
        return WholePass(self, x, target)

    def window_reuse(
        self, x: torch.Tensor, target: Target, cache_bytes: float | None = None
    ) -> WindowReuse | None:
        """Scores of perturbed copies of ``x`` (one example) that run only the windows each
        perturbation touches (:mod:`.window_reuse`); None where that cannot be done: a model
        without sliding windows, a MONAI model's target that is not a sum of voxel shares. A
        network that places windows of its own (nnU-Net) reuses them itself."""
        if not self.sliding:
            own = getattr(self.network, "window_reuse", None) if self.windowed else None
            return own(x[:1], target, self.preprocess, cache_bytes) if own is not None else None
        if not callable(getattr(target, "voxel_scores", None)):
            return None
        return WindowReuse(self, x[:1], target, cache_bytes)  # type: ignore[arg-type]

    def window_incidence(
        self, spatial_shape: Sequence[int], boxes: Sequence[Sequence[slice]]
    ) -> tuple[np.ndarray, int] | None:
        """(boxes, windows) bool: the windows a reusing run recomputes for each perturbation
        box (:func:`.window_reuse.window_incidence`; nnU-Net's: after its preparation), and the
        network inputs per window (nnU-Net: folds x mirror combinations; else 1). None without
        windows."""
        if not self.sliding:
            own = getattr(self.network, "window_incidence", None) if self.windowed else None
            return own(boxes) if own is not None else None
        return window_incidence(self, spatial_shape, boxes), 1

    def reused_windows(
        self, spatial_shape: Sequence[int], boxes: Sequence[Sequence[slice]]
    ) -> int | None:
        """Network inputs a reusing run of these perturbation boxes computes, the unperturbed
        pass included; None without windows."""
        found = self.window_incidence(spatial_shape, boxes)
        if found is None:
            return None
        incidence, per_window = found
        return (incidence.shape[1] + int(incidence.sum())) * per_window

    def blend_windows(self, maps: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
        """Maps computed per network input (B * windows in use, C, *s), example-major in the
        order the windows run, brought to an input of ``spatial_shape`` as the predictions are
        (see :meth:`.windowed.WindowedPass.add_maps`)."""
        examples = maps.shape[0] // self.windows_per_pass(spatial_shape)
        shape = (examples, self.card.in_channels, *spatial_shape)
        nothing = torch.zeros((), dtype=maps.dtype, device=maps.device).expand(shape)
        return self.windowed_pass(nothing).blend(maps)

    def _model_grid(self, spatial_shape: Sequence[int]) -> tuple[slice, ...]:
        """Where the input sits in its padded-to-divisible grid, as an index of (B, C, ...)."""
        crop = divisible_crop(spatial_shape, self.card.size_divisible)
        return (slice(None), slice(None), *crop)

    def layer_windows(
        self,
        inputs: Sequence[torch.Tensor],
        target: Target,
        layers: Sequence[torch.nn.Module],
        gradients: Sequence[bool],
    ) -> Iterator[tuple[list[Any], list[tuple[torch.Tensor, torch.Tensor | None]]]]:
        """A layer's feature maps, one batch of network inputs at a time (:func:`.windowed.layer_windows`).

        ``inputs`` are inputs of one shape, run in lockstep (a path point, a noisy input and a
        baseline: the same windows of each come together). Yields, per batch: the rows (as
        :meth:`windowed_pass` lists them), and for each input the layer's output on those rows
        and, where ``gradients`` says so, the gradient of the target score of the *whole
        blended prediction* with respect to that output. Peak memory: one batch's graph.
        """
        passes = [self.windowed_pass(x, target) for x in inputs]
        return layer_windows(passes, layers, gradients)

    def score_gradients(
        self, x: torch.Tensor, target: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(scores, d scores / d x) window by window for sliding-window models; None otherwise.

        Equal to differentiating through the whole sliding-window inference, with peak memory
        set by the window batch instead of the volume (see :mod:`TorchEsegetaLib.engine.windows`).
        """
        if not self.sliding:
            if not self.windowed:
                return None
            with torch.enable_grad():  # the network's own windows (nnU-Net)
                raw = x.detach().requires_grad_(True)
                prepared = self.preprocess(raw)
                found = self.network.score_gradients(prepared, target)
                if found is None:
                    return None
                (grad,) = torch.autograd.grad(prepared, raw, grad_outputs=found[1])
            return found[0], grad
        with torch.enable_grad():
            raw = x.detach().requires_grad_(True)
            prepared, crop = pad_to_multiple(self.preprocess(raw), self.card.size_divisible)
            plan = self.plan(prepared)
            full = self._upstream(prepared, crop, plan, target)
            grad_prepared, blended, _ = plan.input_gradients(
                prepared, self._network, full, self.card.sw_batch_size
            )
            (grad,) = torch.autograd.grad(prepared, raw, grad_outputs=grad_prepared)
        with torch.no_grad():
            scores = target(blended[crop])
        return scores, grad

    def _upstream(
        self,
        prepared: torch.Tensor,
        crop: tuple[slice, ...],
        plan: WindowPlan,
        target: Callable[[torch.Tensor], torch.Tensor],
        through: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The score's gradient with respect to the blended output, on the padded grid
        (B, K, *prepared spatial shape): known up front for a linear target, otherwise from one
        inference without a graph. ``through(logits)`` replaces the gradient of a non-linear
        target by another upstream quantity (DeepLIFT's multipliers)."""
        linear = getattr(target, "output_gradient", None)
        upstream = (
            linear(self.card.out_channels, prepared.device, prepared.dtype) if linear else None
        )
        if upstream is None:
            with torch.no_grad():
                logits = plan.infer(prepared.detach(), self._network, self.card.sw_batch_size)
            if through is not None:
                upstream = through(logits[crop])
            else:
                logits = logits[crop].detach().requires_grad_(True)
                with torch.enable_grad():
                    (upstream,) = torch.autograd.grad(target(logits).sum(), logits)
        else:
            upstream = upstream.expand(prepared.shape[0], -1, *upstream.shape[2:])
        full = torch.zeros(
            (prepared.shape[0], upstream.shape[1], *prepared.shape[2:]),
            dtype=prepared.dtype,
            device=prepared.device,
        )
        full[crop] = upstream.to(full.dtype)
        return full

    def paired_score_gradients(
        self,
        x: torch.Tensor,
        reference: torch.Tensor,
        target: Callable[[torch.Tensor], torch.Tensor],
        paired: PairedPass,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """DeepLIFT's :meth:`score_gradients`: each step runs on ``x`` and ``reference``
        together through ``paired`` (rules recorded on the reference, applied on the input):
        the intensity preprocessing, every window batch, and the target on the blended
        outputs. Returns (multipliers of the score with respect to ``x``, scores of ``x``,
        scores of ``reference``), equal to DeepLIFT through the whole sliding-window inference
        with peak memory set by the window batch; None for whole-volume models.
        """
        if not self.sliding:
            return None
        multiple = self.card.size_divisible
        with torch.enable_grad():
            raw = x.detach().requires_grad_(True)
            prepared, prepared_reference = paired(self.preprocess, raw, reference.detach())
            prepared, crop = pad_to_multiple(prepared, multiple)
            prepared_reference, _ = pad_to_multiple(prepared_reference.detach(), multiple)
            plan = self.plan(prepared)

            def multipliers(logits: torch.Tensor) -> torch.Tensor:
                """The target's own multipliers, between the blended outputs."""
                with torch.no_grad():
                    logits_reference = plan.infer(
                        prepared_reference, self._network, self.card.sw_batch_size
                    )[crop]
                logits = logits.detach().requires_grad_(True)
                scores, _ = paired(target, logits, logits_reference)
                return torch.autograd.grad(scores.sum(), logits)[0]

            full = self._upstream(prepared, crop, plan, target, through=multipliers)
            grad_prepared, blended, blended_reference = plan.input_gradients(
                prepared,
                self._network,
                full,
                self.card.sw_batch_size,
                reference=prepared_reference,
                paired=paired,
            )
            (grad,) = torch.autograd.grad(prepared, raw, grad_outputs=grad_prepared)
        assert blended_reference is not None
        with torch.no_grad():
            scores = target(blended[crop])
            scores_reference = target(blended_reference[crop])
        return grad, scores, scores_reference

    def window_relevance(
        self,
        x: torch.Tensor,
        start: Callable[[torch.Tensor], torch.Tensor],
        call: Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor], torch.Tensor],
        stabilise: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor | None:
        """LRP through the sliding-window inference, window by window (memory set by the
        window batch): ``x`` is the network's input (preprocessed), ``start(logits)`` the
        relevance of the blended logits, ``call(network, windows)`` runs the network under the
        LRP rules. Returns the relevance of ``x``; None for whole-volume models.
        See :meth:`WindowPlan.input_relevance`."""
        if not self.sliding:
            return None
        padded, crop = pad_to_multiple(x.detach(), self.card.size_divisible)
        plan = self.plan(padded)
        batch = self.card.sw_batch_size
        with torch.no_grad():
            logits = plan.infer(padded, self._network, batch)
        relevance = torch.zeros_like(logits)
        relevance[crop] = start(logits[crop])
        result = plan.input_relevance(
            padded,
            lambda windows: call(self._network, windows),
            relevance,
            logits,
            batch,
            stabilise,
        )
        return result[crop]
