"""The cost estimate: each method's declared passes are the passes it makes, the run says what
each method will cost before any method runs, warns about long ones with cheaper settings, and
run.json keeps the estimate beside the actual time."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from catalog import FAST_PARAMS
from helpers import centre_box_target, tiny_input, tiny_unet

from TorchEsegetaLib.engine.context import Context
from TorchEsegetaLib.methods import REGISTRY, create_method
from TorchEsegetaLib.methods.base import Passes
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import SegmentationForward
from TorchEsegetaLib.runs.cost import PassTimes, duration, estimate


class CountingNetwork(torch.nn.Module):
    """Counts the samples the network runs on, and those a backward pass goes through."""

    def __init__(self, network):
        super().__init__()
        self.network = network
        self.calls = 0
        self.backward = 0

    def forward(self, x):
        count = x.shape[0]
        self.calls += count
        out = self.network(x)
        if out.requires_grad:

            def backward(_grad, count=count):
                self.backward += count

            out.register_hook(backward)
        return out


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_method_declares_the_passes_it_makes(name):
    network = CountingNetwork(tiny_unet())
    forward = SegmentationForward(network, ModelCard())
    method = create_method(name, FAST_PARAMS.get(name, {}))
    x, target = tiny_input(), centre_box_target()
    method.preflight(forward, x, target)
    network.calls = network.backward = 0
    context = Context(max_batch=2)
    method.attribute(forward, x, target, context)
    declared = method.passes(tuple(x.shape[1:]), forward)
    counted = Passes(network.calls - network.backward, network.backward)
    if method.passes_are_bound:  # declared before the run: a bound; the run records its count
        recorded = Passes(context.facts["passes"], context.facts.get("backward_passes", 0))
        assert recorded == counted
        assert counted.forward <= declared.forward and counted.backward <= declared.backward
    elif name == "layer_conductance":  # one more point per batch of path points: 2 batches here
        assert counted == declared + Passes(backward=1)
    else:
        assert counted == declared


def test_default_occlusion_of_a_brain_volume_is_warned_about_with_cheaper_settings():
    occlusion = create_method("occlusion")
    passes = occlusion.passes((1, 181, 217, 181))
    assert passes == Passes(forward=22 * 27 * 22 + 1)  # window 16, stride 8, flush last boxes
    times = PassTimes()
    times.record("forward", 1, 0.5)
    times.record("forward", 4, 1.2)
    found = estimate("occlusion", occlusion, passes, times, 600.0, ["a GPU (--device cuda)"])
    assert found.seconds == pytest.approx(13069 * 0.3)
    assert found.too_long
    warning = found.warning()
    assert "occlusion.window=32" in warning and "supervoxels" in warning and "GPU" in warning
    assert "1 h 5 min" in warning and "10 min" in warning


def test_pass_times_scale_with_the_measured_batch():
    times = PassTimes()
    times.record("backward", 1, 2.0)
    times.record("backward", 4, 4.0)
    assert times.of("backward", 1) == 2.0
    assert times.of("backward", 32) == pytest.approx(32.0)
    assert times.of("forward", 10) == 0.0 and times.of("backward", 0) == 0.0
    assert [duration(s) for s in (0.25, 42, 600, 3 * 3600 + 300)] == [
        "0.2 s",
        "42 s",
        "10 min",
        "3 h 5 min",
    ]


def test_the_estimate_comes_before_any_method_and_run_json_keeps_it(tmp_path):
    from helpers import tiny_unet_job

    from TorchEsegetaLib.runs.runner import run_job

    methods = ["saliency", {"name": "occlusion", "params": {"window": 8}}]
    job = tiny_unet_job(tmp_path, methods, warn_after_s=0)
    events = []
    run_job(job, progress=events.append)
    stages = [e["stage"] for e in events]
    assert "estimate" in stages and stages.index("estimate") < stages.index("method")
    lines = [e["message"] for e in events if e["stage"] == "estimate"]
    assert any(line.startswith("estimate occlusion: 9 forward passes, about") for line in lines)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    for method in record["methods"]:
        assert method["estimate"]["seconds"] > 0 and method["seconds"] > 0
    assert record["methods"][0]["estimate"]["backward_passes"] == 1
    assert any("occlusion would take" in w and "cheaper" in w for w in record["warnings"])


def test_the_cli_warns_before_the_run_even_when_quiet(tmp_path, capsys):
    from TorchEsegetaLib.cli import main
    from TorchEsegetaLib.io.images import write_volume
    from TorchEsegetaLib.io.volume import Geometry

    torch.jit.script(tiny_unet()).save(str(tmp_path / "unet.ts"))
    image = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32) * 100
    write_volume(image, Geometry((16, 16, 16)), tmp_path / "image.nii.gz")
    args = [
        "explain",
        "--image",
        str(tmp_path / "image.nii.gz"),
        "--model",
        str(tmp_path / "unet.ts"),
    ]
    code = main(
        [*args, "--out", str(tmp_path / "run"), "--quiet", "--no-figures", "--warn-after", "0"]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: saliency would take about" in err and "a GPU (--device cuda)" in err


def test_a_windowed_model_is_timed_on_one_window_batch_not_a_whole_pass():
    from TorchEsegetaLib.runs.cost import measure_window_batch

    network = CountingNetwork(tiny_unet())
    card = ModelCard(in_channels=1, out_channels=2, roi_size=(8, 8, 8), sw_batch_size=2)
    forward = SegmentationForward(network, card)
    x, target = tiny_input(), centre_box_target()  # 16^3: 27 windows of 8^3, 14 batches
    times = PassTimes()
    sample_bytes = measure_window_batch(forward, x, target, times)
    # one batch of two windows without gradients, once with its backward pass, once more to
    # count what autograd saves (the memory): 3 batches of the 14 of a pass
    assert (network.calls, network.backward) == (6, 2)
    assert times.linear and sample_bytes is not None and sample_bytes > 0
    forward_pass, backward_pass = times.of("forward", 1), times.of("backward", 1)
    assert 0 < forward_pass < backward_pass
    assert times.of("backward", 8) == pytest.approx(8 * backward_pass)  # one example at a time
    # a whole-volume model is measured the usual way
    assert (
        measure_window_batch(SegmentationForward(tiny_unet(), ModelCard()), x, target, times)
        is None
    )
