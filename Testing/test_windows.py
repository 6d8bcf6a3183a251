"""Sliding windows: our plan reproduces MONAI's inferer; restricted to a local target it gives the
same score and the same gradient (zero outside the touched windows); gradients computed window
by window equal differentiating through the whole sliding-window inference."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from helpers import TINY_UNET_KWARGS, tiny_unet
from monai.inferers import sliding_window_inference

from TorchEsegetaLib.engine.windows import WindowPlan
from TorchEsegetaLib.methods import ScoreModel, input_gradients
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import SegmentationForward
from TorchEsegetaLib.targets.bound import BoundTarget


def card(mode="constant", roi=(16, 16, 16), overlap=0.25, intensity=None):
    return ModelCard(
        in_channels=1,
        out_channels=2,
        roi_size=roi,
        overlap=overlap,
        sw_mode=mode,
        sw_batch_size=3,
        size_divisible=2,
        intensity=intensity or {"kind": "none"},
    )


def volume(shape=(40, 36, 30), seed=0):
    return torch.rand((1, 1, *shape), generator=torch.Generator().manual_seed(seed)) * 50


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("shape", [(40, 36, 30), (12, 20, 16)])
def test_plan_reproduces_monai_sliding_window_inference(mode, shape):
    net, x = tiny_unet(), volume(shape)
    with torch.no_grad():
        ours = WindowPlan(shape, (16, 16, 16), 0.25, mode).infer(x, net, batch_size=4)
        reference = sliding_window_inference(x, (16, 16, 16), 4, net, overlap=0.25, mode=mode)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def local_target(shape, box, output="logits"):
    region = torch.zeros(shape, dtype=torch.bool)
    region[box] = True
    return BoundTarget(1, region, output, "softmax", "mean")


def full_autograd_gradient(forward, target, x):
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        score = target(forward(x))
        (grad,) = torch.autograd.grad(score.sum(), x)
    return score.detach(), grad


@pytest.mark.parametrize("output", ["logits", "probabilities"])
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_windowed_gradients_equal_autograd_through_the_inferer(output, mode):
    net, x = tiny_unet(), volume()
    forward = SegmentationForward(
        net, card(mode, intensity={"kind": "zscore", "channel_wise": True})
    )
    forward.freeze_statistics(x)
    target = local_target(x.shape[2:], (slice(10, 30), slice(5, 20), slice(3, 25)), output)
    scores, grad = input_gradients(ScoreModel(forward, target), x)
    # Reference: plain autograd through MONAI's own inferer and the same preprocessing.
    [(mean, std)] = forward.frozen_statistics

    def reference_forward(v):
        return sliding_window_inference(
            (v - mean) / std, (16, 16, 16), 3, net, overlap=0.25, mode=mode
        )

    ref_scores, ref_grad = full_autograd_gradient(reference_forward, target, x)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-6)
    scale = ref_grad.abs().max()
    assert ((grad - ref_grad).abs().max() / scale) < 1e-5


def test_restricting_to_a_local_target_keeps_the_score_and_the_gradient_exactly():
    net, x = tiny_unet(), volume((64, 64, 40))
    forward = SegmentationForward(net, card())
    box = (slice(40, 46), slice(20, 26), slice(16, 22))
    target = local_target(x.shape[2:], box)
    full_scores, full_grad = input_gradients(ScoreModel(forward, target), x)
    region = np.zeros(x.shape[2:], dtype=bool)
    region[box] = True
    forward.restrict_to(region)
    scores, grad = input_gradients(ScoreModel(forward, target), x)
    plan = forward.plan(x)
    assert plan.fraction < 0.5, plan.fraction
    torch.testing.assert_close(scores, full_scores, rtol=1e-6, atol=1e-6)
    assert ((grad - full_grad).abs().max() / full_grad.abs().max()) < 1e-5
    support = torch.from_numpy(forward.input_support(x.shape[2:]))
    assert support.sum() < support.numel()
    assert (full_grad[0, 0][~support] == 0).all() and (grad[0, 0][~support] == 0).all()
    with torch.no_grad():
        restricted_logits = forward(x)
        forward.restrict_to(None)
        all_logits = forward(x)
    torch.testing.assert_close(
        restricted_logits[(0, 1, *box)], all_logits[(0, 1, *box)], rtol=1e-5, atol=1e-6
    )


def test_explaining_a_local_target_of_a_sliding_window_model_runs_only_its_windows(tmp_path):
    import TorchEsegetaLib as te
    from TorchEsegetaLib.io.volume import Geometry, Volume

    torch.save(tiny_unet().state_dict(), tmp_path / "unet.pt")
    model = {
        "kind": "monai",
        "network": "UNet",
        "kwargs": TINY_UNET_KWARGS,
        "checkpoint": str(tmp_path / "unet.pt"),
    }
    image = Volume(volume((64, 48, 40))[0].numpy(), Geometry((64, 48, 40), (0.8, 0.8, 1.2)))
    sliding = {"roi_size": [16, 16, 16], "overlap": 0.25, "sw_batch_size": 4}
    result = te.explain(
        image,
        model=model,
        card=sliding,
        target="roi:40,20,16:45,25,21",
        methods=["saliency", {"name": "occlusion", "params": {"window": 8, "stride": 8}}],
        out=tmp_path / "run",
    )
    windows = result.target["windows"]
    assert 0 < windows["used"] < windows["total"] / 4
    whole = te.explain(
        image,
        model=model,
        card={"roi_size": None},
        target="roi:40,20,16:45,25,21",
        methods=["saliency"],
    )
    assert result.maps["saliency"].shape == whole.maps["saliency"].shape
    outside = result.maps["saliency"] == 0
    assert outside.mean() > 0.5
    import json

    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["target"]["windows"] == windows


def test_occlusion_of_a_local_target_skips_boxes_outside_its_windows_with_an_identical_map():
    from TorchEsegetaLib.engine.context import Context
    from TorchEsegetaLib.methods import create_method

    net, x = tiny_unet(), volume((64, 48, 32))
    box = (slice(40, 46), slice(20, 26), slice(10, 16))
    target = local_target(x.shape[2:], box)
    occlusion = create_method("occlusion", {"window": 8, "stride": 8})
    whole = SegmentationForward(net, card())
    reference = occlusion.attribute(whole, x, target, Context())
    region = np.zeros(x.shape[2:], dtype=bool)
    region[box] = True
    local = SegmentationForward(net, card())
    local.restrict_to(region)
    context = Context()
    ours = occlusion.attribute(local, x, target, context)
    assert ((ours - reference).abs().max() / reference.abs().max()) < 1e-5
    assert "were not evaluated" in context.notes[0]
    skipped, total = (int(v) for v in context.notes[0].split()[:3:2])
    assert skipped > total / 2


def _one_long_pass():
    """One example whose single gradient pass runs 27 windows, 4 per batch (7 batches)."""
    forward = SegmentationForward(
        tiny_unet(), ModelCard(roi_size=(8, 8, 8), overlap=0.5, sw_batch_size=4)
    ).eval()
    x = volume((16, 16, 16))
    region = torch.zeros((16, 16, 16), dtype=torch.bool)
    region[4:12, 4:12, 4:12] = True
    return forward, x, BoundTarget(1, region, "logits", "softmax", "mean")


@pytest.mark.parametrize("name", ["saliency", "deeplift", "lrp", "gradcam"])
def test_one_pass_over_many_windows_moves_the_progress_bar(name):
    from TorchEsegetaLib.engine.context import Context
    from TorchEsegetaLib.methods import create_method

    forward, x, target = _one_long_pass()
    seen = []
    create_method(name, {}).attribute(
        forward, x, target, Context(progress=lambda f, m: seen.append(f))
    )
    # one example, one batch: without window reports the bar would jump from 0 to 1
    assert len([f for f in seen if 0 < f < 1]) >= 5
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)


def test_cancel_and_budget_stop_a_pass_between_window_batches():
    from TorchEsegetaLib.engine.context import CancelToken, Context
    from TorchEsegetaLib.errors import BudgetExceededError, CancelledError
    from TorchEsegetaLib.methods import create_method

    forward, x, target = _one_long_pass()
    calls = []
    network = forward.network
    handle = network.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        token = CancelToken()

        def cancel_soon(fraction, _message):
            if fraction > 0.2:
                token.cancel()

        with pytest.raises(CancelledError):
            create_method("saliency", {}).attribute(
                forward, x, target, Context(progress=cancel_soon, cancel=token)
            )
        assert 0 < len(calls) < 7  # stopped inside the pass, not after it
        calls.clear()

        def slow_progress(_fraction, _message):
            time.sleep(0.3)  # each window batch "takes" 0.3 s: the budget ends mid-pass

        with pytest.raises(BudgetExceededError):
            create_method("saliency", {}).attribute(
                forward, x, target, Context(progress=slow_progress, budget_s=0.5)
            )
        assert 0 < len(calls) < 7
    finally:
        handle.remove()
