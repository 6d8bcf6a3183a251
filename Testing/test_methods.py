"""Every first-set method equals captum's implementation on the same model, input and target."""

from __future__ import annotations

import pytest
import torch
from captum.attr import (
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from helpers import ScoreModule, centre_box_target, close, ours, tiny_input, tiny_unet

from TorchEsegetaLib.engine.context import CancelToken, Context
from TorchEsegetaLib.errors import CancelledError, UserInputError
from TorchEsegetaLib.methods import (
    REGISTRY,
    ScoreModel,
    create_method,
    default_layer,
    get_method,
    list_layers,
    trace_layers,
)


def test_saliency_matches_captum(setup):
    net, x, target, score = setup
    assert close(ours("saliency", net, x, target), Saliency(score).attribute(x, abs=True))
    assert close(
        ours("saliency", net, x, target, abs=False), Saliency(score).attribute(x, abs=False)
    )


def test_input_x_gradient_matches_captum(setup):
    net, x, target, score = setup
    assert close(ours("input_x_gradient", net, x, target), InputXGradient(score).attribute(x))


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_matches_captum(setup, rule):
    net, x, target, score = setup
    got = ours("integrated_gradients", net, x, target, n_steps=12, method=rule)
    ref = IntegratedGradients(score).attribute(
        x, baselines=torch.zeros_like(x), n_steps=12, method=rule
    )
    assert close(got, ref)


def test_integrated_gradients_result_does_not_depend_on_batch_size(setup):
    net, x, target, _ = setup
    a = ours("integrated_gradients", net, x, target, max_batch=1, n_steps=8)
    b = ours("integrated_gradients", net, x, target, max_batch=8, n_steps=8)
    assert close(a, b)


def test_integrated_gradients_completeness(setup):
    # Instance normalisation makes a network scale-invariant, so its score jumps at the zero
    # baseline and no path method can be complete; batch normalisation (eval) is affine.
    _, x, target, _ = setup
    net = tiny_unet(in_channels=x.shape[1], norm="BATCH")
    score = ScoreModel(net, target)
    for baseline in ("zero", "min", "mean", "blur"):
        attribution = ours("integrated_gradients", net, x, target, n_steps=64, baseline=baseline)
        from TorchEsegetaLib.methods.baselines import make_baseline

        with torch.no_grad():
            delta = score(x) - score(make_baseline(baseline, x))
        assert abs(float(attribution.sum() - delta)) <= 0.01 * abs(float(delta)) + 1e-6, baseline


def test_guided_backprop_matches_captum_and_restores_model(setup):
    net, x, target, score = setup
    got = ours("guided_backprop", net, x, target)
    ref = GuidedBackprop(ScoreModule(net, target)).attribute(x)
    assert close(got, ref)
    # Hooks removed: a plain gradient afterwards is the ordinary one.
    assert close(
        ours("saliency", net, x, target, abs=False), Saliency(score).attribute(x, abs=False)
    )
    assert not any(m._backward_hooks for m in net.modules())


def test_guided_backprop_differs_from_gradient(setup):
    net, x, target, _ = setup
    assert not close(
        ours("guided_backprop", net, x, target), ours("saliency", net, x, target, abs=False)
    )


def test_gradcam_matches_captum(setup):
    net, x, target, score = setup
    layer_name = list_layers(net)[-3]["name"]
    layer = dict(net.named_modules())[layer_name]
    got = ours("gradcam", net, x, target, layer=layer_name, relu=False)
    cam = LayerGradCam(score, layer).attribute(x, relu_attributions=False)
    ref = LayerAttribution.interpolate(cam, x.shape[2:], interpolate_mode="trilinear")
    assert got.shape == x.shape
    for channel in range(x.shape[1]):
        assert close(got[:, channel : channel + 1], ref)


def test_gradcam_default_layer_is_the_last_wide_feature_map_after_normalisation(setup):
    net, x, target, _ = setup
    traced = trace_layers(net, x)
    default = default_layer(net, x, out_channels=2)
    assert default == [t["name"] for t in traced if t["channels"] > 2][-1]
    got = ours("gradcam", net, x, target, relu=False)
    assert got.shape == x.shape and torch.isfinite(got).all()
    # A convolution feeding an instance normalisation has gradients with zero spatial mean,
    # so its Grad-CAM vanishes: the default must not be such a layer.
    pre_norm = next(
        a["name"]
        for a, b in zip(traced, traced[1:])
        if a["type"] == "Conv3d" and b["type"] == "InstanceNorm3d" and a["channels"] > 2
    )
    vanishing = ours("gradcam", net, x, target, relu=False, layer=pre_norm)
    assert vanishing.abs().max() < 1e-4 * got.abs().max()


def test_unknown_layer_is_a_clear_error(setup):
    net, x, target, _ = setup
    with pytest.raises(UserInputError, match="no layer named 'nope'"):
        ours("gradcam", net, x, target, layer="nope")


def test_occlusion_matches_captum(setup):
    net, x, target, score = setup
    channels = x.shape[1]
    got = ours("occlusion", net, x, target, window=8, stride=4, max_batch=5)
    ref = Occlusion(score).attribute(
        x,
        sliding_window_shapes=(channels, 8, 8, 8),
        strides=(channels, 4, 4, 4),
        baselines=0.0,
        perturbations_per_eval=7,
    )
    assert close(got, ref)


def test_occlusion_covers_edges_when_stride_does_not_divide():
    net, x, target = tiny_unet(), tiny_input(size=18), centre_box_target(18)
    got = ours("occlusion", net, x, target, window=8, stride=8)
    assert torch.isfinite(got).all() and (got[..., -1] != 0).any()


# captum's noise tunnel takes one standard deviation per input tensor, ours one per channel: the
# two agree on one channel only.
@pytest.mark.parametrize("setup", [1], ids=["1ch"], indirect=True)
def test_smoothgrad_matches_captum_noise_tunnel(setup):
    net, x, target, score = setup
    level = 0.05
    std = level * float(x.max() - x.min())
    got = create_method(
        "smoothgrad", {"samples": 5, "noise_level": level, "base_abs": True}
    ).attribute(net, x, target, Context(max_batch=2, seed=7))
    torch.manual_seed(7)
    ref = NoiseTunnel(Saliency(score)).attribute(
        x, nt_type="smoothgrad", nt_samples=5, nt_samples_batch_size=1, stdevs=std, abs=True
    )
    assert close(got, ref)


@pytest.mark.parametrize(
    "base", ["saliency", "input_x_gradient", "guided_backprop", "integrated_gradients"]
)
def test_smoothgrad_without_noise_equals_its_base(setup, base):
    net, x, target, _ = setup
    params = (
        {"abs": False}
        if base == "saliency"
        else {"n_steps": 4}
        if base == "integrated_gradients"
        else {}
    )
    plain = ours(base, net, x, target, **params)
    prefixed = {f"base_{k}": v for k, v in params.items()}
    smoothed = create_method(
        "smoothgrad", {"base": base, "samples": 1, "noise_level": 0.0, **prefixed}
    ).attribute(net, x, target, Context())
    assert close(smoothed, plain)


def test_vargrad_is_non_negative_and_smoothgrad_sq_dominates(setup):
    net, x, target, _ = setup
    common = {"samples": 4, "noise_level": 0.1}
    var = create_method("smoothgrad", {**common, "nt_type": "vargrad"}).attribute(
        net, x, target, Context(seed=1)
    )
    sq = create_method("smoothgrad", {**common, "nt_type": "smoothgrad_sq"}).attribute(
        net, x, target, Context(seed=1)
    )
    assert (var >= -1e-6 * sq.max()).all() and (sq + 1e-9 >= var).all()


def test_parameters_are_validated_with_clear_messages():
    with pytest.raises(UserInputError, match="n_steps.*at least 1"):
        create_method("integrated_gradients", {"n_steps": 0})
    with pytest.raises(UserInputError, match="unknown parameter"):
        create_method("saliency", {"steps": 3})
    with pytest.raises(UserInputError, match="one of"):
        create_method("integrated_gradients", {"baseline": "noise"})
    assert create_method("integrated_gradients", {"n_steps": "64"}).config["n_steps"] == 64
    assert create_method("saliency", {"abs": "false"}).config["abs"] is False
    with pytest.raises(UserInputError, match="n_steps.*at least 1"):
        create_method("smoothgrad", {"base": "integrated_gradients", "base_n_steps": 0})
    with pytest.raises(UserInputError, match="did you mean integrated_gradients"):
        get_method("integrated_gradient")


def test_every_method_declares_its_documentation():
    for name, cls in REGISTRY.items():
        info = cls.describe()
        assert info["name"] == name and info["summary"] and info["cost"] and info["reference"]
        for param in info["params"]:
            assert param["help"] and "default" in param
            cls(**{param["name"]: param["default"]})


def test_cancel_token_stops_a_method(setup):
    net, x, target, _ = setup
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        create_method("integrated_gradients").attribute(net, x, target, Context(cancel=token))


def test_progress_is_reported_up_to_one(setup):
    net, x, target, _ = setup
    seen = []
    create_method("integrated_gradients", {"n_steps": 6}).attribute(
        net, x, target, Context(max_batch=2, progress=lambda f, m: seen.append(f))
    )
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and len(seen) == 3


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory (simulated)"),
        # what the CPU allocator raises on Linux when an allocation fails
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 40000000000000 bytes. Error code 12"
        ),
    ],
    ids=["cuda", "cpu"],
)
def test_out_of_memory_halves_the_batch(setup, monkeypatch, error):
    net, x, target, _ = setup
    calls = []
    original = net.forward

    def flaky(inputs):
        calls.append(inputs.shape[0])
        if inputs.shape[0] > 2:
            raise error
        return original(inputs)

    monkeypatch.setattr(net, "forward", flaky)
    context = Context(max_batch=8)
    got = create_method("integrated_gradients", {"n_steps": 8}).attribute(net, x, target, context)
    monkeypatch.setattr(net, "forward", original)
    ref = ours("integrated_gradients", net, x, target, n_steps=8)
    assert close(got, ref) and max(calls) == 8 and any("reduced to 2" in n for n in context.notes)
