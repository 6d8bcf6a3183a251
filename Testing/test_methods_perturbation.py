"""Feature masks and the perturbation methods on them (feature ablation, Shapley value sampling,
LIME, Kernel SHAP) and RISE: equal to captum given the same random draws, exact on models whose
answer is known, seeded, and independent of the batch size."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from captum._utils.models.model import Model
from captum.attr import FeatureAblation, Lime, ShapleyValueSampling
from helpers import centre_box_target, close, ours, tiny_input, tiny_unet
from scipy import ndimage

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry
from TorchEsegetaLib.methods import ScoreModel
from TorchEsegetaLib.methods.baselines import make_baseline
from TorchEsegetaLib.methods.coalitions import shapley_regression, weighted_least_squares
from TorchEsegetaLib.methods.features import feature_mask, grid_features, supervoxels
from TorchEsegetaLib.methods.perturbation import smooth_masks
from TorchEsegetaLib.targets.bound import BoundTarget

SIZE = 16
SPATIAL = (SIZE,) * 3
FEATURE_METHODS = ("feature_ablation", "shapley_value_sampling", "lime", "kernel_shap")


class ScoreFunction(torch.nn.Module):
    """A 'segmentation model' whose class-1 logit is ``function(x)`` at every voxel."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        score = self.function(x).reshape(-1, 1, *[1] * (x.dim() - 2)).expand(-1, 1, *x.shape[2:])
        return torch.cat([torch.zeros_like(score), score], dim=1)


WHOLE_IMAGE = BoundTarget(1, torch.ones(SPATIAL, dtype=torch.bool), "logits", "softmax", "mean")


def per_feature(attribution, mask, count):
    """The value of each feature, read from its first voxel (and checked constant on it)."""
    values = torch.stack([attribution[0, 0][mask == f][0] for f in range(count)])
    assert close(attribution[0, 0], values[mask]), "the map is not constant on each feature"
    return values


def test_feature_ablation_matches_captum(setup):
    net, x, target, score = setup
    mask = grid_features(SPATIAL, 6)  # 3 blocks per axis, the last one smaller
    for baseline in ("zero", "mean"):
        got = ours("feature_ablation", net, x, target, feature_size=6, baseline=baseline)
        ref = FeatureAblation(score).attribute(
            x,
            baselines=make_baseline(baseline, x),
            feature_mask=mask[None, None],
            perturbations_per_eval=4,
        )
        assert close(got, ref)


def test_shapley_value_sampling_matches_captum_with_the_same_permutations(setup):
    net, x, target, score = setup
    got = ours("shapley_value_sampling", net, x, target, seed=3, feature_size=8, n_samples=3)
    torch.manual_seed(3)  # captum draws its permutations with torch.randperm, in order
    ref = ShapleyValueSampling(score).attribute(
        x, baselines=0.0, feature_mask=grid_features(SPATIAL, 8)[None, None], n_samples=3
    )
    assert close(got, ref)


class WeightedLeastSquares(Model):
    """captum's interpretable-model interface around our weighted least squares."""

    def fit(self, train_data, **kwargs):
        z, y, w = next(iter(train_data))
        self.coefficients = weighted_least_squares(z.double(), y.double(), w.double())

    def representation(self):
        return self.coefficients[None].float()

    def __call__(self, x):
        raise NotImplementedError


def test_lime_matches_captum_lime_with_the_same_coalitions_and_a_least_squares_model(setup):
    """Same presence sampling, captum's default similarity (exponential kernel on the cosine
    distance between the perturbed and the original input), same data for the fit."""
    net, x, target, score = setup
    n, count, seed = 24, 8, 5
    presence = torch.rand((n, count), generator=torch.Generator().manual_seed(seed)) < 0.5

    def coalitions(original, **kwargs):
        yield from (row[None].long() for row in presence)

    got = ours("lime", net, x, target, seed=seed, feature_size=8, n_samples=n)
    ref = Lime(score, interpretable_model=WeightedLeastSquares(), perturb_func=coalitions)
    ref = ref.attribute(
        x, baselines=0.0, feature_mask=grid_features(SPATIAL, 8)[None, None], n_samples=n
    )
    assert close(got, ref, rtol=1e-3, atol=1e-4)


def test_shapley_regression_is_captums_kernel_shap_fit_in_the_limit():
    """captum weighs the empty and full coalitions 1e6; we impose them as exact constraints."""
    generator = torch.Generator().manual_seed(0)
    z = (torch.rand((30, 6), generator=generator) < 0.5).double()
    y = z @ torch.randn(6, generator=generator, dtype=torch.float64) + 0.3 * torch.rand(30)
    empty, full = 0.2, 1.7
    got = shapley_regression(z, y, empty, full)
    ends = torch.stack([torch.zeros(6), torch.ones(6)]).double()
    weights = torch.cat([torch.full((2,), 1e6), torch.ones(30)]).double()
    targets = torch.cat([torch.tensor([empty, full]), y]).double()
    ref = weighted_least_squares(torch.cat([ends, z]), targets, weights)
    assert torch.allclose(got, ref, atol=1e-4)
    assert math.isclose(float(got.sum()), full - empty, abs_tol=1e-12)


@pytest.mark.parametrize(
    "features, methods", [("grid", FEATURE_METHODS), ("supervoxels", ("lime", "kernel_shap"))]
)
def test_feature_methods_recover_the_contributions_of_a_linear_model(features, methods):
    """score = sum W x: each feature contributes exactly sum over it of W (x - baseline), which
    every method must return (Shapley values of an additive game; exact linear fits). The
    supervoxels, of uneven sizes, go through the two regressions."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand((1, 2, *SPATIAL), generator=generator) + 0.5
    weights = torch.randn((1, 2, *SPATIAL), generator=generator)
    net = ScoreFunction(lambda v: (v * weights).flatten(1).sum(1))
    params = {"features": features, "feature_size": 8, "baseline": "mean"}
    mask, count = feature_mask(params | {"compactness": 0.2, "feature_labels": ""}, x[0], "test")
    expected = torch.zeros(count, dtype=torch.float64)
    contribution = (weights * (x - make_baseline("mean", x)))[0].sum(0).double()
    expected.index_add_(0, mask.flatten(), contribution.flatten())
    samples = {"shapley_value_sampling": 2, "lime": 4 * count, "kernel_shap": 4 * count}
    for name in methods:
        extra = {"n_samples": samples[name]} if name in samples else {}
        got = ours(name, net, x, WHOLE_IMAGE, max_batch=16, **params, **extra)
        assert close(per_feature(got, mask, count).double(), expected, rtol=1e-3, atol=1e-4), name


def test_sampled_shapley_values_converge_to_the_exact_ones_on_a_non_additive_model():
    """8 block features, a score with interactions: exact Shapley values by enumerating all
    256 coalitions; Kernel SHAP and permutation sampling must come close."""
    generator = torch.Generator().manual_seed(2)
    x = torch.rand((1, 1, *SPATIAL), generator=generator) + 0.5
    mask = grid_features(SPATIAL, 8)

    def game(means):  # (B, 8) block means -> (B,) scores
        m = means
        return (
            m[:, 0] * m[:, 1] + m[:, 2] ** 2 - m[:, 3] * m[:, 4] * m[:, 5] + m[:, 6].sin() + m[:, 7]
        )

    def block_means(v):
        sums = torch.zeros((v.shape[0], 8), dtype=v.dtype).index_add_(
            1, mask.flatten(), v.flatten(1)
        )
        return sums / 512

    net = ScoreFunction(lambda v: game(block_means(v)))
    full = block_means(x)[0]
    exact = torch.zeros(8, dtype=torch.float64)
    for coalition in itertools.product((0, 1), repeat=8):
        present = torch.tensor(coalition, dtype=torch.bool)
        value = float(game((full * present)[None]))
        k = int(present.sum())
        for f in range(8):  # the Shapley formula, T = S + {f} or T = S
            if present[f]:
                exact[f] += math.factorial(k - 1) * math.factorial(8 - k) / 40320 * value
            else:
                exact[f] -= math.factorial(k) * math.factorial(7 - k) / 40320 * value
    for name, samples in (("kernel_shap", 2000), ("shapley_value_sampling", 300)):
        got = ours(name, net, x, WHOLE_IMAGE, max_batch=512, feature_size=8, n_samples=samples)
        values = per_feature(got, mask, 8).double()
        assert math.isclose(float(values.sum()), float(exact.sum()), rel_tol=1e-4), name
        error = float((values - exact).abs().max() / exact.abs().max())
        assert error < 0.05, f"{name}: largest error {error:.3f} of the largest value"


def test_shapley_and_kernel_shap_are_efficient_on_a_network(setup):
    net, x, target, score = setup
    with torch.no_grad():
        difference = float(score(x) - score(torch.zeros_like(x)))
    mask = grid_features(SPATIAL, 8)
    for name in ("shapley_value_sampling", "kernel_shap"):
        got = ours(name, net, x, target, feature_size=8, n_samples=4)
        total = float(per_feature(got, mask, 8).sum())
        assert math.isclose(total, difference, rel_tol=1e-4, abs_tol=1e-6), name


def test_every_method_is_independent_of_the_batch_size_and_seeded(setup):
    net, x, target, _ = setup
    params = {
        "feature_ablation": {"feature_size": 8},
        "shapley_value_sampling": {"feature_size": 8, "n_samples": 2},
        "lime": {"feature_size": 8, "n_samples": 12},
        "kernel_shap": {"feature_size": 8, "n_samples": 12},
        "rise": {"n_masks": 12, "cell_size": 4},
    }
    for name, values in params.items():
        one = ours(name, net, x, target, max_batch=1, seed=4, **values)
        eight = ours(name, net, x, target, max_batch=8, seed=4, **values)
        assert close(one, eight), name
        if name != "feature_ablation":
            other = ours(name, net, x, target, max_batch=8, seed=5, **values)
            assert not close(other, eight), f"{name}: the seed changes nothing"


def test_rise_peaks_on_the_block_the_model_depends_on():
    block = (slice(8, 12),) * 3
    weights = torch.zeros((1, 1, *SPATIAL))
    weights[(0, 0, *block)] = 1.0
    net = ScoreFunction(lambda v: (v * weights).flatten(1).sum(1))
    x = tiny_input(seed=3) / 100 + 0.5
    got = ours("rise", net, x, WHOLE_IMAGE, max_batch=64, n_masks=256, cell_size=4)[0, 0]
    inside = torch.zeros(SPATIAL, dtype=torch.bool)
    inside[block] = True
    peak = np.unravel_index(int(got.argmax()), SPATIAL)
    assert inside[peak], f"RISE peaks at {peak}, outside the block"
    assert got[inside].mean() > 3 * got[~inside].abs().mean()


def test_rise_subtracting_the_mean_score_removes_the_constant_offset():
    """A model that ignores its input: the paper's estimator gives about the score everywhere
    (mask means over p), the centred one exactly zero."""
    net = ScoreFunction(lambda v: torch.full((v.shape[0],), 2.0))
    x = tiny_input()
    params = {"n_masks": 64, "cell_size": 4, "keep_probability": 0.3}
    centred = ours("rise", net, x, WHOLE_IMAGE, max_batch=16, **params)
    paper = ours("rise", net, x, WHOLE_IMAGE, max_batch=16, subtract_mean=False, **params)
    assert centred.abs().max() < 1e-5
    assert abs(float(paper.mean()) - 2.0) < 0.2


def test_rise_masks_are_smooth_and_keep_the_input_with_probability_p():
    generator = torch.Generator().manual_seed(0)
    grids = torch.rand((200, 5, 5, 5), generator=generator) < 0.3
    shifts = torch.randint(0, 4, (200, 3), generator=generator)
    masks = smooth_masks(grids, shifts, 4, SPATIAL, torch.zeros(1))
    assert masks.shape == (200, *SPATIAL)
    assert masks.min() >= 0 and masks.max() <= 1
    assert ((masks > 0.01) & (masks < 0.99)).float().mean() > 0.3
    assert abs(float(masks.mean()) - 0.3) < 0.02


def two_region_image(size=24, channels=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij")
    sphere = sum((a - c) ** 2 for a, c in zip(axes, (10.3, 13.1, 11.6))) < 7.5**2
    image = 0.05 * torch.randn((channels, size, size, size), generator=generator)
    image[-1][sphere] += 1.0  # the edge is only in the last channel
    return image, sphere


@pytest.mark.parametrize("channels", [1, 2])
def test_supervoxels_partition_the_image_into_connected_regions_that_follow_edges(channels):
    image, sphere = two_region_image(channels=channels)
    mask = supervoxels(image, 6, 0.2)
    assert mask.shape == sphere.shape and mask.dtype == torch.long
    sizes = torch.bincount(mask.flatten())
    assert (sizes > 0).all(), "feature numbers must be 0..F-1 without gaps"
    assert 27 <= len(sizes) <= 128  # about (24 / 6)^3 = 64
    labels = mask.numpy()
    structure = ndimage.generate_binary_structure(3, 1)
    for feature in range(len(sizes)):
        assert ndimage.label(labels == feature, structure)[1] == 1, f"feature {feature} is split"
    inside = torch.zeros(len(sizes)).index_add_(0, mask.flatten(), sphere.flatten().float())
    mixed = torch.minimum(inside, sizes - inside).sum() / sphere.numel()
    assert mixed < 0.01, f"{float(mixed):.3f} of the voxels share a supervoxel across the edge"


def test_label_features_from_a_file(tmp_path):
    labels = np.zeros(SPATIAL, dtype=np.uint8)
    labels[2:9, 3:12, 4:10] = 7
    labels[10:15] = 2
    path = write_volume(labels, Geometry(SPATIAL), tmp_path / "labels.nii.gz", dtype=np.uint8)
    net, x, target = tiny_unet(), tiny_input(), centre_box_target()
    got = ours("feature_ablation", net, x, target, features="labels", feature_labels=str(path))
    score = ScoreModel(net, target)
    for value in (0, 2, 7):
        region = torch.as_tensor(labels == value)
        with torch.no_grad():
            drop = score(x) - score(torch.where(region, torch.zeros_like(x), x))
        assert close(got[0, 0][region], drop.expand(int(region.sum())))


def test_label_features_must_exist_and_match_the_input(tmp_path):
    net, x, target = tiny_unet(), tiny_input(), centre_box_target()
    with pytest.raises(UserInputError, match="feature_labels"):
        ours("lime", net, x, target, features="labels")
    path = write_volume(np.ones((8, 8, 8), np.uint8), Geometry((8, 8, 8)), tmp_path / "l.nrrd")
    with pytest.raises(UserInputError, match="shape 8x8x8 .* 16x16x16"):
        ours("lime", net, x, target, features="labels", feature_labels=str(path))


def test_absurd_feature_counts_are_refused_before_any_forward_pass():
    config = {"features": "grid", "feature_size": 1, "compactness": 0.2, "feature_labels": ""}
    with pytest.raises(UserInputError, match="raise feature_size"):
        feature_mask(config, torch.zeros((1, 64, 64, 64)), "feature_ablation")
