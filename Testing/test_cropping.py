"""Cropping a whole-volume model's input around a local target: applied only on request, only
where it saves time, always measured and recorded; refused where it is not needed (sliding
windows). The recorded deviation is cross-checked by recomputing it here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_unet

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.volume import Geometry, Volume
from TorchEsegetaLib.methods import create_method
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import SegmentationForward
from TorchEsegetaLib.models.loading import LoadedModel
from TorchEsegetaLib.runs.api import explain
from TorchEsegetaLib.runs.cropping import plan_crop
from TorchEsegetaLib.runs.job import JOB_FIELDS, Job
from TorchEsegetaLib.targets.bound import BoundTarget

SHAPE = (32, 28, 24)


def loaded(card=None):
    card = card or ModelCard(in_channels=1, out_channels=2, size_divisible=2)
    return LoadedModel(tiny_unet(), card, {"kind": "monai", "network": "UNet"}, None)


def image():
    generator = np.random.default_rng(0)
    return Volume(generator.random((1, *SHAPE)).astype(np.float32) * 100, Geometry(SHAPE))


def test_crop_runs_on_the_box_and_records_what_it_changes():
    volume = image()
    result = explain(
        volume,
        model=loaded(),
        target="roi:12,10,8:16,14,12",
        methods=["saliency", "integrated_gradients"],
        device="cpu",
        crop_margin=4,
    )
    crop = result.target["crop"]
    # the ROI corners are inclusive: 12..16 grown by 4 is 8..20, the slice 8:21, moved out to
    # the network's stride grid (size_divisible 2): 8:22
    assert crop["box"] == [[8, 22], [6, 20], [4, 18]] and crop["approximation"] is True
    box = tuple(slice(a, b) for a, b in crop["box"])
    outside = np.ones(SHAPE, dtype=bool)
    outside[box] = False
    for name, attribution in result.maps.items():
        assert not attribution[outside].any(), name
        assert np.abs(attribution[box]).max() > 0, name
    assert any(w.startswith("approximation: explained on a crop") for w in result.warnings)

    # The recorded deviation, recomputed: saliency on the whole volume vs on the box.
    model = loaded()
    forward = SegmentationForward(model.network, model.card).eval()
    x = torch.from_numpy(volume.array)[None]
    forward.freeze_statistics(x)
    region = torch.zeros(SHAPE, dtype=torch.bool)
    region[12:17, 10:15, 8:13] = True
    target = BoundTarget(1, region, "logits", "softmax", "mean")
    saliency = create_method("saliency", {"abs": False})
    from TorchEsegetaLib.engine.context import Context

    full = saliency.attribute(forward, x, target, Context()).double()
    cropped_target = BoundTarget(1, region[box], "logits", "softmax", "mean")
    part = saliency.attribute(forward, x[(..., *box)], cropped_target, Context()).double()
    inside = full[(..., *box)]
    expected = float((part - inside).norm() / inside.norm())
    assert crop["saliency"]["relative_l2_in_box"] == pytest.approx(expected, rel=1e-4)
    # The saliency map of the run (absolute by default) is the cropped one, pasted back.
    np.testing.assert_allclose(
        result.maps["saliency"][box], part[0, 0].abs().float().numpy(), rtol=1e-4, atol=1e-9
    )
    assert 0 < crop["score"]["relative_change"] < 1
    assert -1 <= crop["saliency"]["pearson_in_box"] <= 1


def local_network():
    """A network that sees 4 voxels around each output voxel: strided, no normalisation."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(4, 6, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose3d(6, 2, 2, stride=2),
    ).eval()


@pytest.mark.parametrize("shape", [(30, 28, 26), (29, 27, 25)], ids=["even", "odd"])
def test_crop_on_the_stride_grid_is_exact_for_a_local_model(shape):
    # A model that sees only a few voxels around each output: with a margin wider than that,
    # the crop changes nothing, provided the crop keeps the stride grid of the whole volume
    # (odd shapes: the volume itself is padded by one voxel before the network).
    model = LoadedModel(
        local_network(), ModelCard(in_channels=1, out_channels=2, size_divisible=2), {}, None
    )
    rng = np.random.default_rng(1)
    volume = Volume(rng.random((1, *shape)).astype(np.float32), Geometry(shape))
    target = "roi:11,9,7:13,11,9"  # odd corners: off the stride grid
    full = explain(volume, model=model, target=target, methods=["saliency"], device="cpu")
    cropped = explain(
        volume, model=model, target=target, methods=["saliency"], device="cpu", crop_margin=6
    )
    measured = cropped.target["crop"]
    assert measured["score"]["relative_change"] < 1e-6
    assert measured["saliency"]["relative_l2"] < 1e-6
    np.testing.assert_allclose(
        cropped.maps["saliency"], full.maps["saliency"], rtol=1e-5, atol=1e-9
    )


def test_no_crop_where_it_would_keep_most_of_the_volume_or_windows_are_exact():
    region = np.zeros(SHAPE, dtype=bool)
    region[2:30, 2:26, 2:22] = True
    whole = SegmentationForward(tiny_unet(), ModelCard())
    crop, why = plan_crop(whole, region, 2)
    assert crop is None and "keeps" in why and "exact" in why
    sliding = SegmentationForward(tiny_unet(), ModelCard(roi_size=(16, 16, 16)))
    crop, why = plan_crop(sliding, region[:4, :4, :4].copy(), 2)
    assert crop is None and "sliding-window" in why

    result = explain(
        image(),
        model=loaded(ModelCard(in_channels=1, out_channels=2, roi_size=(16, 16, 16))),
        target="voxel:4,4,4",
        methods=["saliency"],
        device="cpu",
        crop_margin=2,
    )
    assert "crop" not in result.target
    assert any("crop_margin ignored" in w for w in result.warnings)


def test_crop_margin_is_validated_and_travels_through_job_files(tmp_path):
    with pytest.raises(UserInputError, match="crop_margin"):
        Job(images=["a.nii.gz"], crop_margin=-1)
    job = Job(images=["a.nii.gz"], crop_margin=3)
    assert Job.from_dict(job.to_dict()).crop_margin == 3


def test_the_job_schema_lists_exactly_the_job_fields():
    from TorchEsegetaLib.runs.job import schema_path

    schema = json.loads(schema_path().read_text())
    assert set(schema["properties"]) == set(JOB_FIELDS)
    assert set(Job(images=["a.nii.gz"]).to_dict()) == set(JOB_FIELDS)
