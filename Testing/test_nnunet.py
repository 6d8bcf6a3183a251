"""nnU-Net v2 model folders: our pipeline against nnU-Net's own nnUNetPredictor.

The model folder is made by nnU-Net's own code (raw dataset, fingerprint, planner, trainer
initialisation and save_checkpoint; :mod:`TorchEsegetaLib.models.nnunet.example`), two folds with
mirroring, tiny networks; the test image is anisotropic, obliquely oriented and has a zero slab
that nnU-Net crops away.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from extras import require_extra

require_extra("nnunet")

from TorchEsegetaLib.errors import UserInputError  # noqa: E402
from TorchEsegetaLib.io.volume import Geometry, Volume  # noqa: E402

SHAPE = (12, 14, 18)
SPACING = (2.3, 0.75, 0.62)


@pytest.fixture(scope="module")
def folder(nnunet_model_folder):
    return nnunet_model_folder


@pytest.fixture(scope="module")
def volume() -> Volume:
    from TorchEsegetaLib.models.demo.synthetic import make_vessel_volume

    image, _ = make_vessel_volume(SHAPE, 5)
    image[:2] = 0  # nnU-Net crops to the nonzero box
    c, s = np.cos(0.3), np.sin(0.3)
    geometry = Geometry(SHAPE, SPACING, (3.0, -2.0, 5.0), (c, -s, 0, s, c, 0, 0, 0, 1))
    return Volume(image, geometry)


@pytest.mark.parametrize(("folds", "mirroring"), [((0, 1), True), ((0,), False)])
def test_segmentation_equals_nnunet_predictor(folder, volume, folds, mirroring):
    from TorchEsegetaLib.models.inference import segment
    from TorchEsegetaLib.models.loading import load_model
    from TorchEsegetaLib.models.nnunet.reference import nnunet_predict

    model = load_model(
        {"kind": "nnunet", "path": str(folder), "folds": list(folds), "mirroring": mirroring}
    )
    ours = segment(model, volume)
    labels, probabilities = nnunet_predict(folder, volume, folds, mirroring)
    assert len(model.network.analyse(volume.array).windows) > 1  # several windows blended
    assert np.array_equal(ours.labelmap, labels)
    assert 0 < labels.sum() < labels.size
    assert np.abs(ours.probabilities - probabilities).max() <= 1e-6


def test_integrated_gradients_complete_through_the_whole_pipeline(folder, volume):
    from TorchEsegetaLib.methods import ScoreModel
    from TorchEsegetaLib.methods.baselines import make_baseline
    from TorchEsegetaLib.models.loading import load_model
    from TorchEsegetaLib.runs.job import MethodSpec
    from TorchEsegetaLib.runs.runner import explain_volume, prepare_case
    from TorchEsegetaLib.targets.spec import TargetSpec

    model = load_model({"kind": "nnunet", "path": str(folder), "folds": [0, 1]})
    target = TargetSpec.parse("class:vessel")
    method = {"name": "integrated_gradients", "params": {"n_steps": 128}}
    result = explain_volume(volume, model, target, [MethodSpec.from_any(method)], device="cpu")
    case = prepare_case(volume, model, target, torch.device("cpu"))
    score = ScoreModel(case.forward, case.bound)
    with torch.no_grad():
        delta = float(score(case.x) - score(make_baseline("zero", case.x)))
    total = float(result.maps["integrated_gradients"].sum())
    # LeakyReLU kinks and the resampling's clip make the path integrand rough: the sum
    # converges as the steps grow (on this model 3.7% off at 64 steps, 1.0% at 128; with one
    # fold and no mirroring 19% at 16, 2.7% at 64, 0.2% at 256)
    assert abs(total - delta) <= 0.02 * abs(delta)


def test_maps_come_back_on_the_input_grid(folder, volume):
    import TorchEsegetaLib as te

    result = te.explain(
        volume,
        model={"kind": "nnunet", "path": str(folder), "folds": [0, 1], "explain_fold": 1},
        target="class:vessel",
        methods=["saliency"],
        device="cpu",
    )
    saliency = result.maps["saliency"]
    assert saliency.shape == SHAPE and np.isfinite(saliency).all()
    assert (saliency[:2] == 0).all()  # cropped away by nnU-Net: no influence
    assert (saliency[2:] != 0).mean() > 0.5
    assert any("fold 1 alone" in w for w in result.model.source["warnings"])


def test_layer_methods_are_refused_up_front(folder, volume, monkeypatch):
    """Before the segmentation (minutes on a real model), not after it."""
    import TorchEsegetaLib as te
    from TorchEsegetaLib.models import inference

    monkeypatch.setattr(inference, "segment", lambda *a, **k: pytest.fail("segmented first"))
    model = {"kind": "nnunet", "path": str(folder), "folds": [0, 1], "explain_fold": 0}
    with pytest.raises(UserInputError, match="gradcam cannot explain this model: nnU-Net's layers"):
        te.explain(volume, model=model, target="class:vessel", methods=["gradcam"], device="cpu")


def test_explained_function_is_the_segmentation_in_float32(folder, volume):
    from TorchEsegetaLib.models.loading import load_model

    model = load_model({"kind": "nnunet", "path": str(folder), "folds": [0, 1]})
    pipeline = model.network
    pipeline.bind_geometry(volume.geometry)
    x = torch.from_numpy(np.ascontiguousarray(volume.array[None]))
    with torch.no_grad():
        exact = pipeline(x)  # nnU-Net's numerics: float16 accumulation
        pipeline.freeze_statistics(x)
        smooth = pipeline(x)  # float32 throughout, the function explained
    difference = (exact - smooth).abs()[:, :, 2:]  # inside nnU-Net's crop
    # float16 rounding of logits of magnitude ~1 almost everywhere; more at the image's edges and
    # corners, where only the faint tails of the windows' Gaussians reach and their float16 sums
    # are subnormal (nnU-Net's own precision there)
    assert float(difference.median()) < 1e-3
    assert (exact.argmax(1) == smooth.argmax(1)).float().mean() >= 0.999


@pytest.mark.parametrize(
    ("shape", "spacing", "new_spacing", "order", "order_z"),
    [
        ((9, 11, 13), (1.0, 0.8, 0.9), (0.7, 0.7, 0.7), 3, 0),
        ((8, 11, 13), (3.0, 0.8, 0.9), (1.5, 0.7, 0.7), 3, 0),
        ((11, 7, 13), (0.8, 3.0, 0.9), (0.7, 1.5, 0.7), 3, 1),
        ((9, 11, 13), (0.7, 0.7, 0.7), (1.0, 0.8, 0.9), 1, 0),
    ],
)
def test_resampling_equals_nnunet(shape, spacing, new_spacing, order, order_z):
    from nnunetv2.preprocessing.resampling.default_resampling import (
        compute_new_shape,
        resample_data_or_seg_to_shape,
    )

    from TorchEsegetaLib.models.nnunet.resampling import plan_resampling

    data = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    kwargs = {"is_seg": False, "order": order, "order_z": order_z, "force_separate_z": None}
    new_shape = tuple(int(s) for s in compute_new_shape(shape, spacing, new_spacing))
    reference = resample_data_or_seg_to_shape(data, new_shape, spacing, new_spacing, **kwargs)
    resampling = plan_resampling(
        "resample_data_or_seg_to_shape", kwargs, shape, new_shape, spacing, new_spacing
    )
    ours = resampling(torch.from_numpy(data).double()[None])[0].float().numpy()
    # the same float64 sums in another order: equal up to a float32 rounding
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-7)
    # differentiable, and linear where the clip is inactive: the gradient is the operator
    x = torch.from_numpy(data).double()[None].requires_grad_(True)
    resampling(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("scheme", "use_mask"),
    [
        ("ZScoreNormalization", False),
        ("ZScoreNormalization", True),
        ("CTNormalization", False),
        ("RescaleTo01Normalization", False),
        ("NoNormalization", False),
        ("RGBTo01Normalization", False),
    ],
)
def test_normalization_equals_nnunet(scheme, use_mask):
    from nnunetv2.preprocessing.normalization import default_normalization_schemes as schemes

    from TorchEsegetaLib.models.nnunet.normalization import channel_normalization

    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, size=(6, 7, 8)).astype(np.float32)
    image[:2] = 0
    nonzero = image != 0
    properties = {"mean": 100.0, "std": 30.0, "percentile_00_5": 20.0, "percentile_99_5": 230.0}
    normalizer = getattr(schemes, scheme)(
        use_mask_for_norm=use_mask, intensityproperties=properties
    )
    reference = normalizer.run(image.copy(), np.where(nonzero, 0, -1))
    ours = channel_normalization(scheme, use_mask, properties, image, nonzero)(
        torch.from_numpy(image)
    )
    assert np.array_equal(ours.numpy(), reference)


def test_folder_detection_checkpoint_and_fold_choice(folder):
    from TorchEsegetaLib.models.loading import load_model, model_ref_from_string

    assert model_ref_from_string(str(folder)) == {"kind": "nnunet", "path": str(folder)}
    with pytest.raises(UserInputError, match="checkpoint_best.pth does not exist"):
        load_model(
            {
                "kind": "nnunet",
                "path": str(folder),
                "folds": [0],
                "checkpoint_name": "checkpoint_best.pth",
            }
        )
    with pytest.raises(UserInputError, match="fold_4"):
        load_model({"kind": "nnunet", "path": str(folder), "folds": [4]})
    with pytest.raises(UserInputError, match="explain_fold 1 is not among"):
        load_model({"kind": "nnunet", "path": str(folder), "folds": [0], "explain_fold": 1})
    model = load_model({"kind": "nnunet", "path": str(folder)})  # folds found like nnU-Net
    assert model.source["folds"] == [0, 1] and model.card.class_names == ["background", "vessel"]
    assert model.source["mirroring_axes"] == [0, 1, 2]


class _Payload:
    """Anything that is not a tensor, number or container: unpickling it could run code."""


def test_checkpoints_with_pickled_objects_are_refused(folder, tmp_path):
    from TorchEsegetaLib.models.nnunet.folder import load_checkpoint

    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=True)
    checkpoint["logging"] = {"ema_fg_dice": [np.float32(0.5)]}  # what training logs: allowed
    torch.save(checkpoint, tmp_path / "numpy.pth")
    assert load_checkpoint(tmp_path / "numpy.pth")["logging"]["ema_fg_dice"][0] == 0.5
    checkpoint["init_args"] = {"configuration": "3d_fullres", "payload": _Payload()}
    torch.save(checkpoint, tmp_path / "object.pth")
    with pytest.raises(UserInputError, match="weights_only=True refused"):
        load_checkpoint(tmp_path / "object.pth")


def test_missing_nnunetv2_is_one_line(monkeypatch, folder):
    from TorchEsegetaLib.models.loading import load_model

    monkeypatch.setitem(sys.modules, "nnunetv2", None)
    with pytest.raises(UserInputError, match=r'pip install "torchesegeta\[nnunet\]"'):
        load_model({"kind": "nnunet", "path": str(folder)})


def test_command_line_runs_an_nnunet_folder(folder, volume, tmp_path, capsys):
    import json

    from TorchEsegetaLib.cli import main
    from TorchEsegetaLib.io.images import read_volume, write_volume

    image = write_volume(volume.array[0], volume.geometry, tmp_path / "image.nii.gz")
    out = tmp_path / "run"
    arguments = ["explain", "--image", str(image), "--model", str(folder), "--folds", "0,1"]
    arguments += ["--explain-fold", "0", "--method", "saliency", "--out", str(out), "--quiet"]
    assert main(arguments + ["--no-figures"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["model"]["source"]["folds"] == [0, 1]
    assert record["model"]["source"]["explain_fold"] == 0
    saliency = read_volume(out / "saliency.nii.gz")
    assert saliency.geometry.mismatch(volume.geometry) is None
    # nnU-Net flags on another kind of model: one line, exit 2
    assert (
        main(["explain", "--image", str(image), "--folds", "0", "--out", str(tmp_path / "x")]) == 2
    )
    assert "apply to nnU-Net v2 model folders only" in capsys.readouterr().err


def _copy_with(folder, tmp_path, dataset=None, trainer=None):
    """A copy of the model folder with dataset.json's fields or the checkpoints' trainer changed."""
    import json
    import shutil

    from TorchEsegetaLib.models.nnunet.folder import load_checkpoint

    copy = shutil.copytree(folder, tmp_path / folder.name)
    if dataset is not None:
        data = json.loads((copy / "dataset.json").read_text())
        (copy / "dataset.json").write_text(json.dumps({**data, **dataset}))
    if trainer is not None:
        for path in copy.glob("fold_*/checkpoint_final.pth"):
            checkpoint = load_checkpoint(path)
            checkpoint["trainer_name"] = trainer
            torch.save(checkpoint, path)
    return copy


@pytest.mark.parametrize(
    "labels, expected",
    [
        ({"vessel": 1}, 'labels have no background; nnU-Net needs "background": 0'),
        ({"background": 1, "vessel": 2}, "labels have background 1; nnU-Net needs"),
        (["background", "vessel"], "labels must be an object of label names and values"),
    ],
    ids=["no-background", "background-not-0", "list"],
)
def test_dataset_json_labels_nnunet_cannot_take_are_one_line(
    folder, volume, tmp_path, capfd, labels, expected
):
    from TorchEsegetaLib.cli import main
    from TorchEsegetaLib.io.images import write_volume

    copy = _copy_with(folder, tmp_path, dataset={"labels": labels})
    image = write_volume(volume.array[0], volume.geometry, tmp_path / "image.nii.gz")
    code = main(["explain", "--image", str(image), "--model", str(copy), "--out",
                 str(tmp_path / "run"), "--quiet"])  # fmt: skip
    err = capfd.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{copy / 'dataset.json'}'s {expected}" in err and "fix the file" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("trainer", ["nnUNet_Primus_S_Trainer", "nnUNetTrainer_5epochs"])
def test_a_trainer_that_needs_an_absent_package_is_one_line(
    folder, volume, tmp_path, capfd, monkeypatch, trainer
):
    """nnU-Net imports every trainer module while it looks for one (its Primus trainers need
    timm, which this tool does not install): the missing package is named with the fix."""
    from TorchEsegetaLib.cli import main
    from TorchEsegetaLib.io.images import write_volume

    for name in [n for n in sys.modules if "primus" in n or n.split(".")[0] == "timm"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "timm", None)  # absent, whether installed or not
    copy = _copy_with(folder, tmp_path, trainer=trainer)
    image = write_volume(volume.array[0], volume.geometry, tmp_path / "image.nii.gz")
    code = main(["explain", "--image", str(image), "--model", str(copy), "--out",
                 str(tmp_path / "run"), "--quiet"])  # fmt: skip
    err = capfd.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "internal error" not in err, err
    assert trainer in err and "timm" in err and "pip install timm" in err, err
