"""Every CAM on every model kind but nnU-Net (Testing/test_nnunet_layers.py holds that one) and
every target kind, through the public API: a whole-volume MONAI network, the same network
behind MONAI's sliding windows, and a MONAI bundle that resamples its image and runs a
sliding-window inferer. Each map lies on the input grid; the maps' formulas and window blends
are checked in test_cams.py and test_layer_windows.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_UNET_KWARGS, tiny_unet
from test_bundles import ARGMAX, NET, bundle, load, post, sliding

import TorchEsegetaLib as te
from TorchEsegetaLib.io.volume import Geometry, Volume
from TorchEsegetaLib.methods import REGISTRY
from TorchEsegetaLib.models.loading import load_model
from TorchEsegetaLib.targets.spec import TargetSpec

CAMS = sorted(
    name
    for name, cls in REGISTRY.items()
    if cls.family == "layer" and (name.endswith("cam") or name == "gradcam_pp")
)
SIZE = 16
WINDOW = [8, 8, 8]


def models(root):
    torch.save(tiny_unet().state_dict(), root / "unet.pt")
    monai = {"kind": "monai", "network": "UNet", "kwargs": TINY_UNET_KWARGS}
    monai["checkpoint"] = str(root / "unet.pt")
    spacing = {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.0, 1.0]}
    scale = {"_target_": "ScaleIntensityd", "keys": "image"}
    folder, _ = bundle(
        root / "bundle", [*load(), spacing, scale], sliding(WINDOW), post(ARGMAX), "pt", 2
    )
    assert NET["channels"][-1] > 2  # a wide layer for the default
    return {
        "whole volume": load_model(monai),
        "sliding windows": load_model(monai, {"roi_size": WINDOW, "overlap": 0.5}),
        "bundle": load_model({"kind": "bundle", "path": str(folder)}),
    }


def targets():
    mask = np.zeros((SIZE,) * 3, np.uint8)
    mask[3:7, 4:9, 5:8] = 1
    return {
        "class": TargetSpec.parse("class"),
        "mask": TargetSpec(kind="mask", mask_array=mask),
        "roi": TargetSpec.parse("roi:2,3,4:7,8,9"),
        "voxel": TargetSpec.parse("voxel:1,2,1"),
    }


def signed(name: str) -> dict:
    return {"relu": False} if any(p.name == "relu" for p in REGISTRY[name].params) else {}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    rng = np.random.default_rng(0)
    image = (rng.random((SIZE,) * 3) * 100).astype(np.float32)
    return models(tmp_path_factory.mktemp("kinds")), Volume(image, Geometry((SIZE,) * 3))


def test_torchesegeta_methods_lists_the_cam_family_with_references(capsys):
    import json

    from TorchEsegetaLib.cli import main

    assert set(CAMS) == {"gradcam", "gradcam_pp", "guided_gradcam", "hirescam", "xgradcam"} | {
        "layercam",
        "eigencam",
        "eigengradcam",
        "scorecam",
        "ablationcam",
    }
    assert main(["methods", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    for name in CAMS:
        assert listed[name]["family"] == "layer" and listed[name]["reference"], name
        assert "layer" in {p["name"] for p in listed[name]["params"]}, name


@pytest.mark.parametrize("kind", ["whole volume", "sliding windows", "bundle"])
def test_every_cam_runs_on_the_model_kind_with_every_target_kind(case, kind):
    loaded, volume = case
    model = loaded[kind]
    for target_kind, target in targets().items():
        # signed maps: a ReLU may leave a map of a random network empty, a signed one is not
        methods = [{"name": name, "params": signed(name)} for name in CAMS]
        result = te.explain(volume, model=model, target=target, methods=methods, device="cpu")
        for method in result.methods:
            label = f"{method.spec.label} / {kind} / {target_kind}"
            assert method.status == "ok" and method.map is not None, label
            assert method.map.shape == volume.spatial_shape, label
            assert np.isfinite(method.map).all() and np.abs(method.map).max() > 0, label
            if kind == "sliding windows" and target_kind == "voxel":
                # only the windows that touch the voxel run: nothing reaches the far corner
                assert method.map[-4:, -4:, -4:].max() == 0 == method.map[-4:, -4:, -4:].min(), (
                    label
                )
