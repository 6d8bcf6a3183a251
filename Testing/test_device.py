"""The engine on an accelerator gives the CPU's results: every family of methods, the
window-by-window paths, reduced precision, memory measurement and a whole run.

Runs on CUDA when there is one (skipped otherwise). ``TORCHESEGETA_TEST_DEVICE=cpu`` runs the
same checks on the CPU against itself, which keeps this file working where no GPU is lent.
TF32 is off during the comparisons, so CUDA convolutions are compared at float32 accuracy.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import centre_box_target, close, tiny_input, tiny_unet

from TorchEsegetaLib.engine.context import Context, measure_sample_bytes
from TorchEsegetaLib.methods import ScoreModel, create_method
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import SegmentationForward
from TorchEsegetaLib.models.intensity import statistics_on

DEVICE = os.environ.get("TORCHESEGETA_TEST_DEVICE", "cuda")

pytestmark = pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(),
    reason="no CUDA device (TORCHESEGETA_TEST_DEVICE=cpu runs these checks on the CPU)",
)

METHODS = {
    "saliency": {},
    "integrated_gradients": {"n_steps": 8},
    "smoothgrad": {"samples": 4},
    "gradient_shap": {"n_samples": 4},
    "guided_backprop": {},
    "deeplift": {},
    "lrp": {},
    "gradcam": {},
    "layer_conductance": {"n_steps": 4},
    "occlusion": {"window": 8, "stride": 8},
    "feature_ablation": {"feature_size": 8},
}


@pytest.fixture(autouse=True)
def _float32_convolutions():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def on(device, forward, x, target):
    """The same forward, input and target on ``device``."""
    from TorchEsegetaLib.targets.bound import BoundTarget

    moved = SegmentationForward(forward.network, forward.card).to(device)
    if forward.frozen_statistics is not None:
        moved.frozen_statistics = statistics_on(forward.frozen_statistics, device)
    region = target.region.to(device)
    bound = BoundTarget(target.class_index, region, target.output, target.activation, "mean")
    return moved, x.to(device), bound


def run(name, forward, x, target, device):
    forward, x, target = on(device, forward, x, target)
    context = Context(device=device, max_batch=2, seed=1)
    return create_method(name, METHODS[name]).attribute(forward, x, target, context).cpu()


def whole_volume():
    card = ModelCard(intensity={"kind": "zscore"})
    forward = SegmentationForward(tiny_unet(), card).eval()
    x = tiny_input()
    forward.freeze_statistics(x)
    return forward, x, centre_box_target()


def sliding():
    card = ModelCard(intensity={"kind": "zscore"}, roi_size=(8, 8, 8), overlap=0.5, sw_batch_size=4)
    forward = SegmentationForward(tiny_unet(), card).eval()
    x = tiny_input()
    forward.freeze_statistics(x)
    return forward, x, centre_box_target()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_family_gives_the_cpu_map(name):
    forward, x, target = whole_volume()
    expected = run(name, forward, x, target, "cpu")
    got = run(name, forward, x, target, DEVICE)
    assert torch.isfinite(got).all()
    assert close(got, expected, rtol=1e-3, atol=1e-4), float((got - expected).abs().max())


@pytest.mark.parametrize("name", ["saliency", "deeplift", "lrp", "gradcam", "layer_conductance"])
def test_window_by_window_paths_give_the_cpu_map(name):
    forward, x, target = sliding()
    assert forward.windows_per_pass(x.shape[2:]) > 1
    expected = run(name, forward, x, target, "cpu")
    got = run(name, forward, x, target, DEVICE)
    assert close(got, expected, rtol=1e-3, atol=1e-4), float((got - expected).abs().max())


def test_reduced_precision_runs_and_stays_close():
    forward, x, target = whole_volume()
    precision = "float16" if DEVICE.startswith("cuda") else "bfloat16"
    full = run("saliency", forward, x, target, DEVICE)
    half_forward = SegmentationForward(forward.network, forward.card, precision=precision)
    half_forward.frozen_statistics = forward.frozen_statistics
    half = run("saliency", half_forward, x, target, DEVICE)
    assert torch.isfinite(half).all()
    assert np.corrcoef(full.flatten().numpy(), half.flatten().numpy())[0, 1] > 0.9


def test_sample_memory_is_measured_and_grows_with_the_input():
    forward, x, target = whole_volume()
    moved, small_x, bound = on(DEVICE, forward, x, target)
    small = measure_sample_bytes(ScoreModel(moved, bound), small_x)
    moved, big_x, bound = on(DEVICE, forward, tiny_input(size=32), centre_box_target(32))
    big = measure_sample_bytes(ScoreModel(moved, bound), big_x)
    assert 0 < small < big


def test_a_whole_run_on_the_device_matches_the_cpu_run():
    from TorchEsegetaLib.models.demo import demo_volume
    from TorchEsegetaLib.runs.api import explain

    volume, _ = demo_volume()
    methods = ["saliency", {"name": "integrated_gradients", "params": {"n_steps": 8}}]
    cpu = explain(volume, model="demo", methods=methods, device="cpu", target="voxel:32,32,32")
    device = explain(volume, model="demo", methods=methods, device=DEVICE, target="voxel:32,32,32")
    assert device.device.startswith(DEVICE.split(":")[0])
    for label, expected in cpu.maps.items():
        got = device.maps[label]
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() <= 1e-3 * scale + 1e-7, label
