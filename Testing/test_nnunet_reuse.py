"""Exact window reuse on nnU-Net v2 folders: a perturbed copy runs only the windows its changed
voxels reach, in every fold and mirror combination, and gives the score and the maps of the full
pipeline (two folds with mirroring along three axes, one fold alone; with and without
resampling; every target kind, logits and probabilities); the cache stays within its bound;
the cost estimate counts the network inputs that really run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from extras import require_extra
from helpers import Float64Sum, FullRecomputation

require_extra("nnunet")

from TorchEsegetaLib.engine.context import Context  # noqa: E402
from TorchEsegetaLib.io.volume import Geometry, Volume  # noqa: E402
from TorchEsegetaLib.methods import create_method  # noqa: E402
from TorchEsegetaLib.targets.spec import TargetSpec  # noqa: E402

#: the example folder's own spacing (no resampling), and an anisotropic, oblique one (nnU-Net
#: resamples it with third-order splines, and crops a zero slab)
GEOMETRIES = {
    "plans": ((10, 30, 34), (2.0, 0.7, 0.6), None),
    "resampled": ((12, 28, 30), (2.3, 0.75, 0.62), 0.3),
}


def volume_of(geometry: str) -> Volume:
    from TorchEsegetaLib.models.demo.synthetic import make_vessel_volume

    shape, spacing, angle = GEOMETRIES[geometry]
    image, _ = make_vessel_volume(shape, 5)
    image[:2] = 0  # nnU-Net crops to the nonzero box
    direction = (1.0, 0, 0, 0, 1, 0, 0, 0, 1)
    if angle is not None:
        c, s = np.cos(angle), np.sin(angle)
        direction = (c, -s, 0, s, c, 0, 0, 0, 1)
    return Volume(image, Geometry(shape, spacing, (3.0, -2.0, 5.0), direction))


def target_spec(kind: str, shape) -> TargetSpec:
    if kind == "mask":
        mask = np.random.default_rng(3).random(shape) < 0.05
        return TargetSpec(kind="mask", mask_array=mask.astype(np.uint8))
    text = {"class": "class:vessel", "roi": "roi:3,6,8:9,16,20", "voxel": "voxel:6,12,15"}[kind]
    return TargetSpec.parse(text)


_cases: dict = {}


def case_of(folder, geometry="plans", kind="class", output="logits", explain_fold=None):
    """The runner's prepared case (model loaded, segmented, statistics frozen; cached) and its
    target scoring ``output``."""
    from TorchEsegetaLib.models.loading import load_model
    from TorchEsegetaLib.runs.case import prepare_case

    key = (geometry, kind, explain_fold)
    if key not in _cases:
        model = load_model(
            {"kind": "nnunet", "path": str(folder), "folds": [0, 1], "explain_fold": explain_fold}
        )
        volume = volume_of(geometry)
        spec = target_spec(kind, volume.array.shape[-3:])
        _cases[key] = prepare_case(volume, model, spec, torch.device("cpu"))
    case = _cases[key]
    return case, case.bound.replace(output=output)


def perturbed(x):
    """A box, a box at the far corner, one voxel, a box of noise, every voxel, nothing."""
    batch = x.repeat(6, 1, 1, 1, 1)
    batch[0, :, 2:5, 3:8, 2:7] = 0
    batch[1, :, -3:, -5:, -6:] = 0
    batch[2, :, 7, 20, 25] = 4.0
    noise = torch.randn((1, 4, 5, 6), generator=torch.Generator().manual_seed(1))
    batch[3, :, 5:9, 10:15, 12:18] += noise
    batch[4] = batch[4] * 0.5
    return batch


def full_scores(case, target, batch):
    with torch.no_grad():
        return Float64Sum.of(target)(FullRecomputation(case.forward)(batch))


@pytest.fixture(scope="module")
def folder(nnunet_model_folder):
    return nnunet_model_folder


@pytest.mark.parametrize(
    ("geometry", "kind"),
    [
        ("plans", "class"),
        ("plans", "mask"),
        ("plans", "roi"),
        ("resampled", "class"),
        ("resampled", "voxel"),
    ],
)
@pytest.mark.parametrize("output", ["logits", "probabilities"])
def test_reused_scores_equal_the_full_pipeline(folder, geometry, kind, output):
    case, target = case_of(folder, geometry, kind, output)
    pipeline = case.forward.network
    assert pipeline.explained() == ([0, 1], pipeline.mirror_axes) and len(pipeline.mirror_axes) == 3
    reuse = case.forward.window_reuse(case.x, target)
    assert float((reuse.reference - full_scores(case, target, case.x)).abs().max()) <= 1e-6
    batch = perturbed(case.x)
    expected = full_scores(case, target, batch)
    ours = reuse.scores(batch)
    scale = float((expected - reuse.reference).abs().max())
    assert scale > 0
    assert float((ours - expected).abs().max()) <= 1e-5 * scale
    record = reuse.record()
    windows = len(pipeline.case.windows)
    assert record["windows_per_inference"] == windows * 2 * 8  # windows x folds x flips
    assert record["windows_skipped"] > 0  # the boxes ran part of the windows
    assert record["full_inferences"] >= 1  # scaling every voxel changes every window
    assert record["rescoring"] == ("per window" if output == "logits" else "re-blend")


def test_the_copy_that_changes_nothing_runs_no_window(folder):
    case, target = case_of(folder)
    reuse = case.forward.window_reuse(case.x, target)
    assert torch.equal(reuse.scores(case.x.repeat(2, 1, 1, 1, 1)), reuse.reference.expand(2))
    assert reuse.record()["windows_run"] == 0


@pytest.mark.parametrize(
    ("geometry", "output", "explain_fold"),
    [
        ("plans", "probabilities", None),
        ("resampled", "logits", 0),
        ("resampled", "probabilities", 0),
    ],
)
def test_occlusion_with_reuse_equals_the_full_pipeline(folder, geometry, output, explain_fold):
    case, target = case_of(folder, geometry, "class", output, explain_fold)
    method = create_method("occlusion", {"window": 8, "stride": 8})
    context = Context(max_batch=4)
    ours = method.attribute(case.forward, case.x, target, context)
    reference = method.attribute(
        FullRecomputation(case.forward), case.x, Float64Sum.of(target), Context(max_batch=4)
    )
    assert float(reference.abs().max()) > 0
    assert float((ours - reference).abs().max()) <= 1e-5 * float(reference.abs().max())
    record = context.facts["window_reuse"]
    assert any("window reuse ran" in note for note in context.notes)
    if geometry == "plans":
        assert 0 < record["windows_run"] < record["windows_run"] + record["windows_skipped"]
    else:
        # nnU-Net's cubic resampling spreads a box about 12 voxels along each axis: on this
        # small volume every box reaches every window, and the run says so
        assert record["full_inferences"] == record["perturbations"]
        assert any("ran as full inferences" in note for note in context.notes)


def test_adaptive_occlusion_by_gradient_runs_through_the_pipeline(folder):
    # The path estimate takes the pipeline's gradients (window by window, every fold and
    # mirror); the boxes it re-measures run with reuse; all boxes re-measured is occlusion.
    case, target = case_of(folder, "plans", "class", "probabilities", explain_fold=0)
    params = {"window": 8, "stride": 8}
    reference = create_method("occlusion", params).attribute(
        FullRecomputation(case.forward), case.x, Float64Sum.of(target), Context(max_batch=4)
    )
    scale = float(reference.abs().max())
    context = Context(max_batch=4)
    every = create_method("occlusion_adaptive", {**params, "exact_share": 1.0})
    assert (
        float((every.attribute(case.forward, case.x, target, context) - reference).abs().max())
        <= 1e-5 * scale
    )
    assert context.facts["window_reuse"]["windows_skipped"] > 0
    context = Context(max_batch=4)
    estimated = create_method("occlusion_adaptive", {**params, "exact_share": 0.0}).attribute(
        case.forward, case.x, target, context
    )
    assert context.facts["passes"] == 0 and context.facts["backward_passes"] > 0
    # the estimate follows occlusion's map: same sign where the drop is large
    large = reference.abs() > 0.5 * scale
    assert large.any() and bool((estimated[large].sign() == reference[large].sign()).all())


def test_feature_ablation_with_reuse_equals_the_full_pipeline(folder):
    case, target = case_of(folder, "plans", "roi", "probabilities", explain_fold=0)
    method = create_method("feature_ablation", {"features": "grid", "feature_size": 8})
    context = Context(max_batch=4)
    ours = method.attribute(case.forward, case.x, target, context)
    reference = method.attribute(
        FullRecomputation(case.forward), case.x, Float64Sum.of(target), Context(max_batch=4)
    )
    assert float((ours - reference).abs().max()) <= 1e-5 * float(reference.abs().max())
    record = context.facts["window_reuse"]
    assert record["windows_skipped"] > 0
    # grid blocks: the estimate knows each removal's windows from the block's coordinates
    per_pass = case.forward.windows_per_pass(tuple(case.x.shape[2:]))
    estimate = method.passes(case.x.shape[1:], case.forward).forward
    assert estimate == -(-(record["windows_run"] + per_pass) // per_pass)


def test_the_cache_stays_within_its_bound_and_stays_exact(folder):
    case, target = case_of(folder, "plans", "class", "probabilities")
    bounded = case.forward.window_reuse(case.x, target, cache_bytes=1)
    unbounded = case.forward.window_reuse(case.x, target)
    assert bounded.record()["cache_windows"] == 0
    assert unbounded.record()["cache_windows"] == len(case.forward.network.case.windows)
    batch = perturbed(case.x)
    expected = full_scores(case, target, batch)
    scale = float((expected - bounded.reference).abs().max())
    assert float((bounded.scores(batch) - expected).abs().max()) <= 1e-5 * scale
    unbounded.scores(batch)
    # the unperturbed contributions the cache lacks are computed again
    assert bounded.record()["windows_run"] > unbounded.record()["windows_run"]


def test_the_estimate_counts_the_network_inputs_that_run(folder):
    case, target = case_of(folder)
    method = create_method("occlusion", {"window": 8, "stride": 8})
    spatial = tuple(case.x.shape[2:])
    boxes, _ = method.boxes(spatial, case.forward)
    pipeline = case.forward.network
    per_pass = case.forward.windows_per_pass(spatial)
    assert per_pass == len(pipeline.case.windows) * 2 * 8
    estimated = case.forward.reused_windows(spatial, boxes)
    context = Context(max_batch=4)
    method.attribute(case.forward, case.x, target, context)
    record = context.facts["window_reuse"]
    # without resampling the boxes' windows are known from their coordinates: the estimate is exact
    assert estimated == record["windows_run"] + per_pass
    assert method.passes(case.x.shape[1:], case.forward).forward == -(-estimated // per_pass)
    assert estimated < per_pass * (len(boxes) + 1)


def test_rise_says_it_runs_full_inferences(folder):
    case, target = case_of(folder, "plans", "roi", "probabilities", explain_fold=0)
    context = Context(max_batch=4)
    create_method("rise", {"n_masks": 2}).attribute(case.forward, case.x, target, context)
    assert any("every mask changes every window" in note for note in context.notes)
