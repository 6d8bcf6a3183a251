"""The passes of a sliding-window model that go window batch by window batch.

Methods explain a sliding-window model through its whole blended prediction, but holding the
graph of every window at once would make memory grow with the volume. These passes use the
structure of the inferer instead: the score's gradient (or DeepLIFT's multipliers, or LRP's
relevance) with respect to the blended output is known first, shared out to each window by the
inferer's weights, and pulled back through one window batch at a time, so peak memory is set by
the window batch. Each equals the same quantity through the whole inference (tested). Per-window
maps (layer methods) are blended onto the volume as the predictions are.

:class:`WindowPasses` is a mixin of :class:`~TorchEsegetaLib.models.inference.SegmentationForward`,
which provides ``card``, ``sliding``, ``preprocess``, ``plan``, ``_plan_of`` and ``_network``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from ..engine.windows import PairedPass, WindowCanvas, divisible_crop, pad_to_multiple
from ..errors import UserInputError

if TYPE_CHECKING:
    from ..engine.windows import WindowPlan
    from .card import ModelCard


class WindowPasses:
    """Window-by-window passes of a sliding-window forward (see the module docstring)."""

    if TYPE_CHECKING:  # what SegmentationForward provides
        card: ModelCard

        def _network(self, x: torch.Tensor) -> torch.Tensor: ...

        @property
        def sliding(self) -> bool: ...

        def preprocess(self, x: torch.Tensor) -> torch.Tensor: ...

        def plan(self, padded: torch.Tensor) -> WindowPlan: ...

        def _plan_of(self, spatial_shape: Sequence[int]) -> WindowPlan: ...

    def windows_per_pass(self, spatial_shape: Sequence[int]) -> int:
        """How many windows one example's pass runs (1 for whole-volume models)."""
        return len(self._plan_of(spatial_shape).indices) if self.sliding else 1

    def blend_windows(
        self,
        maps: torch.Tensor,
        spatial_shape: Sequence[int],
        upsample: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Maps computed per sliding window (B * windows in use, C, ...), example-major in the
        order the windows run, blended onto the model grid of an input of ``spatial_shape``
        with the inferer's weights: each window's map weighted by the importance map, the sum
        divided by the weight of all windows at each voxel. ``upsample`` brings maps on a
        layer's grid to the window's size, a window batch at a time (never all at once)."""
        plan = self._plan_of(spatial_shape)
        used = len(plan.indices)
        if maps.shape[0] % used:
            raise ValueError(f"{maps.shape[0]} maps are not a whole number of {used} windows")
        examples = maps.shape[0] // used
        canvas = WindowCanvas(plan, examples, maps.shape[1], plan.count.device, maps.dtype)
        rows = [row for batch in plan.window_batches(examples, used) for row in batch]
        step = max(1, int(self.card.sw_batch_size))
        for start in range(0, len(rows), step):
            part = maps[start : start + step]
            canvas.add(rows[start : start + step], upsample(part) if upsample else part)
        return self.canvas_result(canvas, spatial_shape)

    def window_canvas(
        self, spatial_shape: Sequence[int], examples: int, channels: int, dtype: torch.dtype
    ) -> WindowCanvas:
        """An empty blend of window maps for inputs of ``spatial_shape`` (see
        :meth:`layer_windows`); :meth:`canvas_result` gives the blended maps."""
        plan = self._plan_of(spatial_shape)
        return WindowCanvas(plan, examples, channels, plan.count.device, dtype)

    def canvas_result(self, canvas: WindowCanvas, spatial_shape: Sequence[int]) -> torch.Tensor:
        """The blended maps of ``canvas`` on the model grid of an input of ``spatial_shape``."""
        return canvas.result()[self._model_grid(spatial_shape)]

    def _model_grid(self, spatial_shape: Sequence[int]) -> tuple[slice, ...]:
        """Where the input sits in its padded-to-divisible grid, as an index of (B, C, ...)."""
        crop = divisible_crop(spatial_shape, self.card.size_divisible)
        return (slice(None), slice(None), *crop)

    def layer_windows(
        self,
        inputs: Sequence[torch.Tensor],
        target: Callable[[torch.Tensor], torch.Tensor],
        layer: torch.nn.Module,
        gradients: Sequence[bool],
    ) -> Iterator[tuple[list[tuple[slice, ...]], list[tuple[torch.Tensor, torch.Tensor | None]]]]:
        """A layer's feature maps, one window batch at a time (sliding-window models).

        ``inputs`` are inputs of one shape, run in lockstep (a path point, a noisy input and a
        baseline: the same windows of each come together). Yields, per window batch: the
        windows' index tuples (as :meth:`WindowPlan.window_batches`: one example's windows at
        a time), and for each input the layer's output on those windows and, where
        ``gradients`` says so, the gradient of the target score of the *whole blended
        prediction* with respect to that output (the score's gradient with respect to the
        output, shared by the inferer's weights, pulled back through this window batch alone).
        Peak memory: one window batch's graph.
        """
        multiple = self.card.size_divisible
        with torch.no_grad():
            prepared = [pad_to_multiple(self.preprocess(x.detach()), multiple) for x in inputs]
        plan = self.plan(prepared[0][0])
        padded = [plan.pad(x) for x, _ in prepared]
        count = plan.count.to(padded[0].device, padded[0].dtype)
        upstream = [
            plan.pad(self._upstream(x, crop, plan, target)) / count if wanted else None
            for (x, crop), wanted in zip(prepared, gradients)
        ]
        captured: list[torch.Tensor] = []

        def keep(_module, _inputs, output):
            captured.append(output)
            # the network goes on with a copy: a later in-place operation cannot change it
            return output.clone() if isinstance(output, torch.Tensor) else None

        handle = layer.register_forward_hook(keep)
        try:
            batches = plan.window_batches(inputs[0].shape[0], self.card.sw_batch_size, True)
            for rows in batches:
                maps = []
                for volume, weights in zip(padded, upstream):
                    captured.clear()
                    wanted = weights is not None
                    data = torch.cat([volume[r] for r in rows]).requires_grad_(wanted)
                    with torch.set_grad_enabled(wanted):
                        prediction = self._network(data)
                    if len(captured) != 1 or not isinstance(captured[0], torch.Tensor):
                        raise UserInputError(
                            f"the layer ran {len(captured)} times in one network call; a layer "
                            "map needs one feature map per network input: choose another layer"
                        )
                    activation, grads = captured[0], None
                    if weights is not None:
                        share = torch.cat([weights[r] for r in rows]) * plan.importance
                        (grads,) = torch.autograd.grad(
                            prediction, activation, grad_outputs=share, allow_unused=True
                        )
                        grads = torch.zeros_like(activation) if grads is None else grads
                    maps.append((activation.detach(), grads))
                yield rows, maps
        finally:
            handle.remove()

    def score_gradients(
        self, x: torch.Tensor, target: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(scores, d scores / d x) window by window for sliding-window models; None otherwise.

        Equal to differentiating through the whole sliding-window inference, with peak memory
        set by the window batch instead of the volume (see :mod:`TorchEsegetaLib.engine.windows`).
        """
        if not self.sliding:
            return None
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
