"""Feature methods: the target score of the input with only some of its features kept.

Every method here scores *coalitions* of features (a feature = one region of the feature mask
in all channels, see :mod:`.features`; absent features take the baseline's values) and turns
those scores into one value per feature, painted on the feature's voxels:

- feature ablation: the drop when one feature is removed (captum ``FeatureAblation``);
- Shapley value sampling: marginal contributions along random feature orders
  (captum ``ShapleyValueSampling``);
- LIME: a weighted linear surrogate of the score on feature presence (captum ``Lime``);
- Kernel SHAP: the Shapley-kernel weighted linear surrogate (captum ``KernelShap``).

Coalitions are drawn up front from ``context.generator()`` and scored in batches through
``context.map_batches``, so a seed fixes the result whatever the batch size. On a sliding-window
model a coalition runs only the windows its absent features touch (:class:`.perturbed.PerturbedScores`):
feature ablation and the large coalitions of Kernel SHAP skip most windows, while coalitions
missing features everywhere (LIME's, most of Shapley sampling's) run whole inferences.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .base import Method, Param, Passes, ScoreModel, register
from .baselines import make_baseline
from .features import (
    FEATURE_PARAMS,
    feature_cells,
    feature_count,
    feature_mask,
    features_refusal,
)
from .perturbation import BASELINE_PARAMS
from .perturbed import PerturbedScores

if TYPE_CHECKING:
    import torch

    from ..engine.context import Context


def _samples_param(default: int, what: str) -> Param:
    return Param("n_samples", "int", default, what, minimum=1, maximum=100000)


def score_coalitions(
    score: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    fill: torch.Tensor,
    mask: torch.Tensor,
    total: int,
    coalitions: Callable[[int, int], torch.Tensor],
    context: Context,
    message: str,
) -> torch.Tensor:
    """Scores (total,) of ``x`` (1, C, *S) with only the features of each coalition kept.

    ``coalitions(start, stop)`` gives the rows start..stop-1 as a (rows, F) bool tensor; the
    voxels of absent features take the values of ``fill``. Call it under ``torch.no_grad()``.
    """
    import torch

    scores = torch.empty(total, dtype=torch.float64, device=x.device)

    def compute(start: int, stop: int) -> None:
        keep = coalitions(start, stop).to(x.device)[:, mask].unsqueeze(1)
        scores[start:stop] = score(torch.where(keep, x, fill))

    context.map_batches(total, compute, message, kind="forward")
    return scores


def all_present(reached: np.ndarray, present: np.ndarray, count: int) -> np.ndarray:
    """(len(present), windows): the probability that every one of the ``reached`` features of
    a window is among ``present`` features drawn uniformly from ``count``,
    C(count - m, k - m) / C(count, k) for m reached and k present (0 where k < m)."""
    from scipy.special import gammaln

    m = reached[None, :].astype(float)
    k = present[:, None].astype(float)
    log = gammaln(count - m + 1) + gammaln(k + 1) - gammaln(np.maximum(k - m, 0) + 1)
    return np.where(k >= m, np.exp(log - gammaln(count + 1)), 0.0)


class CoalitionMethod(Method):
    """Shared frame: one feature mask and baseline per example, one value per feature."""

    family = "perturbation"
    signed = True
    quantity = "contribution of the voxel's feature to the score"
    needs_baseline = True
    shared_channels = True

    def passes(self, shape, forward=None):
        """One pass per coalition; on a model with window reuse, the windows the coalitions
        will run instead, counted in whole inferences: each coalition recomputes the windows its
        absent features reach (grid blocks exactly; supervoxels by their seed cells, which a
        supervoxel may overrun), expected over the method's draws, plus the unperturbed pass."""
        spatial = tuple(shape[1:])
        incidence_of = getattr(forward, "window_incidence", None)
        found = None
        if incidence_of is not None and self.config["features"] != "labels":
            found = incidence_of(spatial, feature_cells(spatial, self.config["feature_size"]))
        if found is None:
            return Passes(forward=self.coalitions(feature_count(self.config, spatial, self.name)))
        incidence = found[0]
        windows = incidence.shape[1]
        touched = self.touched_windows(incidence.shape[0], incidence.sum(axis=0), incidence)
        return Passes(forward=math.ceil((windows + touched) / windows - 1e-9))

    def coalitions(self, count: int) -> int:
        """Forward passes for ``count`` features."""
        raise NotImplementedError

    def touched_windows(self, count: int, reached: np.ndarray, incidence: np.ndarray) -> float:
        """Windows the coalitions recompute with window reuse, summed (expected over the
        draws): ``reached`` holds, per window, how many of the ``count`` features reach it;
        ``incidence`` (features, windows) which."""
        raise NotImplementedError

    def cheaper(self):
        size = self.config["feature_size"]
        return [f"larger features ({self.name}.feature_size={2 * size}: about 8 times fewer)"]

    def refusal(self, network):
        return features_refusal(self.config, self.name)

    def attribute(self, forward, inputs, target, context):
        import torch

        score = ScoreModel(forward, target)
        fills = make_baseline(self.config["baseline"], inputs, self.config["blur_sigma"])
        out = torch.empty_like(inputs)
        examples = inputs.shape[0]
        for index in range(examples):
            x, fill = inputs[index : index + 1], fills[index : index + 1]
            mask, count = feature_mask(self.config, x[0], self.name)
            message = f"{self.name} example {index + 1}/{examples}"
            scores = PerturbedScores(score, x, context)
            with torch.no_grad():
                values = self.feature_values(scores, x, fill, mask, count, context, message)
            scores.finish(self.name)
            out[index] = values.to(device=mask.device, dtype=x.dtype)[mask].expand(inputs.shape[1:])
        return out

    def feature_values(
        self,
        score: PerturbedScores,
        x: torch.Tensor,
        fill: torch.Tensor,
        mask: torch.Tensor,
        count: int,
        context: Context,
        message: str,
    ) -> torch.Tensor:
        """One value per feature, (count,)."""
        raise NotImplementedError


@register
class FeatureAblation(CoalitionMethod):
    name = "feature_ablation"
    title = "Feature Ablation"
    summary = "Score drop when one feature (a grid block, supervoxel or label, all channels) is replaced by the baseline."
    quantity = "score drop when the voxel's feature is removed"
    cost = "1 forward per feature + 1, batched"
    reference = "captum FeatureAblation; Zeiler & Fergus 2014, arXiv:1311.2901"
    params = FEATURE_PARAMS + BASELINE_PARAMS

    def coalitions(self, count):
        return count + 1

    def touched_windows(self, count, reached, incidence):
        # one coalition per feature, without it: the windows that feature reaches
        return float(incidence.sum())

    def feature_values(self, score, x, fill, mask, count, context, message):
        import torch

        def all_but_one(start: int, stop: int) -> torch.Tensor:
            rows = torch.arange(start, stop)
            return rows[:, None] != torch.arange(count)[None]

        ablated = score_coalitions(
            score, x, fill, mask, count, all_but_one, context, f"{message} feature"
        )
        return score(x)[0] - ablated


@register
class ShapleyValueSampling(CoalitionMethod):
    name = "shapley_value_sampling"
    title = "Shapley Value Sampling"
    summary = "Average marginal contribution of each feature when features are added to the baseline in random orders."
    cost = "n_samples x (n_features - 1) + 2 forwards, batched"
    reference = "Castro et al. 2009, doi:10.1016/j.cor.2008.04.004; captum ShapleyValueSampling"
    params = (
        _samples_param(25, "Number of random feature orders (permutations) averaged."),
        *FEATURE_PARAMS,
        *BASELINE_PARAMS,
    )

    def coalitions(self, count):
        return self.config["n_samples"] * (count - 1) + 2

    def touched_windows(self, count, reached, incidence):
        # along each order, coalitions of 1 .. count - 1 features (each a uniform subset of
        # that size), then the baseline (every window) and the input (none)
        present = np.arange(1, count)
        missed = 1 - all_present(reached, present, count)
        return self.config["n_samples"] * float(missed.sum()) + len(reached)

    def feature_values(self, score, x, fill, mask, count, context, message):
        import torch

        n = self.config["n_samples"]
        generator = context.generator()
        orders = torch.stack([torch.randperm(count, generator=generator) for _ in range(n)])
        ranks = orders.argsort(dim=1)
        steps = count - 1  # the last step of every order is the full input, scored once

        def prefixes(start: int, stop: int) -> torch.Tensor:
            rows = torch.arange(start, stop)
            return ranks[rows // steps] <= (rows % steps)[:, None]

        scores = score_coalitions(
            score, x, fill, mask, n * steps, prefixes, context, f"{message} coalition"
        ).reshape(n, steps)
        ends = torch.cat([score(fill), score(x)]).to(scores.dtype)
        path = torch.cat([ends[0].expand(n, 1), scores, ends[1].expand(n, 1)], dim=1)
        gains = path.diff(dim=1).double()
        values = torch.zeros(count, dtype=torch.float64, device=gains.device)
        values.index_add_(0, orders.flatten().to(gains.device), gains.flatten())
        return values / n


@register
class Lime(CoalitionMethod):
    name = "lime"
    title = "LIME"
    summary = "Coefficients of a linear model of the score on feature presence, fitted on random coalitions weighted by their similarity to the input."
    quantity = "linear-model weight of the voxel's feature (score)"
    cost = "n_samples forwards, batched, + a least-squares fit"
    reference = "Ribeiro et al. 2016, arXiv:1602.04938; captum Lime"
    params = (
        _samples_param(
            256, "Number of random coalitions (each feature kept with probability 1/2)."
        ),
        Param(
            "kernel_width",
            "float",
            1.0,
            "Width of the exponential kernel on the cosine distance between the perturbed "
            "and the original input (as captum's default similarity).",
            minimum=1e-3,
            maximum=1e3,
        ),
        *FEATURE_PARAMS,
        *BASELINE_PARAMS,
    )

    def coalitions(self, count):
        return self.config["n_samples"]

    def touched_windows(self, count, reached, incidence):
        # each feature kept with probability 1/2: a window is left alone when all its are kept
        return self.config["n_samples"] * float((1 - 0.5 ** reached.astype(float)).sum())

    def feature_values(self, score, x, fill, mask, count, context, message):
        import torch

        n = self.config["n_samples"]
        presence = torch.rand((n, count), generator=context.generator()) < 0.5
        scores = score_coalitions(
            score, x, fill, mask, n, lambda a, b: presence[a:b], context, f"{message} sample"
        )
        distance = 1 - cosine_similarity(x, fill, mask, count, presence)
        weights = torch.exp(-(distance**2) / (2 * self.config["kernel_width"] ** 2))
        _note_underdetermined(context, self.name, n, count + 1)
        return weighted_least_squares(presence.double(), scores.double().cpu(), weights)


@register
class KernelShap(CoalitionMethod):
    name = "kernel_shap"
    title = "Kernel SHAP"
    summary = "Shapley values estimated by a linear model on feature presence, fitted on coalitions drawn from the Shapley kernel; they sum to the score difference to the baseline."
    cost = "n_samples + 2 forwards, batched, + a least-squares fit"
    reference = "Lundberg & Lee 2017, arXiv:1705.07874; captum KernelShap"
    params = (
        _samples_param(256, "Number of random coalitions drawn from the Shapley kernel."),
        *FEATURE_PARAMS,
        *BASELINE_PARAMS,
    )

    def coalitions(self, count):
        return self.config["n_samples"] + 2

    def touched_windows(self, count, reached, incidence):
        # the baseline (every window) and the input (none), then coalitions of k features,
        # k ~ 1 / (k (count - k)), each a uniform subset of that size (and its complement)
        if count == 1:
            return float(len(reached))
        k = np.arange(1, count)
        weight = 1 / (k * (count - k))
        missed = (1 - all_present(reached, k, count)).sum(axis=1)
        return self.config["n_samples"] * float(weight @ missed / weight.sum()) + len(reached)

    def feature_values(self, score, x, fill, mask, count, context, message):
        import torch

        empty, full = (float(v) for v in torch.cat([score(fill), score(x)]))
        if count == 1:
            return torch.tensor([full - empty], dtype=torch.float64)
        n = self.config["n_samples"]
        generator = context.generator()
        # Coalition sizes k in 1..F-1 with p(k) ~ (F-1) / (k (F-k)), then a uniform subset of
        # that size: sampling by the Shapley kernel, so every sample has weight one. Each draw
        # comes with its complement (paired sampling, Covert & Lee 2021, arXiv:2012.01536):
        # the kernel is symmetric in k and F - k, so every sample still follows it, while the
        # even-order interactions of the model cancel out of the fit instead of adding noise.
        half = (n + 1) // 2
        k = torch.arange(1, count, dtype=torch.float64)
        sizes = torch.multinomial((count - 1) / (k * (count - k)), half, True, generator=generator)
        ranks = torch.rand((half, count), generator=generator).argsort(dim=1).argsort(dim=1)
        drawn = ranks <= sizes[:, None]
        presence = torch.stack([drawn, ~drawn], dim=1).reshape(2 * half, count)[:n]
        scores = score_coalitions(
            score, x, fill, mask, n, lambda a, b: presence[a:b], context, f"{message} sample"
        )
        _note_underdetermined(context, self.name, n, count - 1)
        return shapley_regression(presence.double(), scores.double().cpu(), empty, full)


def shapley_regression(z: torch.Tensor, y: torch.Tensor, empty: float, full: float) -> torch.Tensor:
    """Coefficients of ``y ~ empty + z @ c`` by least squares, with ``sum(c) = full - empty``.

    The empty and full coalitions are constraints here, not samples (captum gives them weight
    1e6). Centring each row of ``z`` removes the uniform direction: the minimum-norm solution
    of the centred problem sums to zero, and the uniform share adds the difference exactly.
    """
    import torch

    count = z.shape[1]
    share = z.mean(dim=1)
    design = z - share[:, None]
    residual = y - empty - (full - empty) * share
    values = torch.linalg.lstsq(design, residual[:, None], driver="gelsd").solution[:, 0]
    return values + (full - empty) / count


def cosine_similarity(x, fill, mask, count, presence) -> torch.Tensor:
    """Cosine similarity of ``x`` and each coalition's perturbed input, from per-feature sums."""
    import torch

    def per_feature(values: torch.Tensor) -> torch.Tensor:
        sums = torch.zeros(count, dtype=torch.float64, device=values.device)
        sums.index_add_(0, mask.flatten(), values.double().sum(dim=0).flatten())
        return sums.cpu()

    xx, xf, ff = per_feature(x[0] * x[0]), per_feature(x[0] * fill[0]), per_feature(fill[0] ** 2)
    kept = presence.double()
    dot = kept @ xx + (1 - kept) @ xf
    norm = (kept @ xx + (1 - kept) @ ff).clamp(min=0).sqrt() * xx.sum().sqrt()
    return dot / norm.clamp(min=1e-8)


def weighted_least_squares(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Coefficients of ``y ~ b + z @ c`` minimising the ``w``-weighted squared error (the
    intercept unpenalised; the minimum-norm ``c`` when samples do not determine it)."""
    import torch

    w = w / w.sum()
    z_mean, y_mean = w @ z, w @ y
    root = w.sqrt()[:, None]
    design, residual = root * (z - z_mean), root[:, 0] * (y - y_mean)
    return torch.linalg.lstsq(design, residual[:, None], driver="gelsd").solution[:, 0]


def _note_underdetermined(context: Context, name: str, samples: int, unknowns: int) -> None:
    if samples < unknowns:
        context.notes.append(
            f"{name}: {samples} samples for {unknowns} unknowns, the fit is underdetermined "
            "(minimum-norm solution); raise n_samples above the number of features"
        )
