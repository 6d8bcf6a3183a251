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

Which voxels changed is found by comparing the network inputs themselves (after the intensity
preprocessing and padding), so the reuse is exact whatever the preprocessing: a step that is not
voxel by voxel (statistics of the perturbed input) changes every window, and that perturbation
then runs as a full inference, as does one that touches every window (RISE's masks, most
coalitions). The cache of window predictions is bounded (:func:`cache_budget`); windows beyond it
are recomputed when a perturbed copy touches them, which costs passes but never exactness.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .inference import SegmentationForward

#: every example and channel, before the spatial index
EVERY = (slice(None), slice(None))

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


class WindowReuse:
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
        #: the largest cell every window boundary (and the grid's end) falls on, per axis
        self.cell = np.array(
            [
                np.gcd.reduce(np.concatenate([self.starts[:, a], self.stops[:, a], [n]]))
                for a, n in enumerate(plan.image_size)
            ]
        )
        self.windows_run = 0  # network calls on windows for perturbed inputs
        self.windows_full = 0  # what a full inference per perturbed input would have run
        self.perturbations = 0
        self.full_inferences = 0
        self._first_pass(x.device, cache_bytes)

    # -- the unperturbed pass ----------------------------------------------------------------
    @torch.no_grad()
    def _first_pass(self, device: torch.device, cache_bytes: float | None) -> None:
        plan = self.plan
        self.cache: dict[int, torch.Tensor] = {}
        accumulated: torch.Tensor | None = None
        limit: int | None = None
        for start in range(0, len(plan.indices), self.batch):
            indices = plan.indices[start : start + self.batch]
            predictions = self._run([(self.padded, w) for w in indices])
            if accumulated is None:
                channels = predictions.shape[1]
                accumulated = torch.zeros(
                    (1, channels, *plan.image_size), dtype=predictions.dtype, device=device
                )
                self.window_bytes = predictions[0].numel() * predictions.element_size()
                self.cache_device, limit = cache_budget(
                    self.window_bytes, len(plan.indices), predictions.device
                )
                if cache_bytes is not None:
                    limit = min(limit, int(cache_bytes // self.window_bytes))
            for row, w in enumerate(indices):
                prediction = predictions[row : row + 1]
                accumulated[EVERY + plan.slices[w]] += prediction * plan.importance
                if limit is not None and len(self.cache) < limit:
                    # a copy: a view would keep its whole window batch alive
                    self.cache[w] = prediction.to(self.cache_device, copy=True)
        assert accumulated is not None
        self.accumulated = accumulated
        blended = accumulated / plan.count.to(accumulated.device)
        logits = plan.crop(blended)[self.crop]
        self.reference_shares = self.target.voxel_scores(logits, box=None)[0].double()
        self.reference = self.reference_shares.sum().reshape(1)

    def _run(self, rows: Sequence[tuple[torch.Tensor, int]]) -> torch.Tensor:
        """The network on the windows ``rows`` (padded input, window index), in batches."""
        outputs = []
        with torch.no_grad():
            for start in range(0, len(rows), self.batch):
                chunk = rows[start : start + self.batch]
                data = torch.cat([source[EVERY + self.plan.slices[w]] for source, w in chunk])
                outputs.append(self.forward._network(data))
        return torch.cat(outputs)

    # -- which windows a perturbation touches -----------------------------------------------
    def _overlapping(self, low: np.ndarray, high: np.ndarray) -> list[int]:
        """The windows in use that overlap the box [low, high) of the plan's grid, in order."""
        inside = np.all((self.starts < high) & (self.stops > low), axis=1)
        return [self.plan.indices[k] for k in np.flatnonzero(inside)]

    def windows_of_box(self, box: Sequence[slice]) -> tuple[int, ...]:
        """The windows in use a box of the raw input's grid lies in (for ordering work)."""
        low = np.array([s.start for s in box]) + self.offset
        high = np.array([s.stop for s in box]) + self.offset
        return tuple(self._overlapping(low, high))

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
        self.perturbations += batch.shape[0]
        self.windows_full += batch.shape[0] * every
        reused = {k: v for k, v in groups.items() if 0 < len(k) < every}
        whole = [e for k, v in groups.items() if len(k) == every for e in v]
        if whole:
            out[whole] = self._full_scores(prepared[whole])
        if reused:
            out_reused = self._reused_scores(padded, reused)
            for key, examples in reused.items():
                out[examples] = out_reused[key]
        return out

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
        self, padded: torch.Tensor, groups: dict[tuple[int, ...], list[int]]
    ) -> dict[tuple[int, ...], torch.Tensor]:
        """Scores per group of examples that touch the same windows (see the module doc)."""
        plan = self.plan
        rows: list[tuple[torch.Tensor, int]] = []
        first: dict[tuple[tuple[int, ...], int], int] = {}  # (group, window) -> its first row
        old: dict[int, int] = {}  # uncached window -> the row of its unperturbed prediction
        for key, examples in groups.items():
            for w in key:
                first[key, w] = len(rows)
                rows.extend((padded[e : e + 1], w) for e in examples)
                if w not in self.cache and w not in old:
                    old[w] = len(rows)
                    rows.append((self.padded, w))
        self.windows_run += len(rows)
        predictions = self._run(rows)
        results = {}
        for key, examples in groups.items():
            low = self.starts[[self.position[w] for w in key]].min(axis=0)
            high = self.stops[[self.position[w] for w in key]].max(axis=0)
            boxes = self._model_box(low, high)
            if boxes is None:  # the changed windows lie in the padding only
                results[key] = self.reference.expand(len(examples))
                continue
            on_model, within = boxes
            box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
            part = self.accumulated[EVERY + box]
            accumulated = part.expand(len(examples), *part.shape[1:]).clone()
            for w in key:
                new = predictions[first[key, w] : first[key, w] + len(examples)]
                cached = self.cache.get(w)
                before = predictions[old[w] : old[w] + 1] if cached is None else cached
                at = tuple(slice(s.start - a, s.stop - a) for s, a in zip(plan.slices[w], low))
                change = new - before.to(new.device)
                accumulated[EVERY + at] += change.to(accumulated.device) * plan.importance
            blended = (accumulated / plan.count[box].to(accumulated.device))[EVERY + within]
            shares = self.target.voxel_scores(blended, box=on_model).double()
            change = (shares - self.reference_shares[on_model]).flatten(1).sum(dim=1)
            results[key] = self.reference + change
        return results

    # -- what it did ---------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """What run.json keeps: windows run and skipped, and the cache's size and place."""
        return {
            "windows_per_inference": len(self.plan.indices),
            "perturbations": self.perturbations,
            "full_inferences": self.full_inferences,
            "windows_run": self.windows_run,
            "windows_skipped": self.windows_full - self.windows_run,
            "cache_windows": len(self.cache),
            "cache_bytes": len(self.cache) * self.window_bytes,
            "cache_device": str(self.cache_device),
        }


def _starts(crop: Sequence[slice]) -> list[slice]:
    return [slice(0 if c.start is None else c.start, c.stop) for c in crop]


def windows_needed(forward: Any, spatial: Sequence[int], boxes: Sequence[Sequence[slice]]) -> int:
    """Windows a reusing run of these perturbation boxes (raw input grid) will compute, the
    unperturbed pass included; a box that changes no window in use costs none."""
    plan = forward._plan_of(spatial)
    from ..engine.windows import divisible_crop

    offset = np.array(plan.pad_before) + np.array(
        [c.start for c in divisible_crop(spatial, forward.card.size_divisible)]
    )
    starts = np.array([[s.start for s in plan.slices[i]] for i in plan.indices])
    stops = np.array([[s.stop for s in plan.slices[i]] for i in plan.indices])
    total = len(plan.indices)
    for box in boxes:
        low = np.array([s.start for s in box]) + offset
        high = np.array([s.stop for s in box]) + offset
        total += int(np.all((starts < high) & (stops > low), axis=1).sum())
    return total
