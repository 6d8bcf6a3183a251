"""Faithfulness by removing voxels: deletion, insertion (Petsiuk et al. 2018) and faithfulness
correlation (Bhatt et al. 2020), in 3D blocks on the model grid.

The volume is cut into cubic blocks (edge ``block`` voxels; the last block along an axis may be
smaller). Deletion replaces the blocks by a baseline in the order of the map, most important
first; insertion starts from the baseline and puts the blocks back in the same order. The
target score is taken after each of ``steps`` steps, at ``steps + 1`` points; the x axis is the
fraction of voxels removed (inserted), from 0 to 1, and the score is the area under that curve
(trapezoidal rule). Blocks with equal importance are ordered by a permutation drawn from the
run's seed, so a curve is the same for the same seed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..methods.baselines import BASELINES, make_baseline
from ..schema.registry import Param
from .base import Case, Metric, Score, Subject, register

if TYPE_CHECKING:
    import torch

BASELINE_HELP = "Value that replaces removed voxels: zero, each channel's minimum or mean, or a Gaussian blur of the input."


def _block_param(default: int = 4) -> Param:
    return Param(
        "block",
        "int",
        default,
        "Edge of the cubic blocks, in voxels of the model grid.",
        minimum=1,
        maximum=256,
    )


def baseline_input(case: Case, kind: str) -> torch.Tensor:
    return case.cached(("baseline", kind), lambda: make_baseline(kind, case.x))


def block_grid(shape: tuple[int, ...], block: int) -> tuple[int, ...]:
    return tuple(-(-n // block) for n in shape)


def block_means(values: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of a (*S) volume over each block (partial blocks: over their voxels), flattened."""
    import torch.nn.functional as F

    v = values[None, None].double()
    return F.avg_pool3d(v, block, stride=block, ceil_mode=True)[0, 0].flatten()


def block_voxels(shape: tuple[int, ...], block: int) -> torch.Tensor:
    """Number of voxels in each block (partial blocks at the far borders), flattened."""
    import torch

    sizes = [
        torch.clamp(n - block * torch.arange(m), max=block)
        for n, m in zip(shape, block_grid(shape, block))
    ]
    return (sizes[0][:, None, None] * sizes[1][None, :, None] * sizes[2][None, None, :]).flatten()


def block_sums(values: torch.Tensor, block: int) -> torch.Tensor:
    """Sum of a (*S) volume over each block, flattened."""
    return block_means(values, block) * block_voxels(tuple(values.shape), block).to(values.device)


def blocks_to_voxels(chosen: torch.Tensor, shape: tuple[int, ...], block: int) -> torch.Tensor:
    """A (*S) bool mask from a flat bool vector over the blocks."""
    grid = chosen.reshape(block_grid(shape, block))
    for axis in range(3):
        grid = grid.repeat_interleave(block, dim=axis)
    return grid[: shape[0], : shape[1], : shape[2]]


class _Ordering(Metric):
    family = "faithfulness"
    cost = "steps + 1 forward passes per method"
    reference = "Petsiuk et al. 2018, arXiv:1806.07421"
    insert = False

    def order(self, case: Case, subject: Subject) -> torch.Tensor:
        """Block indices, most important first; ties in a seeded random order."""
        import torch

        importance = subject.on_model_grid(case)[0].sum(dim=0)
        if self.config["order"] == "absolute":
            importance = importance.abs()
        means = block_means(importance, self.config["block"])
        shuffle = torch.randperm(means.numel(), generator=case.generator(3))
        ranked = torch.argsort(-means[shuffle], stable=True)
        return shuffle[ranked]

    def evaluate(self, case: Case, subject: Subject) -> Score:
        import torch

        block, steps = self.config["block"], self.config["steps"]
        shape = tuple(case.x.shape[2:])
        order = self.order(case, subject)
        baseline = baseline_input(case, self.config["baseline"])
        counts = [round(k * order.numel() / steps) for k in range(steps + 1)]
        voxels = block_voxels(shape, block)[order].cumsum(0)
        fractions = np.array([float(voxels[c - 1]) if c else 0.0 for c in counts]) / np.prod(shape)

        def mask(step: int) -> torch.Tensor:
            chosen = torch.zeros(order.numel(), dtype=torch.bool)
            chosen[order[: counts[step]]] = True
            return blocks_to_voxels(chosen, shape, block).to(case.device)

        def batch(start: int, stop: int) -> torch.Tensor:
            masks = [mask(step) for step in range(start, stop)]
            if self.insert:
                return torch.cat([torch.where(m, case.x, baseline) for m in masks])
            return torch.cat([torch.where(m, baseline, case.x) for m in masks])

        scores = case.scores(steps + 1, batch, self.name).numpy()
        # The trapezoidal rule as np.trapezoid computes it; that name is numpy 2's only, and
        # np.trapz, its numpy 1 name, is gone from numpy 2.4.
        area = float((np.diff(fractions) * (scores[1:] + scores[:-1]) / 2.0).sum())
        return Score(area, curve=(fractions.tolist(), scores.tolist()))


def _ordering_params(baseline: str) -> tuple[Param, ...]:
    return (
        _block_param(),
        Param(
            "steps",
            "int",
            20,
            "Number of steps; the curve has steps + 1 points (0 to all blocks).",
            minimum=1,
            maximum=10000,
        ),
        Param("baseline", "choice", baseline, BASELINE_HELP, choices=BASELINES),
        Param(
            "order",
            "choice",
            "signed",
            "Rank blocks by the map's value (signed: most positive first) or by its magnitude.",
            choices=("signed", "absolute"),
        ),
    )


@register
class Deletion(_Ordering):
    name = "deletion"
    title = "Deletion AUC"
    summary = (
        "Area under the target score as 3D blocks are replaced by the baseline, most important "
        "first: a faithful map makes the score fall fast."
    )
    direction = "lower"
    unit = "score (area under the score curve, fraction removed 0 to 1)"
    caveat = "in the target score's units: a logit falls below 0 as the object is removed, so on logits the area can be negative (lower is still better)"
    curve_axes = ("fraction of voxels removed", "target score")
    params = _ordering_params("min")


@register
class Insertion(_Ordering):
    name = "insertion"
    title = "Insertion AUC"
    summary = (
        "Area under the target score as 3D blocks of the input are put back into a blurred "
        "baseline, most important first: a faithful map makes the score rise fast."
    )
    direction = "higher"
    unit = "score (area under the score curve, fraction inserted 0 to 1)"
    caveat = "in the target score's units: the blurred start has a logit below 0, so on logits the area can be negative (higher is still better)"
    curve_axes = ("fraction of voxels inserted", "target score")
    insert = True
    params = _ordering_params("blur")


@register
class FaithfulnessCorrelation(Metric):
    name = "faithfulness_correlation"
    title = "Faithfulness correlation"
    summary = (
        "Pearson correlation, over random subsets of 3D blocks, between the sum of the map over "
        "a subset and the drop of the target score when that subset is replaced by the baseline."
    )
    family = "faithfulness"
    direction = "higher"
    unit = "Pearson r, -1 to 1"
    cost = "subsets + 1 forward passes per case, shared by all methods"
    reference = "Bhatt et al. 2020, arXiv:2005.00631"
    params = (
        _block_param(),
        Param("subsets", "int", 32, "Number of random subsets.", minimum=3, maximum=100000),
        Param(
            "fraction",
            "float",
            0.1,
            "Fraction of the blocks in each subset.",
            minimum=0.0,
            maximum=1.0,
        ),
        Param("baseline", "choice", "min", BASELINE_HELP, choices=BASELINES),
    )

    def subset(self, case: Case, index: int) -> torch.Tensor:
        import torch

        total = int(np.prod(block_grid(tuple(case.x.shape[2:]), self.config["block"])))
        size = max(1, round(self.config["fraction"] * total))
        chosen = torch.zeros(total, dtype=torch.bool)
        chosen[torch.randperm(total, generator=case.generator(4, index))[:size]] = True
        return chosen

    def drops(self, case: Case) -> torch.Tensor:
        key = ("faithfulness", *self.config.values())
        shape, block = tuple(case.x.shape[2:]), self.config["block"]
        baseline = baseline_input(case, self.config["baseline"])

        def compute() -> torch.Tensor:
            import torch

            def batch(start: int, stop: int) -> torch.Tensor:
                masks = [
                    blocks_to_voxels(self.subset(case, k), shape, block).to(case.device)
                    for k in range(start, stop)
                ]
                return torch.cat([torch.where(m, baseline, case.x) for m in masks])

            scores = case.scores(self.config["subsets"], batch, self.name)
            return case.reference_score() - scores

        return case.cached(key, compute)

    def evaluate(self, case: Case, subject: Subject) -> Score:
        drops = self.drops(case).numpy()
        sums = block_sums(subject.on_model_grid(case)[0].sum(dim=0), self.config["block"])
        explained = np.array(
            [float(sums[self.subset(case, k)].sum()) for k in range(self.config["subsets"])]
        )
        if np.ptp(explained) == 0 or np.ptp(drops) == 0:
            return Score.skipped(
                "undefined: the map or the score drops are constant over the subsets"
            )
        return Score(float(np.corrcoef(explained, drops)[0, 1]))
