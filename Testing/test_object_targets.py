"""Object targets (component, boundary, contrast) have known regions and scores, take every
coordinate system, keep integrated gradients complete, and fail in one line when empty."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import LinearVoxelModel, tiny_unet

from TorchEsegetaLib.cli import main
from TorchEsegetaLib.engine.context import Context
from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry, Volume
from TorchEsegetaLib.methods import create_method
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.loading import LoadedModel
from TorchEsegetaLib.runs.case import prepare_case
from TorchEsegetaLib.runs.job import Job
from TorchEsegetaLib.targets.objects import boundary_band
from TorchEsegetaLib.targets.spec import TargetSpec, score_phrase

SHAPE = (16, 16, 16)
CARD = ModelCard(in_channels=1, out_channels=2, class_names=["background", "vessel"])
#: a voxel is "vessel" where 0.5 x + 0.1 < -2 x + 0.3 fails, i.e. x > 0.08 (logits of LinearVoxelModel)
W0, W1, B0, B1 = -2.0, 0.5, 0.3, 0.1
OBLIQUE = (0.6, 0.0, 0.8, 0.0, 1.0, 0.0, -0.8, 0.0, 0.6)


def blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image of two separate objects (value 1 on 0): A, made of two cubes that touch only
    at one corner (one object when 26-connected, two when 6-connected), and a bar B."""
    image = np.zeros(SHAPE, np.float32)
    a = np.zeros(SHAPE, bool)
    a[2:5, 2:5, 2:5] = True
    a[5:7, 5:7, 5:7] = True  # touches the first cube at the corner (4,4,4)-(5,5,5)
    b = np.zeros(SHAPE, bool)
    b[10:14, 3:5, 8:15] = True
    image[a | b] = 1.0
    return image, a, b


def linear_model() -> LoadedModel:
    return LoadedModel(LinearVoxelModel((W0, W1), (B0, B1)).eval(), CARD, {"kind": "test"}, None)


def prepared(spec: TargetSpec, image=None, geometry=None, model=None):
    image = blobs()[0] if image is None else image
    volume = Volume(image[None], geometry or Geometry(SHAPE))
    return prepare_case(volume, model or linear_model(), spec, torch.device("cpu"))


def test_a_component_is_exactly_the_26_connected_object_holding_the_voxel():
    image, a, b = blobs()
    case = prepared(TargetSpec.parse("component:3,3,3"))
    assert np.array_equal(case.input_region, a)
    assert case.target_info["class"] == "vessel"  # read where the point lies
    assert case.target_info["component"] == {
        "seed": [3, 3, 3],
        "voxels": int(a.sum()),
        "components_of_class": 2,
    }
    assert "vessel logit over the connected vessel component at voxel (3, 3, 3) (" in score_phrase(
        case.target_info
    )
    # the second cube's voxel belongs to the same object; the bar is another
    assert np.array_equal(prepared(TargetSpec.parse("component:6,6,6")).input_region, a)
    assert np.array_equal(prepared(TargetSpec.parse("component:12,4,10")).input_region, b)


@pytest.mark.parametrize("coordinates", ["voxel", "lps", "ras"])
def test_component_positions_in_every_coordinate_system_pick_the_same_object(coordinates):
    image, _, b = blobs()
    geometry = Geometry(SHAPE, (0.7, 0.9, 1.3), (10.0, -5.0, 3.0), OBLIQUE)
    voxel = np.array([12.0, 4.0, 10.0])
    point = voxel if coordinates == "voxel" else geometry.index_to_physical(voxel)
    if coordinates == "ras":
        point = point * np.array([-1.0, -1.0, 1.0])
    spec = TargetSpec(kind="component", voxel=tuple(point), coordinates=coordinates)
    case = prepared(spec, image, geometry)
    assert np.array_equal(case.input_region, b)
    assert case.target_info["component"]["seed"] == [12, 4, 10]


def test_component_errors_name_the_problem():
    with pytest.raises(UserInputError, match="background of the segmentation"):
        prepared(TargetSpec.parse("component:0,0,0"))
    with pytest.raises(UserInputError, match="not in the predicted background mask"):
        prepared(TargetSpec.parse("component:3,3,3", class_="background"))
    with pytest.raises(UserInputError, match="outside the image"):
        prepared(TargetSpec.parse("component:30,3,3"))


def city_block_band(mask: np.ndarray, width: int) -> np.ndarray:
    """The band by brute force: voxels whose city-block distance to the other side is <= width
    (the image border is not a surface)."""
    inside, outside = np.argwhere(mask), np.argwhere(~mask)
    band = np.zeros(mask.shape, bool)
    for voxels, others in ((inside, outside), (outside, inside)):
        distance = np.abs(voxels[:, None, :] - others[None, :, :]).sum(axis=2).min(axis=1)
        near = voxels[distance <= width]
        band[tuple(near.T)] = True
    return band


def test_the_boundary_band_has_the_expected_voxels():
    cube = np.zeros((12, 12, 12), bool)
    cube[3:9, 3:9, 3:9] = True  # a 6^3 cube
    band = boundary_band(cube, 1)
    # one layer inside (6^3 - 4^3) and one outside (the six 6 x 6 faces)
    assert (band & cube).sum() == 6**3 - 4**3 and (band & ~cube).sum() == 6 * 36
    for width in (1, 2, 3):
        assert np.array_equal(boundary_band(cube, width), city_block_band(cube, width)), width
    # a class cut by the image's border has no surface there: a slab through the whole image
    slab = np.zeros((6, 6, 6), bool)
    slab[:, :, 2:4] = True
    expected = np.zeros((6, 6, 6), bool)
    expected[:, :, 1:5] = True  # both slab layers inside, one layer each side along k
    assert np.array_equal(boundary_band(slab, 1), expected)
    assert boundary_band(np.ones((5, 5, 5), bool), 1).sum() == 0


def test_boundary_target_scores_the_band_of_the_predicted_class():
    image, a, b = blobs()
    case = prepared(TargetSpec.parse("boundary:vessel:1"))
    assert np.array_equal(case.input_region, boundary_band(a | b, 1))
    assert case.target_info["width"] == 1
    assert "band of 1 voxel(s) each side of the vessel surface" in score_phrase(case.target_info)
    with pytest.raises(UserInputError, match="no surface"):
        prepared(TargetSpec.parse("boundary:vessel"), np.ones(SHAPE, np.float32))
    with pytest.raises(UserInputError, match="predicts no voxel of class 'vessel'"):
        prepared(TargetSpec.parse("boundary"), np.zeros(SHAPE, np.float32))


def test_contrast_scores_class_a_minus_class_b_over_a_region():
    image, a, b = blobs()
    x = torch.from_numpy(image)[None, None]
    case = prepared(TargetSpec.parse("contrast:vessel,background"))
    assert np.array_equal(case.input_region, a | b)
    logits = case.forward(case.x)
    expected = ((W1 - W0) * x[0, 0] + (B1 - B0))[torch.from_numpy(a | b)].mean()
    torch.testing.assert_close(case.bound(logits)[0], expected)
    # its gradient is the difference of the two classes' gradients, voxel by voxel
    saliency = create_method("saliency", {"abs": False})
    gradient = saliency.attribute(case.forward, case.x, case.bound, Context())[0, 0]
    expected_gradient = torch.where(torch.from_numpy(a | b), (W1 - W0) / (a | b).sum(), 0.0)
    torch.testing.assert_close(gradient, expected_gradient.float())
    # probabilities: softmax of A minus softmax of B
    probabilities = prepared(TargetSpec.parse("contrast:1,0", output="probabilities"))
    p = torch.softmax(logits, dim=1)[0]
    torch.testing.assert_close(
        probabilities.bound(logits)[0], (p[1] - p[0])[torch.from_numpy(a | b)].mean()
    )
    assert (
        score_phrase(case.target_info)
        == f"mean vessel logit minus background logit over the predicted vessel mask ({(a | b).sum()} voxels)"
    )
    with pytest.raises(UserInputError, match="two different classes"):
        prepared(TargetSpec.parse("contrast:vessel,1"))
    # class A's region is empty: nothing to contrast
    with pytest.raises(UserInputError, match="predicts no voxel of class 'vessel'"):
        prepared(TargetSpec.parse("contrast:vessel,background"), np.zeros(SHAPE, np.float32))


def unet_case(spec_text: str):
    """A tiny untrained UNet on a random volume: a non-linear model with a prediction. Batch
    normalisation (eval: affine), as instance normalisation makes a network scale-invariant and
    no path from the zero baseline complete (see test_methods.py)."""
    network = tiny_unet(seed=1, norm="BATCH")
    model = LoadedModel(network, ModelCard(size_divisible=2, name="tiny"), {"kind": "test"}, None)
    rng = np.random.default_rng(0)
    image = rng.random(SHAPE).astype(np.float32) * 100
    if spec_text.startswith("component"):
        logits = network(torch.from_numpy(image)[None, None])
        vessel = np.argwhere((logits[0, 1] > logits[0, 0]).detach().numpy())
        spec_text += ",".join(str(v) for v in vessel[len(vessel) // 2])
    return prepared(TargetSpec.parse(spec_text), image, model=model)


@pytest.mark.parametrize(
    "target", ["component:", "boundary:1:2", "contrast:1,0", "contrast:0,1"], ids=str
)
def test_integrated_gradients_is_complete_for_every_object_target(target):
    case = unet_case(target)
    method = create_method("integrated_gradients", {"n_steps": 64})
    attribution = method.attribute(case.forward, case.x, case.bound, Context())
    with torch.no_grad():
        change = case.bound(case.forward(case.x)) - case.bound(case.forward(0 * case.x))
    assert abs(float(attribution.sum()) - float(change)) <= 0.01 * abs(float(change)), target


def test_lrp_of_a_contrast_is_class_a_minus_class_b_on_the_same_region():
    case = unet_case("contrast:1,0")
    lrp = create_method("lrp")

    def relevance(bound):
        return lrp.attribute(case.forward, case.x, bound, Context())

    a_alone = case.bound.replace(versus_index=None)
    b_alone = case.bound.replace(class_index=0, versus_index=None)
    torch.testing.assert_close(
        relevance(case.bound), relevance(a_alone) - relevance(b_alone), rtol=1e-4, atol=1e-9
    )


@pytest.mark.parametrize(
    "text, fields",
    [
        ("component:1,2,3", {"kind": "component", "voxel": [1.0, 2.0, 3.0], "class": None}),
        ("boundary", {"kind": "boundary", "class": None, "width": None}),
        ("boundary:vessel", {"kind": "boundary", "class": "vessel", "width": None}),
        ("boundary:vessel:3", {"kind": "boundary", "class": "vessel", "width": 3}),
        ("contrast:vessel,background", {"kind": "contrast", "class": "vessel", "versus": "background"}),
    ],
)  # fmt: skip
def test_object_targets_parse_and_round_trip_through_a_job(text, fields):
    """Each object target's text gives its fields and survives a job's round trip; the fields
    only they use stay out of other targets' jobs, so that a job recorded before those fields
    existed still compares equal (a cohort resumes it)."""
    spec = TargetSpec.parse(text)
    data = spec.to_dict()
    assert {k: data.get(k) for k in fields} == fields
    job = Job.from_dict({"images": ["a.nii.gz"], "target": data, "methods": ["saliency"]})
    assert job.target.to_dict() == data
    assert not {"width", "versus"} & set(TargetSpec.parse("class:vessel").to_dict())


@pytest.mark.parametrize(
    "target, message",
    [
        ("component", "write e.g. component:i,j,k"),
        ({"kind": "component"}, "needs a position: --target component:i,j,k"),
        ("component:1,2", '"voxel" needs 3 values'),
        ("boundary:vessel:wide", "whole number of voxels"),
        ("boundary:vessel:0", "at least 1"),
        ("contrast:vessel", "needs two classes"),
        ({"kind": "contrast", "class": "vessel"}, "needs two classes"),
        ({"kind": "boundary", "width": 2.5}, "width"),
    ],
)
def test_malformed_object_targets_are_one_clear_line(target, message):
    with pytest.raises(UserInputError, match=message):
        Job.from_dict({"images": ["a.nii.gz"], "target": target, "methods": ["saliency"]})


@pytest.fixture(scope="module")
def blob_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("blobs")
    torch.jit.script(LinearVoxelModel((W0, W1), (B0, B1)).eval()).save(str(root / "linear.ts"))
    write_volume(blobs()[0], Geometry(SHAPE), root / "image.nii.gz")
    return root


def run_cli(root, out, target):
    return main(
        [
            "explain",
            "--image",
            str(root / "image.nii.gz"),
            "--model",
            str(root / "linear.ts"),
            "--card",
            json.dumps({"class_names": ["background", "vessel"]}),
            "--target",
            target,
            "--out",
            str(out),
            "--no-figures",
            "--quiet",
        ]
    )


@pytest.mark.parametrize(
    "target, expected",
    [
        ("component:0,0,0", "background of the segmentation"),
        ("component:3,3,3:1,1,1", "needs one position"),
        ("contrast:vessel,vessel", "two different classes"),
        ("contrast:vessel,tumour", "unknown class 'tumour'"),
        ("boundary:tumour", "unknown class 'tumour'"),
    ],
)
def test_the_command_line_refuses_empty_or_bad_object_targets_in_one_line(
    blob_files, tmp_path, capsys, target, expected
):
    out = tmp_path / "run"
    assert run_cli(blob_files, out, target) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_the_command_line_explains_a_component_and_records_it(blob_files, tmp_path):
    out = tmp_path / "run"
    assert run_cli(blob_files, out, "component:12,4,10") == 0
    record = json.loads((out / "run.json").read_text())
    assert record["target"]["kind"] == "component"
    assert record["target"]["component"]["voxels"] == int(blobs()[2].sum())
    assert record["target"]["class"] == "vessel"
