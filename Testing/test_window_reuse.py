"""Exact window reuse: perturbed inputs of a sliding-window model run only the windows they touch,
and give the scores and maps of the full recomputation (every target kind, constant and Gaussian
blending, each perturbation method); the cache stays within its bound; the cost estimate counts
the windows that really run."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from helpers import Float64Sum, FullRecomputation, tiny_unet

from TorchEsegetaLib.engine.context import Context
from TorchEsegetaLib.methods import ScoreModel, create_method
from TorchEsegetaLib.methods.perturbed import PerturbedScores
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import SegmentationForward
from TorchEsegetaLib.targets.bound import BoundTarget

#: (40, 36, 30): 3 x 3 x 2 windows of 16^3; (24, 20, 12): the last axis padded to the window
SHAPES = [(40, 36, 30), (24, 20, 12)]


def forward_of(mode="constant", intensity=None):
    card = ModelCard(
        in_channels=1,
        out_channels=2,
        roi_size=(16, 16, 16),
        overlap=0.25,
        sw_mode=mode,
        sw_batch_size=4,
        size_divisible=2,
        intensity=intensity or {"kind": "none"},
    )
    return SegmentationForward(tiny_unet(), card)


def target_of(kind, shape, forward, x, output="logits"):
    with torch.no_grad():
        logits = forward(x)
    region = torch.zeros(shape, dtype=torch.bool)
    if kind == "class":
        region = logits[0].argmax(dim=0) == 1
    elif kind == "mask":
        region = torch.rand(shape, generator=torch.Generator().manual_seed(3)) < 0.05
    elif kind == "roi":
        region[4:14, 6:12, 2:9] = True
    else:
        region[5, 9, 7] = True
    reduction = "sum" if kind == "voxel" else "mean"
    args = (1, region, output, "softmax", reduction)
    return BoundTarget(*args), Float64Sum(*args)


def volume(shape, seed=0):
    return torch.rand((1, 1, *shape), generator=torch.Generator().manual_seed(seed)) * 10


def perturbed(x):
    """A box, a box across windows, scattered voxels, a box in the corner, every voxel, nothing."""
    batch = x.repeat(6, 1, 1, 1, 1)
    batch[0, :, 2:6, 3:7, 1:5] = 0
    batch[1, :, 10:22, 12:20, 4:10] = -1
    batch[2].view(-1)[::97] = 5
    batch[3, :, -3:, -2:, -4:] = 0
    batch[4] = batch[4] * 0.5
    return batch


def reference_scores(forward, target, batch):
    with torch.no_grad():
        return target(FullRecomputation(forward)(batch))


def drop_scale(forward, target, x, expected):
    """The largest score change among the perturbed inputs: what a map's values are."""
    return float((expected - reference_scores(forward, target, x)).abs().max())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("kind", ["class", "mask", "roi", "voxel"])
@pytest.mark.parametrize("output", ["logits", "probabilities"])
def test_reused_scores_equal_the_full_inference(shape, mode, kind, output):
    forward, x = forward_of(mode), volume(shape)
    target, reference_target = target_of(kind, shape, forward, x, output)
    reuse = forward.window_reuse(x, target)
    batch = perturbed(x)
    expected = reference_scores(forward, reference_target, batch)
    got = reuse.scores(batch)
    scale = drop_scale(forward, reference_target, x, expected)
    assert float((got - expected).abs().max()) <= 1e-5 * scale
    assert float(got[5]) == float(reuse.reference)  # nothing changed: no window ran for it
    record = reuse.record()
    every = record["windows_per_inference"]
    assert record["full_inferences"] >= 1  # the scaled input changes every window
    assert record["windows_run"] < 6 * every
    assert record["windows_run"] + record["windows_skipped"] == 6 * every
    # a logit target is linear in the blended logits: scored window by window, no cache
    linear = output == "logits"
    assert record["rescoring"] == ("per window" if linear else "re-blend")
    assert (record["cache_windows"] == 0) == linear


#: boxes of the raw grid: inside one window, across windows, at the far corner, one voxel
BOXES = [
    (slice(2, 6), slice(3, 7), slice(1, 5)),
    (slice(10, 22), slice(12, 20), slice(4, 10)),
    (slice(-3, None), slice(-2, None), slice(-4, None)),
    (slice(5, 6), slice(9, 10), slice(7, 8)),
]


def boxed(x, fill, boxes):
    batch = x.repeat(len(boxes), 1, 1, 1, 1)
    for row, box in enumerate(boxes):
        batch[(row, slice(None), *box)] = fill[(0, slice(None), *box)]
    return batch


def concrete(boxes, shape):
    return [tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, shape)) for box in boxes]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("kind", ["class", "roi", "voxel"])
@pytest.mark.parametrize("output", ["logits", "probabilities"])
def test_box_scores_build_only_the_overlapped_windows_and_equal_the_full_inference(
    shape, mode, kind, output
):
    forward, x = forward_of(mode), volume(shape)
    target, reference_target = target_of(kind, shape, forward, x, output)
    reuse = forward.window_reuse(x, target)
    assert reuse.voxelwise
    fill = torch.full_like(x, -2.0)
    boxes = concrete(BOXES, shape)
    expected = reference_scores(forward, reference_target, boxed(x, fill, boxes))
    got = reuse.box_scores(fill, boxes)
    scale = drop_scale(forward, reference_target, x, expected)
    assert float((got - expected).abs().max()) <= 1e-5 * scale
    overlapped = sum(len(reuse.windows_of_box(box)) for box in boxes)
    assert reuse.record()["windows_run"] == overlapped + (
        0 if output == "logits" else len(reuse.plan.indices) - len(reuse.cache)
    )


@pytest.mark.parametrize(
    ("intensity", "frozen", "voxelwise"),
    [
        (
            {"kind": "scale_range", "a_min": 0, "a_max": 8, "b_min": 0, "b_max": 1, "clip": True},
            False,
            True,
        ),
        ({"kind": "zscore"}, True, True),
        ({"kind": "zscore"}, False, False),
    ],
)
def test_box_scores_follow_the_preprocessing(intensity, frozen, voxelwise):
    """Voxel-by-voxel preprocessing (fixed ranges, frozen statistics) takes a box's windows
    from its coordinates; statistics of the perturbed input change every window, and the
    copies are then compared whole (every one a full inference)."""
    shape = SHAPES[0]
    forward, x = forward_of("gaussian", intensity), volume(shape)
    if frozen:
        forward.freeze_statistics(x)
    target, reference_target = target_of("class", shape, forward, x)
    scores = PerturbedScores(ScoreModel(forward, target), x, Context())
    assert scores.reuse.voxelwise == voxelwise
    fill = torch.zeros_like(x)
    boxes = concrete(BOXES, shape)
    expected = reference_scores(forward, reference_target, boxed(x, fill, boxes))
    got = scores.boxes(fill, boxes)
    scale = drop_scale(forward, reference_target, x, expected)
    assert float((got - expected).abs().max()) <= 1e-5 * scale
    assert (scores.reuse.record()["full_inferences"] == len(boxes)) != voxelwise


def test_a_local_target_reuses_the_restricted_windows():
    shape = SHAPES[0]
    forward, x = forward_of(), volume(shape)
    target, reference_target = target_of("roi", shape, forward, x)
    forward.restrict_to(target.region.numpy())
    reuse = forward.window_reuse(x, target)
    batch = perturbed(x)
    expected = reference_scores(forward, reference_target, batch)
    scale = drop_scale(forward, reference_target, x, expected)
    assert float((reuse.scores(batch) - expected).abs().max()) <= 1e-5 * scale
    assert reuse.record()["windows_per_inference"] < len(reuse.plan.slices)


def test_the_cache_stays_within_its_bound_and_stays_exact():
    shape = SHAPES[0]
    forward, x = forward_of("gaussian"), volume(shape)
    # probabilities: re-blended from cached predictions (a logit target keeps none)
    target, reference_target = target_of("class", shape, forward, x, "probabilities")
    unbounded = forward.window_reuse(x, target)
    window_bytes = unbounded.window_bytes
    bounded = forward.window_reuse(x, target, cache_bytes=3.5 * window_bytes)
    record = bounded.record()
    assert record["cache_windows"] == 3
    assert record["cache_bytes"] == 3 * window_bytes <= 3.5 * window_bytes
    held = {
        p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in bounded.cache.values()
    }
    assert sum(held.values()) == 3 * window_bytes  # the storages themselves, not views
    batch = perturbed(x)
    expected = reference_scores(forward, reference_target, batch)
    scale = drop_scale(forward, reference_target, x, expected)
    assert float((bounded.scores(batch) - expected).abs().max()) <= 1e-5 * scale
    unbounded.scores(batch)
    # the windows the cache lacks are recomputed where a re-blend needs them
    assert bounded.record()["windows_run"] > unbounded.record()["windows_run"]


def test_a_whole_volume_model_or_a_plain_target_gets_no_reuse():
    forward, x = forward_of(), volume(SHAPES[1])
    whole = SegmentationForward(tiny_unet(), ModelCard(in_channels=1, out_channels=2))
    target, _ = target_of("roi", SHAPES[1], forward, x)
    assert whole.window_reuse(x, target) is None
    assert forward.window_reuse(x, lambda logits: logits.mean(dim=(1, 2, 3, 4))) is None


def map_pair(name, mode, kind, shape, output="probabilities", **params):
    forward, x = forward_of(mode), volume(shape)
    target, reference_target = target_of(kind, shape, forward, x, output)
    method = create_method(name, params)
    context = Context(max_batch=4)
    ours = method.attribute(forward, x, target, context)
    reference = method.attribute(
        FullRecomputation(forward), x, reference_target, Context(max_batch=4)
    )
    return ours, reference, context


def assert_same_map(ours, reference):
    assert float((ours - reference).abs().max()) <= 1e-5 * float(reference.abs().max())
    assert float(reference.abs().max()) > 0


@pytest.mark.parametrize(
    ("mode", "kind", "shape", "output"),
    [
        ("constant", "class", SHAPES[0], "probabilities"),
        ("constant", "class", SHAPES[0], "logits"),
        ("gaussian", "voxel", SHAPES[1], "probabilities"),
        ("gaussian", "mask", SHAPES[0], "probabilities"),
        ("gaussian", "mask", SHAPES[0], "logits"),
    ],
)
def test_occlusion_with_reuse_equals_full_recomputation(mode, kind, shape, output):
    ours, reference, context = map_pair("occlusion", mode, kind, shape, output, window=8, stride=8)
    assert_same_map(ours, reference)
    record = context.facts["window_reuse"]
    assert record["windows_skipped"] > 0
    assert any("window reuse ran" in note for note in context.notes)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("feature_ablation", {}),
        ("shapley_value_sampling", {"n_samples": 2}),
        ("kernel_shap", {"n_samples": 12}),
        ("lime", {"n_samples": 12}),
    ],
)
def test_coalition_methods_with_reuse_equal_full_recomputation(name, params):
    grid = {"features": "grid", "feature_size": 12}
    ours, reference, context = map_pair(
        name, "gaussian", "roi", SHAPES[1], "probabilities", **params, **grid
    )
    assert_same_map(ours, reference)
    assert context.facts["window_reuse"]["perturbations"] > 0


def test_rise_says_it_runs_full_inferences():
    forward, x = forward_of(), volume(SHAPES[1])
    target, _ = target_of("class", SHAPES[1], forward, x)
    context = Context(max_batch=4)
    create_method("rise", {"n_masks": 2}).attribute(forward, x, target, context)
    assert any("every mask changes every window" in note for note in context.notes)


def test_the_estimate_counts_the_windows_that_run():
    shape = SHAPES[0]
    forward, x = forward_of(), volume(shape)
    target, _ = target_of("class", shape, forward, x)
    occlusion = create_method("occlusion", {"window": 8, "stride": 8})
    per_pass = forward.windows_per_pass(shape)
    boxes, _ = occlusion.boxes(shape, forward)
    passes = occlusion.passes((1, *shape), forward)
    assert passes.forward < len(boxes) + 1
    context = Context(max_batch=4)
    occlusion.attribute(forward, x, target, context)
    ran = context.facts["window_reuse"]["windows_run"] + per_pass
    assert forward.reused_windows(shape, boxes) == ran
    assert passes.forward == -(-ran // per_pass)


def test_feature_ablation_estimate_counts_the_windows_that_run():
    shape = SHAPES[0]
    forward, x = forward_of(), volume(shape)
    target, _ = target_of("class", shape, forward, x)
    method = create_method("feature_ablation", {"features": "grid", "feature_size": 12})
    per_pass = forward.windows_per_pass(shape)
    passes = method.passes((1, *shape), forward)
    context = Context(max_batch=4)
    method.attribute(forward, x, target, context)
    ran = context.facts["window_reuse"]["windows_run"] + per_pass
    assert passes.forward == -(-ran // per_pass)
    features = create_method("feature_ablation", {"features": "grid", "feature_size": 12})
    assert passes.forward < features.passes((1, *shape)).forward  # 1 + one per feature


@pytest.mark.parametrize("name", ["lime", "kernel_shap", "shapley_value_sampling"])
def test_the_sampled_coalitions_expected_windows_are_the_average_over_every_draw(name):
    # Six features and five windows: the expectation over the method's draws, enumerated.
    count = 6
    incidence = np.random.default_rng(1).random((count, 5)) < 0.35
    incidence[:, 0] = False  # a window no feature reaches: never recomputed
    method = create_method(name, {"n_samples": 1})
    expected = method.touched_windows(count, incidence.sum(axis=0), incidence)

    def touched(present: tuple[int, ...]) -> int:  # windows reached by an absent feature
        absent = [f for f in range(count) if f not in present]
        return int(incidence[absent].any(axis=0).sum())

    def mean_of_size(k: int) -> float:
        subsets = list(itertools.combinations(range(count), k))
        return sum(touched(c) for c in subsets) / len(subsets)

    everything = incidence.shape[1]  # the baseline's pass changes every window
    if name == "lime":  # every feature kept with probability 1/2
        sizes = range(count + 1)
        brute = sum(math.comb(count, k) * mean_of_size(k) for k in sizes) / 2**count
    elif name == "kernel_shap":  # sizes k ~ 1 / (k (F - k))
        weights = {k: 1 / (k * (count - k)) for k in range(1, count)}
        brute = sum(w * mean_of_size(k) for k, w in weights.items()) / sum(weights.values())
        brute += everything
    else:  # one coalition of each size 1 .. F - 1 along an order
        brute = sum(mean_of_size(k) for k in range(1, count)) + everything
    assert expected == pytest.approx(brute, rel=1e-9)


@pytest.mark.parametrize("name", ["lime", "kernel_shap", "shapley_value_sampling"])
def test_the_sampled_coalitions_estimate_counts_the_windows_that_run(name):
    shape = SHAPES[0]
    forward, x = forward_of(), volume(shape)
    target, _ = target_of("class", shape, forward, x)
    params = {
        "features": "grid",
        "feature_size": 12,
        "n_samples": 256 if name != "shapley_value_sampling" else 8,
    }
    method = create_method(name, params)
    per_pass = forward.windows_per_pass(shape)
    passes = method.passes((1, *shape), forward)
    context = Context(max_batch=16)
    method.attribute(forward, x, target, context)
    ran = context.facts["window_reuse"]["windows_run"] + per_pass
    # the estimate is the expectation over the draws: one run's draws fall close to it
    assert abs(passes.forward * per_pass - ran) <= 0.1 * ran + per_pass
    without_reuse = method.passes((1, *shape)).forward
    if name == "kernel_shap":  # half its coalitions miss one feature or a few: windows skipped
        assert passes.forward < without_reuse
    else:  # LIME's and most of Shapley sampling's coalitions miss features everywhere
        assert passes.forward <= without_reuse
