"""Exact window reuse on nnU-Net's pipeline: target scores of perturbed copies of one input,
running only the windows each perturbation touches, for every explained fold and mirror
combination.

With its case frozen (:meth:`~.pipeline.NnUNetPipeline.freeze_statistics`), nnU-Net's pipeline
prepares the input (transpose, crop, normalisation with fixed statistics, resampling to the
plans' spacing, padding to the patch), runs each fold's network on each window under each mirror
combination, and blends: the sum over windows, folds and flips of each output flipped back and
weighted by the Gaussian and the share of its fold and flip, divided by the windows' summed
weight. A window whose prepared input is unchanged gives the same outputs in every fold and
mirroring. So, per perturbed copy:

- the prepared copy is compared with the unperturbed one voxel by voxel: the windows holding a
  changed voxel are the ones that run (whatever the perturbation, and whatever the
  normalisation and resampling spread it to; a copy that changes every window runs as a full
  inference);
- each such window's contribution (its folds' and flips' weighted outputs) replaces the cached
  unperturbed one in the blend's weighted sum, which is then divided, brought back to the input
  grid (resampling, crop, transposes) and scored as the full pipeline does: the score equals the
  full inference's up to float rounding;
- where the score is linear in that sum (a logit target brought back by a linear resampling),
  each window's contribution is one number, the gradient's inner product with it, and no sum is
  kept.

The cache of unperturbed contributions is bounded like MONAI's (:func:`..reuse_common.cache_budget`):
a window beyond it is recomputed when a copy touches it, which costs passes, never exactness.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..reuse_common import ReuseRecord, cache_budget, serial
from .resampling import Resampling
from .windows import NnUNetPass, WindowRow

if TYPE_CHECKING:
    from .pipeline import Case, NnUNetPipeline


class NnUNetReuse(ReuseRecord):
    """Scores of perturbed copies of ``x`` (1, C, I, J, K) for ``target`` through the frozen
    ``pipeline`` (the folds and mirroring it explains), by exact window reuse.

    Args:
        pipeline: an :class:`~.pipeline.NnUNetPipeline` with its case frozen.
        x: the unperturbed input, as the pipeline takes it (raw intensities).
        target: a callable on the input grid's logits (B, K, I, J, K) -> (B,).
        prepare: what the model applies before the pipeline (a card's intensity steps).
        cache_bytes: at most this many bytes of cached window contributions; None: sized from
            the free memory.
    """

    #: the windows a box changes are found by comparing prepared inputs, not from the box
    voxelwise = False

    def __init__(
        self,
        pipeline: NnUNetPipeline,
        x: torch.Tensor,
        target: Any,
        prepare: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
        cache_bytes: float | None = None,
    ) -> None:
        self.pipeline, self.target, self.prepare = pipeline, target, prepare
        self.passes = NnUNetPass(pipeline, prepare(x.detach()[:1]), target)
        self.case: Case = self.passes.case
        self.padded = self.passes.padded_data()
        self.window_count = len(self.case.windows)
        #: network inputs of one window: explained folds x mirror combinations
        self.rows_per_window = len(self.passes.folds) * len(self.passes.flips)
        self._first_pass(cache_bytes)

    # -- the unperturbed pass ----------------------------------------------------------------
    @torch.no_grad()
    def _first_pass(self, cache_bytes: float | None) -> None:
        self.cache: dict[int, torch.Tensor] = {}
        #: per window, its term of a linear score
        self.terms: dict[int, torch.Tensor] = {}
        self.gradient: torch.Tensor | None = None
        self.window_bytes = 0
        total: torch.Tensor | None = None
        limit = 0
        for window in range(self.window_count):
            (contribution,) = self._contributions(self.passes, [(0, window)])
            if total is None:
                channels = contribution.shape[1]
                shape = (1, channels, *self.passes.counts.shape)
                total = torch.zeros(shape, dtype=contribution.dtype, device=contribution.device)
                self.window_bytes = contribution.numel() * contribution.element_size()
                self.gradient = self.passes.linear_blend_gradient(channels)
                self.cache_device, limit = cache_budget(
                    self.window_bytes, self.window_count, contribution.device
                )
                if cache_bytes is not None:
                    limit = min(limit, int(cache_bytes // self.window_bytes))
                if self.gradient is not None:
                    limit = 0  # a linear score needs one number per window
            with serial(contribution.device):
                total[self._at(window)] += contribution
                if self.gradient is not None:
                    self.terms[window] = self._term(window, contribution)
                elif len(self.cache) < limit:
                    self.cache[window] = contribution.to(self.cache_device, copy=True)
        assert total is not None
        self.total = total
        self.reference = self._restored_scores(total)

    def _contributions(
        self, passes: NnUNetPass, pairs: Sequence[tuple[int, int]]
    ) -> list[torch.Tensor]:
        """Each (example, window) pair's contribution to the blend's weighted sum (1, K,
        *patch): every explained fold's network on the window's input under every mirror
        combination (one call per fold, nnU-Net's batch of flips), flipped back and weighted."""
        from ...engine.context import pass_progress

        out = []
        for example, window in pairs:
            total: torch.Tensor | None = None
            for fold in passes.folds:
                rows = [WindowRow(example, fold, window, flip) for flip in passes.flips]
                part = passes.blend_rows(rows, passes.network(rows)(passes.inputs(rows)))
                total = part if total is None else total + part
            assert total is not None
            out.append(total)
            pass_progress(None)  # cancel and time budget, window by window
        return out

    def _term(self, window: int, contribution: torch.Tensor) -> torch.Tensor:
        """A window's term of a linear score: the score's gradient times its contribution."""
        assert self.gradient is not None
        weight = self.gradient[self._at(window)]
        return (contribution.double() * weight.double()).sum()

    def _at(self, window: int) -> tuple[Any, ...]:
        return (slice(None), slice(None), *self.case.windows[window])

    def _restored_scores(self, total: torch.Tensor) -> torch.Tensor:
        """Scores (n,) float64 of blends' weighted sums (n, K, *padded): divided by the
        windows' weight, brought back to the input grid and scored as the pipeline scores."""
        blended = self.passes.inner(total / self.passes.counts.to(total.dtype))
        return self._scores_of(self.pipeline.restore(blended, self.case))

    def _scores_of(self, logits: torch.Tensor) -> torch.Tensor:
        voxel_scores = getattr(self.target, "voxel_scores", None)
        if callable(voxel_scores):  # summed in float64, as the MONAI reuse sums
            return voxel_scores(logits).double().flatten(1).sum(dim=1)
        return self.target(logits).double().reshape(len(logits))

    # -- scores of perturbed copies ---------------------------------------------------------
    @torch.no_grad()
    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        """Target scores (n,) in float64 of ``batch`` (n, C, I, J, K): perturbed copies of ``x``."""
        n = batch.shape[0]
        passes = NnUNetPass(self.pipeline, self.prepare(batch.detach()), self.target)
        changed = (passes.padded_data() != self.padded).any(dim=1)
        touched = [self._touched(changed[e]) for e in range(n)]
        self.count(n)
        out = self.reference.expand(n).clone()
        whole = [e for e in range(n) if len(touched[e]) == self.window_count]
        if whole:
            self.full_inferences += len(whole)
            self.windows_run += len(whole) * self.window_count * self.rows_per_window
            out[whole] = self._scores_of(self.pipeline(passes.x[whole]))
        pairs = [(e, w) for e in range(n) if e not in whole for w in touched[e]]
        if not pairs:
            return out
        new = dict(zip(pairs, self._contributions(passes, pairs)))
        self.windows_run += len(pairs) * self.rows_per_window
        old = self._unperturbed({w for _, w in pairs})
        with serial(self.padded.device):
            for e in {e for e, _ in pairs}:
                if self.gradient is not None:
                    change = sum(self._term(w, new[e, w]) - self.terms[w] for w in touched[e])
                    out[e] = self.reference[0] + change
                    continue
                total = self.total.clone()
                for w in touched[e]:
                    total[self._at(w)] += new[e, w] - old[w].to(total.device)
                out[e] = self._restored_scores(total)[0]
        return out

    def _touched(self, changed: torch.Tensor) -> list[int]:
        """The windows holding a changed voxel (``changed``: bool on the padded model grid)."""
        windows = self.case.windows
        return [w for w, window in enumerate(windows) if bool(changed[tuple(window)].any())]

    def _unperturbed(self, windows: set[int]) -> dict[int, torch.Tensor]:
        """The unperturbed contributions of ``windows`` (the cache's, else computed again;
        a linear score needs none)."""
        if self.gradient is not None:
            return {}
        missing = sorted(w for w in windows if w not in self.cache)
        computed = self._contributions(self.passes, [(0, w) for w in missing])
        self.windows_run += len(missing) * self.rows_per_window
        return {
            **{w: self.cache[w] for w in windows if w in self.cache},
            **dict(zip(missing, computed)),
        }

    # -- which windows a box lies in (ordering and the cost estimate) -------------------------
    def windows_of_box(self, box: Sequence[slice]) -> tuple[int, ...]:
        """The windows a box of the raw input's grid lies in, as far as its coordinates say
        (:func:`windows_of_box`); the run itself finds them by comparison."""
        return windows_of_box(self.pipeline, self.case, box)

    @property
    def windows_per_inference(self) -> int:
        """Network inputs of a full inference: windows x folds x mirror combinations."""
        return self.window_count * self.rows_per_window


def windows_of_box(pipeline: NnUNetPipeline, case: Case, box: Sequence[slice]) -> tuple[int, ...]:
    """The windows (indices into ``case.windows``) that a box of the raw input's (I, J, K) grid
    reaches after nnU-Net's preparation: axis order and ``transpose_forward``, the crop, the
    resampling and the padding. Without resampling exactly; with it, the model-grid voxels
    whose resampling weight on the box is large enough for float32 to see a change
    (:func:`reach`). A change of the clip's range (a box holding the image's extreme value)
    reaches every window; only the run itself, comparing inputs, sees that."""
    plan = pipeline.plan
    # raw (i, j, k) -> nnU-Net's (k, j, i), then transpose_forward
    ordered = [list(box)[::-1][t] for t in plan.transpose_forward]
    low, high = [], []
    for axis, (edge, crop) in enumerate(zip(ordered, case.crop)):
        start = crop.start or 0
        stop = crop.stop if crop.stop is not None else case.shape[axis]
        a = min(max(edge.start - start, 0), stop - start)
        b = min(max(edge.stop - start, 0), stop - start)
        if b <= a:
            return ()
        first, last = reach(case.to_model, axis, a, b)
        before = case.padding[axis][0]
        low.append(first + before)
        high.append(last + before)
    found = []
    for index, window in enumerate(case.windows):
        inside = all(
            (lo <= w < h) if isinstance(w, (int, np.integer)) else (w.start < h and w.stop > lo)
            for w, lo, h in zip(window, low, high)
        )
        if inside:
            found.append(index)
    return tuple(found)


def reach(resampling: Resampling, axis: int, a: int, b: int) -> tuple[int, int]:
    """The model-grid range [first, last) along ``axis`` that input voxels [a, b) change:
    the rows of the axis's resampling matrix whose weight on them exceeds float32's relative
    rounding (2^-24) of the largest weight. A spline of order 2 or more has infinite support,
    its weights decaying geometrically: a cubic one reaches about 12 voxels beyond the box."""
    if resampling.identity:
        return a, b
    weights = np.abs(resampling.matrix(axis))
    rows = np.flatnonzero(weights[:, a:b].max(axis=1) > 2.0**-24 * weights.max())
    if rows.size == 0:
        return 0, 0
    return int(rows[0]), int(rows[-1]) + 1


def window_incidence(
    pipeline: NnUNetPipeline, case: Case, boxes: Sequence[Sequence[slice]]
) -> np.ndarray:
    """(boxes, windows) bool: the windows (:func:`windows_of_box`) each box reaches."""
    incidence = np.zeros((len(boxes), len(case.windows)), dtype=bool)
    for row, box in enumerate(boxes):
        incidence[row, list(windows_of_box(pipeline, case, box))] = True
    return incidence
