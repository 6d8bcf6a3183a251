"""Exact window reuse: target scores of perturbed copies of one input of a sliding-window model,
running only the windows each perturbation touches.

A window's prediction depends only on the network input inside the window, and MONAI's inferer
blends the predictions with fixed weights. So for an input that differs from the unperturbed one
in a few voxels (an occluding box, a removed feature):

- the windows whose input is unchanged keep their predictions, computed once and cached;
- the blended output changes only inside the windows that changed: there the inferer's weighted
  sum of predictions (kept from the unperturbed pass) gets each changed window's weighted change
  of prediction, and is divided by the weight of all windows as the inferer divides it;
- the target is a sum of per-voxel shares (:meth:`~TorchEsegetaLib.targets.bound.BoundTarget.voxel_scores`),
  so the score moves by the change of those shares inside the box around those windows (summed in
  float64). The score equals the full inference's up to float rounding (the weighted sum is
  updated instead of summed again).

Where the score is linear in the logits (a logit target, the default), the score is a sum over
windows of each prediction weighted by the importance map, the region's weights and the inverse of
the windows' summed weight: a perturbation then changes it by the changed windows' terms alone, and
no re-blend is needed (nor a cache of predictions: one number per window).

Which windows a perturbation touches: for an occluding box (:meth:`WindowReuse.box_scores`) under
preprocessing that maps each voxel on its own (no intensity step reads statistics of the perturbed
input), the windows the box overlaps, and only those windows' inputs are built. Otherwise
(:meth:`WindowReuse.scores`) by comparing the network inputs themselves (after the intensity
preprocessing and padding), so the reuse is exact whatever the preprocessing: a step that is not
voxel by voxel changes every window, and that perturbation then runs as a full inference, as does
one that touches every window (RISE's masks, most coalitions). The cache of window predictions is
bounded (:func:`cache_budget`); windows beyond it are recomputed when a perturbed copy touches
them, which costs passes but never exactness.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .reuse_common import ReuseRecord, cache_budget, serial

if TYPE_CHECKING:
    from .inference import SegmentationForward

#: every example and channel, before the spatial index
EVERY = (slice(None), slice(None))


class WindowReuse(ReuseRecord):
    """Scores of perturbed copies of ``x`` (1, C, *S) for ``target``, by exact window reuse.

    Args:
        forward: a sliding-window :class:`~.inference.SegmentationForward`.
        x: the unperturbed input (raw intensities, one example).
        target: a target with ``voxel_scores(logits, box)`` (a :class:`~TorchEsegetaLib.targets.bound.BoundTarget`).
        cache_bytes: at most this many bytes of cached window predictions; None: sized from the
            free memory (:func:`cache_budget`).
    """

    def __init__(
        self,
        forward: SegmentationForward,
        x: torch.Tensor,
        target: Any,
        cache_bytes: float | None = None,
    ) -> None:
        self.forward, self.target = forward, target
        with torch.no_grad():
            prepared, self.crop = forward.network_input(x.detach())
        crop = self.crop
        self.plan = plan = forward.plan(prepared)
        self.padded = plan.pad(prepared)
        self.batch = max(1, int(forward.card.sw_batch_size))
        # model grid index = plan grid index - offset
        self.offset = np.array([p + c.start for p, c in zip(plan.pad_before, _starts(crop[2:]))])
        self.model_shape = tuple(
            len(range(*c.indices(n))) for c, n in zip(crop[2:], prepared.shape[2:])
        )
        self.starts = np.array([[s.start for s in plan.slices[i]] for i in plan.indices])
        self.stops = np.array([[s.stop for s in plan.slices[i]] for i in plan.indices])
        self.position = {w: k for k, w in enumerate(plan.indices)}
        self.window_shape = tuple(s.stop - s.start for s in plan.slices[plan.indices[0]])
        #: the largest cell every window boundary (and the grid's end) falls on, per axis
        self.cell = np.array(
            [
                np.gcd.reduce(np.concatenate([self.starts[:, a], self.stops[:, a], [n]]))
                for a, n in enumerate(plan.image_size)
            ]
        )
        #: whether each voxel of the network input depends on the same raw voxel only: then a
        #: box changes exactly the windows it overlaps (:meth:`box_scores`)
        self.voxelwise = maps_voxels(forward)
        self._fill: tuple[torch.Tensor, torch.Tensor] | None = None
        self._first_pass(x.device, cache_bytes)

    # -- the unperturbed pass ----------------------------------------------------------------
    @torch.no_grad()
    def _first_pass(self, device: torch.device, cache_bytes: float | None) -> None:
        plan = self.plan
        self.cache: dict[int, torch.Tensor] = {}
        #: per window, its term of a linear score (see :meth:`_window_terms`)
        self.terms: dict[int, torch.Tensor] = {}
        self.gradient: torch.Tensor | None = None
        self.accumulated: torch.Tensor | None = None
        self.reference_shares: torch.Tensor | None = None
        self.window_bytes = 0
        self.cache_device = device
        self.scored: slice | list[int] = []
        accumulated: torch.Tensor | None = None
        limit: int | None = None
        for start in range(0, len(plan.indices), self.batch):
            indices = plan.indices[start : start + self.batch]
            predictions = self._run([partial(self._write, None, 0, w) for w in indices])
            if accumulated is None:
                channels = predictions.shape[1]
                accumulated = torch.zeros(
                    (1, channels, *plan.image_size), dtype=predictions.dtype, device=device
                )
                self.window_bytes = predictions[0].numel() * predictions.element_size()
                self.gradient = self._score_gradient(channels, predictions.device)
                self.cache_device, limit = cache_budget(
                    self.window_bytes, len(plan.indices), predictions.device
                )
                if cache_bytes is not None:
                    limit = min(limit, int(cache_bytes // self.window_bytes))
                if self.gradient is not None:
                    limit = 0  # a linear score needs one number per window, not its prediction
            with serial(predictions.device):
                for row, w in enumerate(indices):
                    prediction = predictions[row : row + 1]
                    accumulated[EVERY + plan.slices[w]] += prediction * plan.importance
                    if self.gradient is not None:
                        self.terms[w] = self._window_terms(w, prediction)[0]
                    if limit is not None and len(self.cache) < limit:
                        # a copy: a view would keep its whole window batch alive
                        self.cache[w] = prediction.to(self.cache_device, copy=True)
        assert accumulated is not None
        blended = accumulated / plan.count.to(accumulated.device)
        logits = plan.crop(blended)[self.crop]
        shares = self.target.voxel_scores(logits, box=None)[0].double()
        self.reference = shares.sum().reshape(1)
        if self.gradient is None:  # what a re-blend starts from (a linear score needs neither)
            self.accumulated, self.reference_shares = accumulated, shares

    def _score_gradient(self, channels: int, device: torch.device) -> torch.Tensor | None:
        """d score / d (importance-weighted sum of window predictions) on the plan's grid, in
        float64, for the output channels the score reads (:attr:`scored`), where the score is
        linear in the logits; None where it is not."""
        gradient_of = getattr(self.target, "output_gradient", None)
        gradient = gradient_of(channels, device, torch.float32) if callable(gradient_of) else None
        if gradient is None:
            return None
        scored = [c for c in range(channels) if bool(gradient[0, c].any())]
        # a slice keeps the predictions' channels a view
        contiguous = bool(scored) and scored == list(range(scored[0], scored[-1] + 1))
        self.scored = slice(scored[0], scored[-1] + 1) if contiguous else scored
        on_plan = torch.zeros((len(scored), *self.plan.image_size), dtype=torch.float64)
        model = tuple(slice(int(o), int(o) + n) for o, n in zip(self.offset, self.model_shape))
        on_plan[(slice(None),) + model] = gradient[0, scored].double().cpu()
        self.importance = self.plan.importance.double().to(device)
        return (on_plan / self.plan.count.double().cpu()).to(device)

    def _window_terms(self, w: int, predictions: torch.Tensor) -> torch.Tensor:
        """(n,) float64: each prediction's term of a linear score, as window ``w``: its
        scored channels times the importance map and the score's gradient."""
        assert self.gradient is not None
        weight = self.gradient[(slice(None),) + self.plan.slices[w]] * self.importance
        values = predictions[:, self.scored].to(weight.device, torch.float64)
        return values.flatten(1) @ weight.flatten()

    def _run(self, windows: Sequence[Callable[[torch.Tensor], None]]) -> torch.Tensor:
        """The network on window inputs, in batches: ``windows`` write each (C, *roi) input."""
        outputs = []
        channels = self.padded.shape[1]
        with torch.no_grad():
            for start in range(0, len(windows), self.batch):
                chunk = windows[start : start + self.batch]
                with serial(self.padded.device):
                    data = self.padded.new_empty((len(chunk), channels, *self.window_shape))
                    for row, write in enumerate(chunk):
                        write(data[row])
                outputs.append(self.forward._network(data))
        return torch.cat(outputs)

    # -- which windows a perturbation touches -----------------------------------------------
    def _overlapping(self, low: np.ndarray, high: np.ndarray) -> list[int]:
        """The windows in use that overlap the box [low, high) of the plan's grid, in order."""
        inside = np.all((self.starts < high) & (self.stops > low), axis=1)
        return [self.plan.indices[k] for k in np.flatnonzero(inside)]

    def windows_of_box(self, box: Sequence[slice]) -> tuple[int, ...]:
        """The windows in use a box of the raw input's grid lies in (for ordering work)."""
        low, high = self._on_plan(box)
        return tuple(self._overlapping(low, high))

    def _on_plan(self, box: Sequence[slice]) -> tuple[np.ndarray, np.ndarray]:
        """A box of the raw input's grid as [low, high) on the plan's grid."""
        low = np.array([s.start for s in box]) + self.offset
        return low, np.array([s.stop for s in box]) + self.offset

    def touched(self, changed: torch.Tensor) -> torch.Tensor:
        """(n, windows in use) bool: which windows' input holds a changed voxel of each example
        (``changed``: (n, *plan grid) bool). The voxels are first gathered into the cells that
        every window boundary falls on, then one summed-cell table per example answers every
        window at once (eight corners per window)."""
        cells = self.cell
        coarse = changed.view(torch.uint8).reshape(
            changed.shape[0],
            *[n for size, c in zip(changed.shape[1:], cells) for n in (size // c, c)],
        )
        table = coarse.amax(dim=tuple(range(2, coarse.dim(), 2))).to(torch.int32)
        for axis in range(1, table.dim()):
            table = table.cumsum(dim=axis, dtype=torch.int32)
        table = torch.nn.functional.pad(table, (1, 0) * (table.dim() - 1))
        flat = table.flatten(1)
        strides = torch.tensor(table.stride()[1:], dtype=torch.int64)
        total = torch.zeros((changed.shape[0], len(self.starts)), dtype=torch.int64)
        for corner in itertools.product((0, 1), repeat=len(cells)):
            chosen = np.where(np.array(corner, dtype=bool), self.stops, self.starts) // cells
            index = torch.from_numpy(chosen).to(torch.int64) @ strides
            sign = (-1) ** (len(corner) - sum(corner))
            total += sign * flat[:, index.to(flat.device)].to(torch.int64).cpu()
        return total > 0

    # -- scores --------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        """Target scores (n,) in float64 of ``batch`` (n, C, *S): perturbed copies of ``x``."""
        prepared, _ = self.forward.network_input(batch.detach())
        padded = self.plan.pad(prepared)
        changed = (padded != self.padded).any(dim=1)
        groups: dict[tuple[int, ...], list[int]] = {}
        for example, touched in enumerate(self.touched(changed).tolist()):
            key = tuple(w for w, hit in zip(self.plan.indices, touched) if hit)
            groups.setdefault(key, []).append(example)
        out = self.reference.expand(batch.shape[0]).clone()
        every = len(self.plan.indices)
        self.count(batch.shape[0])
        reused = {k: v for k, v in groups.items() if 0 < len(k) < every}
        whole = [e for k, v in groups.items() if len(k) == every for e in v]
        if whole:
            out[whole] = self._full_scores(prepared[whole])
        if reused:
            out_reused = self._reused_scores(reused, partial(self._write, padded))
            for key, examples in reused.items():
                out[examples] = out_reused[key]
        return out

    @torch.no_grad()
    def box_scores(self, fill: torch.Tensor, boxes: Sequence[Sequence[slice]]) -> torch.Tensor:
        """Target scores (n,) in float64 of ``x`` with each box (of the raw input's grid) set
        to ``fill`` (a tensor shaped like ``x``) in every channel, building and running only the
        windows each box overlaps. Needs voxel-by-voxel preprocessing (:attr:`voxelwise`);
        otherwise build the copies whole and call :meth:`scores`, as
        :meth:`~TorchEsegetaLib.methods.perturbed.PerturbedScores.boxes` does."""
        if not self.voxelwise:
            raise ValueError("box_scores needs voxel-by-voxel preprocessing; use scores()")
        if self._fill is None or self._fill[0] is not fill:
            prepared, _ = self.forward.network_input(fill.detach()[:1])
            self._fill = (fill, self.plan.pad(prepared))
        filled = self._fill[1]
        planned = [self._on_plan(box) for box in boxes]
        groups: dict[tuple[int, ...], list[int]] = {}
        for example, (low, high) in enumerate(planned):
            groups.setdefault(tuple(self._overlapping(low, high)), []).append(example)
        out = self.reference.expand(len(boxes)).clone()
        self.count(len(boxes))
        reused = {k: v for k, v in groups.items() if k}

        def window_input(example: int, w: int, out: torch.Tensor) -> None:
            window = self.plan.slices[w]
            out.copy_(self.padded[(0, slice(None)) + window])
            low, high = planned[example]
            inside = tuple(
                slice(max(int(a), s.start), min(int(b), s.stop))
                for a, b, s in zip(low, high, window)
            )
            relative = tuple(
                slice(i.start - s.start, i.stop - s.start) for i, s in zip(inside, window)
            )
            out[(slice(None),) + relative] = filled[(0, slice(None)) + inside]

        if reused:
            for key, scores in self._reused_scores(reused, window_input).items():
                out[reused[key]] = scores
        return out

    def _write(self, source: torch.Tensor | None, example: int, w: int, out: torch.Tensor) -> None:
        """Write example ``example`` of ``source`` (None: the unperturbed input) in window
        ``w`` to ``out`` (C, *window)."""
        source, example = (self.padded, 0) if source is None else (source, example)
        out.copy_(source[(example, slice(None)) + self.plan.slices[w]])

    def _full_scores(self, prepared: torch.Tensor) -> torch.Tensor:
        """Scores of inputs that changed every window: a full inference, as without reuse."""
        self.full_inferences += prepared.shape[0]
        self.windows_run += prepared.shape[0] * len(self.plan.indices)
        logits = self.plan.infer(prepared, self.forward._network, self.batch)
        shares = self.target.voxel_scores(logits[self.crop], box=None)
        return shares.double().flatten(1).sum(dim=1)

    def _model_box(
        self, low: np.ndarray, high: np.ndarray
    ) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
        """Box [low, high) of the plan's grid clipped to the model grid: (its slices on the
        model grid, the same voxels relative to the box); None when nothing is left."""
        model_low = np.maximum(low - self.offset, 0)
        model_high = np.minimum(high - self.offset, np.array(self.model_shape))
        if np.any(model_high <= model_low):
            return None
        on_model = tuple(slice(int(a), int(b)) for a, b in zip(model_low, model_high))
        within = tuple(
            slice(int(a + o - lo), int(b + o - lo))
            for a, b, o, lo in zip(model_low, model_high, self.offset, low)
        )
        return on_model, within

    def _reused_scores(
        self,
        groups: dict[tuple[int, ...], list[int]],
        write: Callable[[int, int, torch.Tensor], None],
    ) -> dict[tuple[int, ...], torch.Tensor]:
        """Scores per group of examples that touch the same windows (see the module doc);
        ``write(example, w, out)`` puts the example's network input in window ``w`` into out."""
        windows: list[Callable[[torch.Tensor], None]] = []
        first: dict[tuple[tuple[int, ...], int], int] = {}  # (group, window) -> its first row
        old: dict[int, int] = {}  # uncached window -> the row of its unperturbed prediction
        for key, examples in groups.items():
            for w in key:
                first[key, w] = len(windows)
                windows.extend(partial(write, e, w) for e in examples)
                if self.gradient is None and w not in self.cache and w not in old:
                    old[w] = len(windows)
                    windows.append(partial(self._write, None, 0, w))
        self.windows_run += len(windows)
        predictions = self._run(windows)
        results = {}
        with serial(predictions.device):
            for key, examples in groups.items():
                rows = {w: predictions[first[key, w] : first[key, w] + len(examples)] for w in key}
                if self.gradient is not None:
                    terms = [self._window_terms(w, new) - self.terms[w] for w, new in rows.items()]
                    results[key] = self.reference + torch.stack(terms).sum(dim=0)
                    continue
                before = {
                    w: self.cache[w] if w in self.cache else predictions[old[w] : old[w] + 1]
                    for w in key
                }
                results[key] = self._reblended_scores(key, rows, before)
        return results

    def _reblended_scores(
        self,
        key: tuple[int, ...],
        new: dict[int, torch.Tensor],
        before: dict[int, torch.Tensor],
    ) -> torch.Tensor:
        """Scores of a group's examples whose windows ``key`` predict ``new`` instead of
        ``before``: the box around those windows re-blended and re-scored."""
        plan = self.plan
        n = len(next(iter(new.values())))
        low = self.starts[[self.position[w] for w in key]].min(axis=0)
        high = self.stops[[self.position[w] for w in key]].max(axis=0)
        boxes = self._model_box(low, high)
        if boxes is None:  # the changed windows lie in the padding only
            return self.reference.expand(n)
        on_model, within = boxes
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
        assert self.accumulated is not None and self.reference_shares is not None
        part = self.accumulated[EVERY + box]
        accumulated = part.expand(n, *part.shape[1:]).clone()
        for w in key:
            at = tuple(slice(s.start - a, s.stop - a) for s, a in zip(plan.slices[w], low))
            change = new[w] - before[w].to(new[w].device)
            accumulated[EVERY + at] += change.to(accumulated.device) * plan.importance
        blended = (accumulated / plan.count[box].to(accumulated.device))[EVERY + within]
        shares = self.target.voxel_scores(blended, box=on_model).double()
        change = (shares - self.reference_shares[on_model]).flatten(1).sum(dim=1)
        return self.reference + change

    @property
    def windows_per_inference(self) -> int:
        return len(self.plan.indices)


def maps_voxels(forward: Any) -> bool:
    """Whether ``forward``'s preprocessing maps each voxel on its own: no intensity step takes
    statistics of the input it is given (they are frozen, or the step has none); the padding
    and a bundle's fills are fixed."""
    from .intensity import reads_image

    frozen = forward.frozen_statistics
    return all(
        not reads_image(step) or (frozen is not None and frozen[index] is not None)
        for index, step in enumerate(forward.intensity_steps)
    )


def _starts(crop: Sequence[slice]) -> list[slice]:
    return [slice(0 if c.start is None else c.start, c.stop) for c in crop]


def window_incidence(
    forward: Any, spatial: Sequence[int], boxes: Sequence[Sequence[slice]]
) -> np.ndarray:
    """(boxes, windows in use) bool: the windows a reusing run recomputes for each perturbation
    box of the raw input grid (those the box overlaps)."""
    plan = forward._plan_of(spatial)
    from ..engine.windows import divisible_crop

    offset = np.array(plan.pad_before) + np.array(
        [c.start for c in divisible_crop(spatial, forward.card.size_divisible)]
    )
    starts = np.array([[s.start for s in plan.slices[i]] for i in plan.indices])
    stops = np.array([[s.stop for s in plan.slices[i]] for i in plan.indices])
    if not boxes:
        return np.zeros((0, len(plan.indices)), dtype=bool)
    low = np.array([[s.start for s in box] for box in boxes]) + offset
    high = np.array([[s.stop for s in box] for box in boxes]) + offset
    return np.all((starts[None] < high[:, None]) & (stops[None] > low[:, None]), axis=2)
