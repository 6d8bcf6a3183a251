"""Faithfulness by removing voxels: deletion, insertion (Petsiuk et al. 2018) and faithfulness
correlation (Bhatt et al. 2020), in 3D blocks on the model grid.

The volume is cut into cubic blocks (edge ``block`` voxels; the last block along an axis may be
smaller). Deletion replaces the blocks by a baseline in the order of the map, most important
first; insertion starts from the baseline and puts the blocks back in the same order. The
target score is taken after each of ``steps`` steps, at ``steps + 1`` points; the x axis is the
fraction of voxels removed (inserted), from 0 to 1, and the score is the area under that curve
(trapezoidal rule). Blocks with equal importance are ordered by a permutation drawn from the
run's seed, so a curve is the same for the same seed.

A map is only as good as what it beats: every method is also compared with ``random_orders``
random block orders of the same case (drawn from the run's seed, computed once per case and
shared by every method). ``details["gain"]`` is the area between the random orders' mean curve
and the map's curve, in units of the score's whole change from the intact input to the baseline
(``span``): 0 is no better than chance, positive is better (for deletion and insertion alike), at
most 1. It does not depend on the score's scale, so it compares maps across cases and models.
A map whose blocks tie across a step's boundary (a coarse occlusion or feature map, a map that
is zero in places) has no single order: it is scored in ``tie_orders`` seeded orders (only the
steps that differ are recomputed), and its value and curve are their mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    cost = "steps + 1 forward passes per method (more for maps with ties), random_orders x (steps + 1) per case"
    reference = "Petsiuk et al. 2018, arXiv:1806.07421"
    insert = False

    def order(self, case: Case, subject: Subject, tie_order: int = 0) -> torch.Tensor:
        """Block indices, most important first; ties in a seeded random order."""
        import torch

        importance = subject.on_model_grid(case)[0].sum(dim=0)
        if self.config["order"] == "absolute":
            importance = importance.abs()
        # on the CPU: the seeded permutation is drawn there, and an order is small
        means = block_means(importance, self.config["block"]).cpu()
        generator = case.generator(3) if tie_order == 0 else case.generator(3, tie_order)
        shuffle = torch.randperm(means.numel(), generator=generator)
        ranked = torch.argsort(-means[shuffle], stable=True)
        return shuffle[ranked]

    def _counts(self, blocks: int) -> list[int]:
        steps = self.config["steps"]
        return [round(k * blocks / steps) for k in range(steps + 1)]

    def _chosen(self, order: torch.Tensor, count: int) -> torch.Tensor:
        import torch

        chosen = torch.zeros(order.numel(), dtype=torch.bool)
        chosen[order[:count]] = True
        return chosen

    def _fractions(self, case: Case, order: torch.Tensor) -> np.ndarray:
        shape = tuple(case.x.shape[2:])
        voxels = block_voxels(shape, self.config["block"])[order].cumsum(0)
        counts = self._counts(order.numel())
        return np.array([float(voxels[c - 1]) if c else 0.0 for c in counts]) / np.prod(shape)

    def _scores(self, case: Case, chosen: list[torch.Tensor], message: str) -> np.ndarray:
        """Target scores of the inputs with the ``chosen`` blocks removed (inserted)."""
        import torch

        shape, block = tuple(case.x.shape[2:]), self.config["block"]
        baseline = baseline_input(case, self.config["baseline"])

        def batch(start: int, stop: int) -> torch.Tensor:
            masks = [blocks_to_voxels(c, shape, block).to(case.device) for c in chosen[start:stop]]
            if self.insert:
                return torch.cat([torch.where(m, case.x, baseline) for m in masks])
            return torch.cat([torch.where(m, baseline, case.x) for m in masks])

        return case.scores(len(chosen), batch, message).numpy()

    def curve(self, case: Case, order: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(fraction removed or inserted, target score) along ``order``."""
        counts = self._counts(order.numel())
        scores = self._scores(case, [self._chosen(order, c) for c in counts], self.name)
        return self._fractions(case, order), scores

    def random_curves(self, case: Case, blocks: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The curves of ``random_orders`` random block orders: once per case, for every method."""
        import torch

        def compute() -> list[tuple[np.ndarray, np.ndarray]]:
            curves = []
            for index in range(self.config["random_orders"]):
                order = torch.randperm(blocks, generator=case.generator(7, index))
                curves.append(self.curve(case, order))
            return curves

        key = ("random orders", self.insert, *self.config.values())
        return case.cached(key, compute)

    def evaluate(self, case: Case, subject: Subject) -> Score:
        first = self.order(case, subject)
        fractions, scores = self.curve(case, first)
        curves = [(fractions, scores)]
        counts = self._counts(first.numel())
        first_chosen = [self._chosen(first, c) for c in counts]
        for tie_order in range(1, self.config["tie_orders"]):
            order = self.order(case, subject, tie_order)
            chosen = [self._chosen(order, c) for c in counts]
            # Only steps whose removed set differs (a tie across the step's boundary) are run.
            changed = [k for k, c in enumerate(chosen) if not bool((c == first_chosen[k]).all())]
            if not changed:
                break
            again = scores.copy()
            again[changed] = self._scores(case, [chosen[k] for k in changed], self.name)
            curves.append((self._fractions(case, order), again))
        areas = [_area(x, y) for x, y in curves]
        mean_x = np.mean([x for x, _ in curves], axis=0)
        mean_y = np.mean([y for _, y in curves], axis=0)
        details: dict[str, Any] = {"aucs": areas}
        details.update(self._against_random(case, first.numel(), areas, scores))
        return Score(
            float(np.mean(areas)), curve=(mean_x.tolist(), mean_y.tolist()), details=details
        )

    def _against_random(
        self, case: Case, blocks: int, areas: list[float], scores: np.ndarray
    ) -> dict[str, Any]:
        """The random orders' areas and mean curve, and the map's gain over them (see above)."""
        if not self.config["random_orders"]:
            return {}
        randoms = self.random_curves(case, blocks)
        random_areas = [_area(x, y) for x, y in randoms]
        # Both ends are the same for every order: nothing removed and everything removed.
        span = float(scores[0] - scores[-1]) if not self.insert else float(scores[-1] - scores[0])
        details: dict[str, Any] = {
            "random_aucs": random_areas,
            "random_curve": [
                np.mean([x for x, _ in randoms], axis=0).tolist(),
                np.mean([y for _, y in randoms], axis=0).tolist(),
            ],
            "span": span,
        }
        if span <= 1e-9 * max(abs(float(scores[0])), abs(float(scores[-1])), 1e-30):
            details["gain"] = None
            details["gain_note"] = (
                "the baseline does not lower the target score, so no order can beat another"
            )
            return details
        sign = 1.0 if self.insert else -1.0
        gains = [sign * (a - r) / span for a in areas for r in random_areas]
        details["gain"] = float(np.mean(gains))
        return details


def _area(fractions: np.ndarray, scores: np.ndarray) -> float:
    """The area under a curve by the trapezoidal rule, as np.trapezoid computes it; that name is
    numpy 2's only, and np.trapz, its numpy 1 name, is gone from numpy 2.4."""
    return float((np.diff(fractions) * (scores[1:] + scores[:-1]) / 2.0).sum())


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
        Param(
            "random_orders",
            "int",
            3,
            "Random block orders whose curves are the chance level a map must beat (once per case, shared by every method); 0: none.",
            minimum=0,
            maximum=100,
        ),
        Param(
            "tie_orders",
            "int",
            3,
            "Seeded orders of blocks of equal importance: a map with ties across a step's boundary is scored in each (their mean is its value); a map without ties once.",
            minimum=1,
            maximum=100,
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
        # The pairs themselves: resampling them gives the correlation's spread over subsets.
        details = {"explained": explained.tolist(), "drops": drops.tolist()}
        return Score(float(np.corrcoef(explained, drops)[0, 1]), details=details)
