"""MONAI bundles: our segmentation equals MONAI's own bundle run (its ConfigParser parsing the
same configs, its preprocessing, inferer and postprocessing) voxel for voxel, for each
preprocessing transform bundles commonly use, in the TorchScript and network_def forms; maps
come back on the input grid; what cannot be honoured stops the run before it starts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.networks.nets import UNet

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.images import read_volume, write_volume
from TorchEsegetaLib.io.volume import Geometry
from TorchEsegetaLib.models.bundles.reference import dice, reference_inference
from TorchEsegetaLib.models.inference import segment
from TorchEsegetaLib.models.loading import load_model

OBLIQUE = (0.6, 0.0, 0.8, 0.0, 1.0, 0.0, -0.8, 0.0, 0.6)
NET = {"spatial_dims": 3, "channels": [4, 8, 8], "strides": [2, 2], "num_res_units": 0}


def load(keys="image"):
    return [
        {"_target_": "LoadImaged", "keys": keys},
        {"_target_": "EnsureChannelFirstd", "keys": keys},
    ]


def post(*steps, invert=True, nearest=False, activation="softmax"):
    activate = (
        [{"_target_": "Activationsd", "keys": "pred", activation: True}] if activation else []
    )
    inverts = [
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "image",
            "nearest_interp": nearest,
        }
    ]
    return activate + (inverts if invert else []) + list(steps)


ARGMAX = {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}
SIMPLE = {"_target_": "SimpleInferer"}


def sliding(roi, mode="constant"):
    return {
        "_target_": "SlidingWindowInferer",
        "roi_size": roi,
        "sw_batch_size": 2,
        "overlap": 0.5,
        "mode": mode,
    }


#: name -> (preprocessing, inferer, postprocessing, out channels), each run in both forms
CASES = {
    "orientation spacing scale-range divisible-pad, TorchScript": (
        load()
        + [
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {
                "_target_": "Spacingd",
                "keys": "image",
                "pixdim": [1.5, 1.2, 2.0],
                "mode": "bilinear",
            },
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": -50,
                "a_max": 150,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            },
            {"_target_": "DivisiblePadd", "keys": "image", "k": 4},
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
        SIMPLE,
        post(ARGMAX),
        2,
    ),
    "orientation resize percentiles, network_def, gaussian windows": (
        load()
        + [
            {"_target_": "Orientationd", "keys": "image", "axcodes": "LPI"},
            {
                "_target_": "Resized",
                "keys": "image",
                "spatial_size": [16, 14, 12],
                "mode": "trilinear",
            },
            {
                "_target_": "ScaleIntensityRangePercentilesd",
                "keys": "image",
                "lower": 2,
                "upper": 98,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
                "channel_wise": True,
            },
        ],
        sliding([8, 8, 8], "gaussian"),
        post(ARGMAX, nearest=True),
        3,
    ),
    "normalize(nonzero) crop-foreground spatial-pad, discrete before invert, largest component": (
        load()
        + [
            {
                "_target_": "NormalizeIntensityd",
                "keys": "image",
                "nonzero": True,
                "channel_wise": True,
            },
            {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "margin": 1},
            {"_target_": "SpatialPadd", "keys": "image", "spatial_size": [24, 16, 24]},
        ],
        sliding([12, 12, 12]),
        [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            ARGMAX,
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
            },
            {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1]},
            {"_target_": "FillHolesd", "keys": "pred", "applied_labels": [1]},
            {"_target_": "LabelFilterd", "keys": "pred", "applied_labels": [1]},
        ],
        2,
    ),
    "affine lambda, spacing, zscore, min-max, padding crop, sigmoid threshold": (
        load()
        + [
            {"_target_": "Lambdad", "keys": "image", "func": "$lambda x: (x - 50) / 25"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.3, 1.3, 1.3]},
            {"_target_": "NormalizeIntensityd", "keys": "image"},
            {"_target_": "ScaleIntensityd", "keys": "image", "minv": -1.0, "maxv": 2.0},
            {
                "_target_": "CropForegroundd",
                "keys": "image",
                "source_key": "image",
                "select_fn": "$lambda x: x > -0.5",
                "k_divisible": 4,
            },
        ],
        SIMPLE,
        post(
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
            activation="sigmoid",
        ),
        1,
    ),
}


def bundle(root, pre, inferer, postprocessing, form, out_channels, metadata=None, network=None):
    """A bundle folder written the way MONAI's bundles are, with a tiny random UNet."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    torch.manual_seed(0)
    network = network or UNet(in_channels=1, out_channels=out_channels, **NET).eval()
    config = {
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
    }
    if form == "pt":
        config["network_def"] = {
            "_target_": "UNet",
            "in_channels": 1,
            "out_channels": out_channels,
            **NET,
        }
        torch.save(network.state_dict(), root / "models" / "model.pt")
    else:
        torch.jit.script(network).save(str(root / "models" / "model.ts"))
    metadata = metadata or {
        "name": "tiny",
        "network_data_format": {
            "inputs": {"image": {"num_channels": 1}},
            "outputs": {"pred": {"num_channels": out_channels}},
        },
    }
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    return root, network


def image(path, zero_border=False):
    """An anisotropic, obliquely oriented test image (a bright blob on noise)."""
    geometry = Geometry((22, 19, 17), (0.8, 1.1, 1.7), (10.0, -5.0, 3.0), OBLIQUE)
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in geometry.size], indexing="ij"))
    array = 100 * np.exp(-4 * (grid**2).sum(axis=0)) + 30 * rng.random(geometry.size) - 10
    if zero_border:
        array[:3], array[-2:], array[:, :4] = 0, 0, 0
    write_volume(array.astype(np.float32), geometry, path)
    return path


def monai_run(root, image_path):
    """MONAI's own inference of the bundle (its parser, transforms, inferer): labels, and the
    probabilities before the first AsDiscreted."""
    reference = reference_inference(load_model({"kind": "bundle", "path": str(root)}), image_path)
    return reference["labels"][None], reference["probabilities"]


@pytest.mark.parametrize("form", ["ts", "pt"])
@pytest.mark.parametrize("name", list(CASES))
def test_segmentation_equals_monais_own_bundle_run(tmp_path, name, form):
    pre, inferer, postprocessing, out_channels = CASES[name]
    root, network = bundle(tmp_path / "bundle", pre, inferer, postprocessing, form, out_channels)
    path = image(tmp_path / "image.nii.gz", zero_border="crop" in name.lower())

    labels, probabilities = monai_run(root, path)
    model = load_model({"kind": "bundle", "path": str(root)})  # no trust needed: no code
    ours = segment(model, read_volume(path))

    assert model.card.ignored_preprocessing == []
    assert labels.shape[1:] == ours.labelmap.shape == (22, 19, 17)
    np.testing.assert_array_equal(ours.labelmap, labels[0])
    assert (
        0 < (ours.labelmap > 0).sum() < ours.labelmap.size and dice(ours.labelmap, labels[0]) == 1.0
    )
    if probabilities is not None and "invert" not in name:
        np.testing.assert_allclose(ours.probabilities, probabilities, atol=1e-5, rtol=0)


def test_maps_come_back_on_the_input_grid(tmp_path):
    from TorchEsegetaLib.cli import main

    pre, inferer, postprocessing, out_channels = CASES[next(iter(CASES))]
    root, _ = bundle(tmp_path / "bundle", pre, inferer, postprocessing, "ts", out_channels)
    path = image(tmp_path / "image.nii.gz")
    out = tmp_path / "run"
    args = ["explain", "--image", str(path), "--model", str(root), "--out", str(out)]
    assert (
        main([*args, "--method", "saliency,occlusion", "--param", "occlusion.window=8", "--quiet"])
        == 0
    )
    reference = sitk.ReadImage(str(path))
    for name in ("segmentation.nii.gz", "saliency.nii.gz", "occlusion.nii.gz"):
        written = sitk.ReadImage(str(out / name))
        assert written.GetSize() == reference.GetSize()
        np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)
    saliency = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "saliency.nii.gz")))
    assert np.abs(saliency).sum() > 0 and np.isfinite(saliency).all()
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_a_network_ending_in_softmax_is_not_given_a_second_one(tmp_path):
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        UNet(in_channels=1, out_channels=2, **NET), torch.nn.Softmax(dim=1)
    )
    metadata = {
        "network_data_format": {
            "inputs": {"image": {"num_channels": 1}},
            "outputs": {"pred": {"num_channels": 2, "type": "probabilities"}},
        }
    }
    pre = load() + [{"_target_": "DivisiblePadd", "keys": "image", "k": 4}]
    root, network = bundle(
        tmp_path / "b",
        pre,
        SIMPLE,
        post(ARGMAX),
        "ts",
        2,
        metadata=metadata,
        network=network.eval(),
    )
    path = image(tmp_path / "image.nii.gz")
    model = load_model({"kind": "bundle", "path": str(root)})
    assert model.card.activation == "none"
    assert any("not applied a second time" in w for w in model.source["warnings"])
    ours = segment(model, read_volume(path))
    # MONAI's run of the same bundle without the second softmax
    plain, _ = bundle(
        tmp_path / "plain",
        pre,
        SIMPLE,
        post(ARGMAX, activation=None),
        "ts",
        2,
        metadata=metadata,
        network=network,
    )
    labels, probabilities = monai_run(plain, path)
    np.testing.assert_array_equal(ours.labelmap, labels[0])
    np.testing.assert_allclose(ours.probabilities, probabilities, atol=1e-5, rtol=0)


def test_size_divisible_without_network_def_is_measured(tmp_path):
    root, _ = bundle(tmp_path / "b", load(), SIMPLE, post(ARGMAX, invert=False), "ts", 2)
    model = load_model({"kind": "bundle", "path": str(root)})
    assert model.card.size_divisible == 4  # two stride-2 levels
    result = segment(model, read_volume(image(tmp_path / "image.nii.gz")))  # 22x19x17: padded
    assert result.labelmap.shape == (22, 19, 17)


def test_an_order_that_cannot_be_reproduced_stops_before_the_run(tmp_path):
    clip_then_resample = load() + [
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "image",
            "a_min": 0,
            "a_max": 50,
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        },
        {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 1.5]},
    ]
    root, _ = bundle(tmp_path / "b", clip_then_resample, sliding([8, 8, 8]), post(ARGMAX), "ts", 2)
    volume = read_volume(image(tmp_path / "image.nii.gz"))
    model = load_model({"kind": "bundle", "path": str(root)})
    with pytest.raises(
        UserInputError, match="spacing after scale_range.*--allow-unapplied-preprocessing"
    ):
        segment(model, volume)
    allowed = load_model(
        {"kind": "bundle", "path": str(root)}, card={"allow_unapplied_preprocessing": True}
    )
    result = segment(allowed, volume)
    assert any("differs from MONAI's" in w for w in result.input.warnings)


def test_a_transform_that_cannot_be_honoured_is_named_with_the_fix(tmp_path, capsys):
    from TorchEsegetaLib.cli import main

    pre = load() + [{"_target_": "GaussianSmoothd", "keys": "image", "sigma": 1.0}]
    root, _ = bundle(tmp_path / "b", pre, sliding([8, 8, 8]), post(ARGMAX), "ts", 2)
    with pytest.raises(
        UserInputError, match="GaussianSmoothd.*--card.*--allow-unapplied-preprocessing"
    ):
        load_model({"kind": "bundle", "path": str(root)})
    path = image(tmp_path / "image.nii.gz")
    args = [
        "explain",
        "--image",
        str(path),
        "--model",
        str(root),
        "--method",
        "saliency",
        "--quiet",
    ]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "GaussianSmoothd" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "allowed"
    assert main([*args, "--out", str(out), "--allow-unapplied-preprocessing"]) == 0
    warnings = json.loads((out / "run.json").read_text())["warnings"]
    assert any("GaussianSmoothd" in w for w in warnings)


def test_only_affine_lambdas_are_read_without_trust(tmp_path):
    unknown = load() + [{"_target_": "Lambdad", "keys": "image", "func": "$lambda x: x ** 2"}]
    root, _ = bundle(tmp_path / "b", unknown, sliding([8, 8, 8]), post(ARGMAX), "ts", 2)
    with pytest.raises(UserInputError, match="func.*lambda x: x \\*\\* 2.*--trust-model"):
        load_model({"kind": "bundle", "path": str(root)})
    with pytest.raises(UserInputError, match="not of the form lambda x: a \\* x \\+ b"):
        load_model({"kind": "bundle", "path": str(root), "trust": True})


def test_recognised_lambdas():
    from TorchEsegetaLib.models.bundles.lambdas import affine_lambda, threshold_lambda

    assert affine_lambda("$lambda x: (x - 50) / 25") == (0.04, -2.0)
    assert affine_lambda("$lambda img: 2 * img + 1 - -3") == (2.0, 4.0)
    assert affine_lambda("$lambda x: x") == (1.0, 0.0)
    for bad in ("$lambda x: x * x", "$lambda x: 1 / x", "$lambda x: __import__('os')", "$x + 1"):
        assert affine_lambda(bad) is None, bad
    assert threshold_lambda("$lambda x: x > -1.5") == -1.5
    assert threshold_lambda("$lambda x: x >= 0") is None


def test_untrusted_network_def_outside_monai_is_refused(tmp_path):
    root, _ = bundle(tmp_path / "b", load(), sliding([8, 8, 8]), post(ARGMAX), "pt", 2)
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["network_def"]["_target_"] = "scripts.net.Net"
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(
        UserInputError, match="network_def::_target_: 'scripts.net.Net'.*--trust-model"
    ):
        load_model({"kind": "bundle", "path": str(root)})


@pytest.mark.parametrize("form", ["ts", "pt"])
def test_the_demo_exports_run_as_the_demo_does(tmp_path, form):
    from TorchEsegetaLib.models.demo import demo_volume
    from TorchEsegetaLib.models.demo.export import write_bundle, write_torchscript

    volume, _ = demo_volume()
    path = tmp_path / "mra.nii.gz"
    write_volume(volume.array[0], volume.geometry, path)
    root = write_bundle(tmp_path / "bundle", form)
    labels, probabilities = monai_run(root, path)
    ours = segment(load_model({"kind": "bundle", "path": str(root)}), read_volume(path))
    np.testing.assert_array_equal(ours.labelmap, labels[0])
    np.testing.assert_allclose(ours.probabilities, probabilities, atol=1e-5, rtol=0)
    demo = segment(load_model({"kind": "demo"}), read_volume(path))
    assert dice(ours.labelmap, demo.labelmap) > 0.99  # the same network and preprocessing
    scripted = load_model(
        {"kind": "torchscript", "path": str(write_torchscript(tmp_path / "demo.ts"))},
        card={"intensity": {"kind": "zscore", "channel_wise": True}},
    )
    assert scripted.card.size_divisible == 4  # measured: two stride-2 levels
    np.testing.assert_array_equal(segment(scripted, read_volume(path)).labelmap, demo.labelmap)


@pytest.mark.parametrize(
    "name", [n for n in CASES if "largest component" in n or "sigmoid threshold" in n]
)
def test_a_class_target_explains_the_class_the_bundles_postprocessing_left(tmp_path, name):
    """The class target's region is the class in MONAI's postprocessed labelmap (largest
    component kept, holes filled; a sigmoid output's threshold), not the raw prediction."""
    from TorchEsegetaLib.runs.case import prepare_case
    from TorchEsegetaLib.targets.bound import predicted_mask
    from TorchEsegetaLib.targets.spec import TargetSpec

    pre, inferer, postprocessing, out_channels = CASES[name]
    root, _ = bundle(tmp_path / "bundle", pre, inferer, postprocessing, "ts", out_channels)
    path = image(tmp_path / "image.nii.gz", zero_border="crop" in name.lower())
    labels, _ = monai_run(root, path)
    model = load_model({"kind": "bundle", "path": str(root)})
    case = prepare_case(read_volume(path), model, TargetSpec(kind="class"), torch.device("cpu"))

    expected = labels[0] == 1  # the foreground class: label 1 in both forms
    np.testing.assert_array_equal(case.input_region, expected)
    assert (
        case.bound.voxel_count > 0 and case.target_info["region_voxels"] == case.bound.voxel_count
    )
    if "largest component" in name:  # the raw prediction has more than the postprocessing kept
        raw = predicted_mask(case.segmentation.logits, 1, model.card.activation)
        assert int(raw.sum()) != case.bound.voxel_count
