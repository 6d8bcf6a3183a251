"""Targets reduce the output to one differentiable score; gradients equal the analytic ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import LinearVoxelModel, tiny_input, tiny_unet

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry
from TorchEsegetaLib.methods import ScoreModel, input_gradients
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.targets.bound import bind_target, region_in_input_grid, region_on_model_grid
from TorchEsegetaLib.targets.spec import TargetSpec, score_phrase

W0, W1, B0, B1 = 0.5, -2.0, 0.1, 0.3
CARD = ModelCard(in_channels=1, out_channels=2, class_names=["background", "vessel"])


@pytest.fixture
def linear():
    model = LinearVoxelModel((W0, W1), (B0, B1))
    x = torch.rand((1, 1, 8, 8, 8), generator=torch.Generator().manual_seed(3)) * 2 - 1
    return model, x


def box_region(shape=(8, 8, 8)):
    region = np.zeros(shape, dtype=bool)
    region[2:5, 1:7, 3:6] = True
    return region


def grad_of(model, x, target):
    return input_gradients(ScoreModel(model, target), x)[1][0, 0].numpy()


def test_logit_mean_over_roi_has_the_analytic_gradient(linear):
    model, x = linear
    region = box_region()
    spec = TargetSpec(kind="roi", class_="vessel", start=(2, 1, 3), end=(4, 6, 5))
    assert np.array_equal(region_in_input_grid(spec, Geometry((8, 8, 8))), region)
    target = bind_target(spec, CARD, model(x).detach(), region)
    expected = np.where(region, W1 / region.sum(), 0.0)
    np.testing.assert_allclose(grad_of(model, x, target), expected, rtol=1e-5, atol=1e-8)


def test_probability_score_has_the_analytic_gradient(linear):
    model, x = linear
    region = box_region()
    spec = TargetSpec(kind="roi", class_=1, output="probabilities", start=(2, 1, 3), end=(4, 6, 5))
    target = bind_target(spec, CARD, model(x).detach(), region)
    z = ((W1 - W0) * x[0, 0] + (B1 - B0)).numpy()
    p1 = 1 / (1 + np.exp(-z))
    expected = np.where(region, p1 * (1 - p1) * (W1 - W0) / region.sum(), 0.0)
    np.testing.assert_allclose(grad_of(model, x, target), expected, rtol=1e-4, atol=1e-8)


def test_sigmoid_models_and_sum_reduction(linear):
    model, x = linear
    card = ModelCard(in_channels=1, out_channels=2, activation="sigmoid")
    region = box_region()
    spec = TargetSpec(
        kind="mask",
        class_=1,
        output="probabilities",
        reduction="sum",
        mask_array=region.astype(np.uint8),
    )
    target = bind_target(
        spec, card, model(x).detach(), region_in_input_grid(spec, Geometry((8, 8, 8)))
    )
    s = 1 / (1 + np.exp(-(W1 * x[0, 0] + B1).numpy()))
    np.testing.assert_allclose(
        grad_of(model, x, target), np.where(region, s * (1 - s) * W1, 0.0), rtol=1e-4, atol=1e-8
    )


def test_predicted_class_mask_is_fixed_from_the_unperturbed_prediction(linear):
    model, x = linear
    target = bind_target(TargetSpec(kind="class", class_="vessel"), CARD, model(x).detach())
    # logit1 > logit0  <=>  (W1 - W0) x > B0 - B1  <=>  x < 0.08
    expected_region = (x[0, 0] < (B0 - B1) / (W1 - W0)).numpy()
    assert np.array_equal(target.region.numpy(), expected_region)
    perturbed = x + 0.5
    assert np.array_equal(target.region.numpy(), expected_region)
    expected = np.where(expected_region, W1 / expected_region.sum(), 0.0)
    np.testing.assert_allclose(grad_of(model, perturbed, target), expected, rtol=1e-5, atol=1e-8)
    score = ScoreModel(model, target)(perturbed)
    np.testing.assert_allclose(
        score.item(),
        float((W1 * perturbed[0, 0] + B1)[torch.from_numpy(expected_region)].mean()),
        rtol=1e-5,
    )


def test_gradients_flow_through_a_real_network_for_every_target_kind(tmp_path):
    net, x = tiny_unet(), tiny_input()
    logits = net(x).detach()
    geometry = Geometry((16, 16, 16))
    mask_file = write_volume(
        box_region((16, 16, 16)).astype(np.uint8) * 3,
        geometry,
        tmp_path / "mask.nii.gz",
        dtype=np.uint8,
    )
    specs = [
        TargetSpec(kind="class", class_=int(logits[0].argmax(0).flatten().mode().values)),
        TargetSpec(kind="mask", mask=str(mask_file), label=3),
        TargetSpec(kind="roi", start=(4, 4, 4), end=(9, 9, 9), output="probabilities"),
        TargetSpec(kind="voxel", voxel=(8, 8, 8)),
    ]
    for spec in specs:
        region = None if spec.kind == "class" else region_in_input_grid(spec, geometry)
        target = bind_target(spec, CARD, logits, region)
        grad = input_gradients(ScoreModel(net, target), x)[1]
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, spec.kind


def test_empty_targets_are_clear_errors(linear):
    model, x = linear
    with pytest.raises(UserInputError, match="predicts no voxel of class 'vessel'"):
        bind_target(
            TargetSpec(kind="class", class_="vessel"), CARD, model(torch.ones_like(x) * 5).detach()
        )
    with pytest.raises(UserInputError, match="label 7 of the mask is empty"):
        region_in_input_grid(
            TargetSpec(kind="mask", mask_array=np.ones((8, 8, 8)), label=7), Geometry((8, 8, 8))
        )
    with pytest.raises(UserInputError, match="outside the image"):
        region_in_input_grid(TargetSpec(kind="voxel", voxel=(9, 0, 0)), Geometry((8, 8, 8)))
    with pytest.raises(UserInputError, match="outside the image"):
        region_in_input_grid(
            TargetSpec(kind="roi", start=(20, 20, 20), end=(30, 30, 30)), Geometry((8, 8, 8))
        )
    with pytest.raises(UserInputError, match="unknown class 'liver'"):
        bind_target(TargetSpec(class_="liver"), CARD, model(x).detach())


def test_physical_coordinates_select_the_same_voxels():
    geometry = Geometry((10, 12, 8), spacing=(0.5, 0.8, 2.0), origin=(-3.0, 4.0, 10.0))
    voxel_spec = TargetSpec(kind="roi", start=(2, 3, 1), end=(5, 7, 4))
    lps = [geometry.index_to_physical(p) for p in (voxel_spec.start, voxel_spec.end)]
    ras = [p * np.array([-1, -1, 1]) for p in lps]
    by_voxel = region_in_input_grid(voxel_spec, geometry)
    by_lps = region_in_input_grid(
        TargetSpec(kind="roi", start=lps[0], end=lps[1], coordinates="lps"), geometry
    )
    by_ras = region_in_input_grid(
        TargetSpec(kind="roi", start=ras[0], end=ras[1], coordinates="ras"), geometry
    )
    assert np.array_equal(by_voxel, by_lps) and np.array_equal(by_voxel, by_ras)
    assert by_voxel.sum() == 4 * 5 * 4


def test_cli_target_forms():
    assert TargetSpec.parse("class").kind == "class"
    assert TargetSpec.parse("class:vessel").class_ == "vessel"
    mask = TargetSpec.parse("mask:/data/seg.nii.gz:2")
    assert (mask.mask, mask.label) == ("/data/seg.nii.gz", 2)
    assert TargetSpec.parse("roi:1,2,3:4,5,6").end == (4.0, 5.0, 6.0)
    assert TargetSpec.parse("voxel:1,2,3").voxel == (1.0, 2.0, 3.0)
    for bad in ("box:1,2,3", "roi:1,2,3", "voxel:a,b,c", "roi:1,2:3,4"):
        with pytest.raises(UserInputError):
            TargetSpec.parse(bad)
    spec = TargetSpec(kind="roi", start=(1, 2, 3), end=(4, 5, 6), class_="vessel")
    assert TargetSpec.from_dict(spec.to_dict()) == spec


def test_small_regions_survive_resampling_to_the_model_grid():
    from TorchEsegetaLib.models.grids import ResampleInfo

    Info = ResampleInfo((40, 40, 40), (10, 10, 10), (1.0, 1.0, 1.0), (4.0, 4.0, 4.0))
    region = np.zeros(Info.input_shape, dtype=bool)
    region[21, 13, 30] = True
    mapped = region_on_model_grid(region, Info)
    assert mapped.sum() >= 1 and mapped.shape == Info.model_shape
    big = np.zeros(Info.input_shape, dtype=bool)
    big[8:32, 8:32, 8:32] = True
    assert abs(region_on_model_grid(big, Info).sum() - 6**3) <= 4**3


def test_voxel_target_has_the_analytic_gradient_at_that_voxel_only(linear):
    model, x = linear
    spec = TargetSpec(kind="voxel", class_="vessel", voxel=(3, 5, 2))
    region = region_in_input_grid(spec, Geometry((8, 8, 8)))
    target = bind_target(spec, CARD, model(x).detach(), region)
    expected = np.zeros((8, 8, 8))
    expected[3, 5, 2] = W1
    np.testing.assert_allclose(grad_of(model, x, target), expected, rtol=1e-6, atol=1e-9)


def test_score_phrase_names_the_unit_the_model_outputs():
    record = {"class": "vessel", "kind": "class", "reduction": "mean", "region_voxels": 12}
    assert score_phrase({**record, "output": "logits", "activation": "softmax"}) == (
        "mean vessel logit over the predicted vessel mask (12 voxels)"
    )
    assert "vessel probability" in score_phrase({**record, "output": "probabilities"})
    # a model that ends in its own softmax (activation "none") outputs probabilities already
    assert "vessel probability" in score_phrase(
        {**record, "output": "logits", "activation": "none"}
    )
    assert score_phrase({"class": "vessel", "kind": "voxel"}) == "vessel logit at the target voxel"
