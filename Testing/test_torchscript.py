"""TorchScript models end to end on the command line, with the batch size tuned (no --max-batch):
every method family once, the same maps as the eager network, and the methods that need
module hooks refused before anything runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import TINY_UNET_KWARGS, tiny_unet

from TorchEsegetaLib.cli import main
from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry

METHODS = {
    "gradient": ["saliency", "integrated_gradients", "smoothgrad", "gradient_shap"],
    "perturbation": ["occlusion", "feature_ablation"],
}
PARAMS = [
    "integrated_gradients.n_steps=4",
    "smoothgrad.samples=2",
    "gradient_shap.n_samples=2",
    "occlusion.window=8",
]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchscript")
    network = tiny_unet()
    torch.jit.script(network).save(str(root / "unet.ts"))
    torch.save(network.state_dict(), root / "unet.pt")
    geometry = Geometry((18, 16, 16), (0.8, 1.0, 1.2))
    image = np.random.default_rng(0).random(geometry.size).astype(np.float32) * 100
    write_volume(image, geometry, root / "image.nii.gz")
    return root


def explain(case, out, model_args, methods):
    params = [arg for p in PARAMS if p.split(".")[0] in methods for arg in ("--param", p)]
    return main(
        [
            "explain",
            "--image",
            str(case / "image.nii.gz"),
            *model_args,
            "--method",
            ",".join(methods),
            *params,
            "--out",
            str(out),
            "--quiet",
            "--no-figures",
        ]
    )


def test_every_method_family_runs_on_torchscript_with_tuned_batches(case, tmp_path):
    methods = METHODS["gradient"] + METHODS["perturbation"]
    scripted, eager = tmp_path / "scripted", tmp_path / "eager"
    assert explain(case, scripted, ["--model", str(case / "unet.ts")], methods) == 0
    network = ["--network", "UNet", "--network-kwargs", json.dumps(TINY_UNET_KWARGS)]
    assert explain(case, eager, ["--model", str(case / "unet.pt"), *network], methods) == 0

    record = json.loads((scripted / "run.json").read_text())
    assert record["status"] == "complete" and record["job"]["max_batch"] is None
    for method in methods:
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(scripted / f"{method}.nii.gz")))
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(eager / f"{method}.nii.gz")))
        assert np.abs(ours).sum() > 0, method
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6 * np.abs(reference).max())


@pytest.mark.parametrize(
    "method, expected",
    [
        ("gradcam", "TorchScript models hide their layers"),
        ("layer_conductance", "TorchScript models hide their layers"),
        ("guided_backprop", "refuses module hooks"),
        ("deeplift", "refuses module hooks"),
        ("lrp", "refuses module hooks"),
    ],
)
def test_methods_that_need_module_hooks_say_so_up_front(case, tmp_path, capsys, method, expected):
    out = tmp_path / "run"
    code = explain(case, out, ["--model", str(case / "unet.ts")], ["saliency", method])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
