"""Every refusal that the model, the methods and the target as asked decide comes before any
network pass: the runner's one preflight step asks each method whether it can explain the loaded
network (and the target and input whether they fit the card and the grid) before the volume is
segmented. The command line runs with the segmentation replaced by a failure, so a refusal said
after it would fail the test instead."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY_UNET_KWARGS, tiny_unet

from TorchEsegetaLib.cli import main
from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry

GEOMETRY = Geometry((16, 16, 16))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("case")
    torch.save(tiny_unet().state_dict(), root / "unet.pt")
    torch.jit.script(tiny_unet()).save(str(root / "unet.ts"))
    image = np.random.default_rng(0).random(GEOMETRY.size).astype(np.float32) * 100
    write_volume(image, GEOMETRY, root / "image.nii.gz")
    write_volume(np.zeros(GEOMETRY.size, np.uint8), GEOMETRY, root / "empty.nii.gz", dtype="uint8")
    return root


@pytest.fixture
def no_segmentation(monkeypatch):
    """Segmenting fails the test: whatever is refused must be refused before it."""
    from TorchEsegetaLib.models import inference

    def segment(*args, **kwargs):
        pytest.fail("the volume was segmented before the refusal")

    monkeypatch.setattr(inference, "segment", segment)


def args(case, out, model, method="saliency", target="roi:4,4,4:11,11,11", *extra):
    models = {
        "eager": [
            "--model",
            str(case / "unet.pt"),
            "--network",
            "UNet",
            "--network-kwargs",
            json.dumps(TINY_UNET_KWARGS),
        ],  # fmt: skip
        "torchscript": ["--model", str(case / "unet.ts")],
    }
    image = ["--image", str(case / "image.nii.gz")]
    return ["explain", *image, *models[model], "--method", method, "--target", target,
            "--out", str(out), "--quiet", *extra]  # fmt: skip


def refused(capfd, code, expected):
    err = capfd.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "internal error" not in err and expected in err, err
    return err


@pytest.mark.parametrize(
    "model, method, expected",
    [
        ("torchscript", "deeplift", "deeplift needs an eager PyTorch model"),
        ("torchscript", "deeplift_shap", "deeplift_shap needs an eager PyTorch model"),
        ("torchscript", "lrp", "lrp needs an eager PyTorch model"),
        ("torchscript", "guided_backprop", "guided_backprop needs an eager PyTorch model"),
        ("torchscript", "smoothgrad:base=deeplift", "deeplift needs an eager PyTorch model"),
        ("torchscript", "gradcam", "gradcam cannot explain this model: TorchScript models hide"),
        ("torchscript", "layer_deeplift", "layer_deeplift needs an eager PyTorch model"),
        ("eager", "gradcam:layer=decoder.nope", "the model has no layer named 'decoder.nope'"),
        (
            "eager",
            "feature_ablation:features=labels",
            "with features=labels needs a label map",
        ),
        (
            "eager",
            "kernel_shap:features=labels,feature_labels=/no/such/labels.nii.gz",
            "feature_labels /no/such/labels.nii.gz of method 'kernel_shap' does not exist",
        ),
    ],
)
def test_a_method_that_cannot_explain_the_model_is_refused_before_segmenting(
    case, tmp_path, capfd, no_segmentation, model, method, expected
):
    out = tmp_path / "run"
    refused(capfd, main(args(case, out, model, f"saliency,{method}")), expected)
    assert not out.exists()


@pytest.mark.parametrize(
    "method, expected",
    [
        ("gradcam", "gradcam cannot explain this target: an uncertainty target's members"),
        ("scorecam", "scorecam cannot explain this target: an uncertainty target's members"),
        ("lrp", "lrp cannot explain this target: LRP passes a class logit's relevance"),
    ],
)
def test_a_method_that_cannot_explain_an_uncertainty_target_is_refused_before_segmenting(
    case, tmp_path, capfd, no_segmentation, method, expected
):
    out = tmp_path / "run"
    arguments = args(case, out, "eager", f"saliency,{method}", "uncertainty:roi:4,4,4:11,11,11")
    refused(capfd, main([*arguments, "--uncertainty", "tta"]), expected)
    assert not out.exists()


def test_every_refused_method_is_named_in_the_one_line(case, tmp_path, capfd, no_segmentation):
    code = main(args(case, tmp_path / "run", "torchscript", "saliency,lrp,gradcam,deeplift"))
    err = refused(capfd, code, "lrp needs an eager PyTorch model")
    assert err.strip().endswith("(also refused: gradcam, deeplift)")  # the others by name


@pytest.mark.parametrize(
    "target, expected",
    [
        ("mask:{case}/empty.nii.gz", "the mask is empty"),
        ("mask:{case}/image.nii.gz:7", "holds non-integer values"),
        ("roi:40,40,40:50,50,50", "lies outside the image"),
        ("voxel:99,0,0", "lies outside the image"),
        ("class:tumour", "unknown class 'tumour'"),
        ("class:5", "class 5 is out of range"),
        # object targets: what needs no prediction is asked before it too
        ("component:99,0,0", "lies outside the image"),
        ("component:3,3,3:1,1,1", "needs one position"),
        ("boundary:tumour", "unknown class 'tumour'"),
        ("contrast:1,1", "two different classes"),
        ("contrast:1,tumour", "unknown class 'tumour'"),
    ],
)
def test_a_target_that_cannot_be_explained_is_refused_before_segmenting(
    case, tmp_path, capfd, no_segmentation, target, expected
):
    code = main(args(case, tmp_path / "run", "eager", target=target.format(case=case)))
    refused(capfd, code, expected)


def test_inputs_that_do_not_fit_the_card_are_refused_before_segmenting(
    case, tmp_path, capfd, no_segmentation
):
    two = args(case, tmp_path / "run", "eager") + ["--image", str(case / "image.nii.gz")]
    refused(capfd, main(two), "the model expects 1 input channel(s) but got 2")


def test_a_parameter_out_of_range_is_refused_before_the_model_is_loaded(
    case, tmp_path, capfd, monkeypatch
):
    from TorchEsegetaLib.models import loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    code = main(args(case, tmp_path / "run", "eager", "integrated_gradients:n_steps=0"))
    refused(capfd, code, "'n_steps' of method integrated_gradients must be at least 1")


def test_the_preflight_asks_the_network_not_its_kind(case, monkeypatch):
    """A network that says its layers cannot be mapped (``layer_maps_refused``: one that tiles
    or resamples its input before its layers without saying how to bring maps back) has layer methods refused before segmenting and every other method run; the
    same network without it runs the layer method too."""
    import TorchEsegetaLib as te
    from TorchEsegetaLib.errors import UserInputError
    from TorchEsegetaLib.models import inference
    from TorchEsegetaLib.models.loading import load_model

    reference = {"kind": "monai", "network": "UNet", "kwargs": TINY_UNET_KWARGS}
    model = load_model({**reference, "checkpoint": str(case / "unet.pt")})
    calls = []
    real_segment = inference.segment
    monkeypatch.setattr(
        inference, "segment", lambda *a, **k: calls.append(1) or real_segment(*a, **k)
    )

    def explain(method):
        roi = "roi:4,4,4:11,11,11"
        return te.explain(case / "image.nii.gz", model=model, target=roi, methods=[method])

    model.network.layer_maps_refused = "its layers see another grid; use a gradient method"
    with pytest.raises(UserInputError, match="gradcam cannot explain this model: its layers"):
        explain("gradcam")
    assert calls == []
    assert np.abs(explain("saliency").maps["saliency"]).sum() > 0 and calls == [1]
    del model.network.layer_maps_refused
    assert explain("gradcam").methods[0].status == "ok" and calls == [1, 1]


def test_methods_that_can_run_pass_the_preflight_on_a_torchscript_model(case, tmp_path):
    out = tmp_path / "run"
    assert main(args(case, out, "torchscript", "saliency,integrated_gradients:n_steps=4")) == 0
    record = json.loads((out / "run.json").read_text())
    assert [m["status"] for m in record["methods"]] == ["ok", "ok"]
