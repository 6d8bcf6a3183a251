"""Layer methods: each equals captum's Layer* class (+ LayerAttribution.interpolate) on the same
model, input, target and layer; Grad-CAM++ (no captum counterpart) against its formula on a
hand-built case and MONAI's GradCAMpp where that one applies; channel reductions; layer
validation; hooks and module surgery undone after success and after an exception."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.attr import (
    GuidedGradCam,
    InternalInfluence,
    LayerActivation,
    LayerAttribution,
    LayerConductance,
    LayerDeepLift,
    LayerGradCam,
    LayerGradientShap,
    LayerGradientXActivation,
)
from catalog import make_network
from helpers import (
    KnownLayerNet,
    ScoreModule,
    centre_box_target,
    close,
    ours,
    tiny_input,
    tiny_unet,
)

from TorchEsegetaLib.engine.context import Context
from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.methods import REGISTRY, ScoreModel, create_method
from TorchEsegetaLib.methods.layer_reference import LayerGradientShap as OurLayerGradientShap
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import SegmentationForward
from TorchEsegetaLib.targets.bound import BoundTarget

SIZE = 8  # voxels per axis: the layers compared are 4^3, upsampled x2
LAYER_METHODS = sorted(name for name, cls in REGISTRY.items() if cls.family == "layer")
#: (network, input channels, layer): a MONAI UNet's skip concatenation (12 channels) and the
#: ConvTranspose3d + BatchNorm + GroupNorm net's encoder output (8 channels), both at half size.
NETS = [("unet", 2, "model.1"), ("deconvnorm", 1, "encode.6")]


@pytest.fixture(params=NETS, ids=[n[0] for n in NETS])
def case(request):
    kind, channels, layer_name = request.param
    net = tiny_unet(in_channels=channels) if kind == "unet" else make_network(kind, channels)
    target = centre_box_target(SIZE)
    return (
        net,
        tiny_input(channels, SIZE),
        target,
        layer_name,
        dict(net.named_modules())[layer_name],
    )


def upsampled(layer_attribution, x, reduce="sum"):
    """captum's way to the input grid, after reducing the channels as ours does."""
    if reduce == "max":
        reduced = layer_attribution.amax(dim=1, keepdim=True)
    else:
        reduced = getattr(layer_attribution, reduce)(dim=1, keepdim=True)
    up = LayerAttribution.interpolate(reduced, x.shape[2:], interpolate_mode="trilinear")
    return up.expand(x.shape)


def test_gradcam_matches_captum(case):
    net, x, target, name, layer = case
    got = ours("gradcam", net, x, target, layer=name, relu=False)
    ref = LayerGradCam(ScoreModel(net, target), layer).attribute(x, relu_attributions=False)
    assert close(got, upsampled(ref, x))
    relu = ours("gradcam", net, x, target, layer=name)
    assert close(relu, upsampled(torch.relu(ref), x))


def test_guided_gradcam_matches_captum_per_input_channel(case):
    net, x, target, name, layer = case
    got = ours("guided_gradcam", net, x, target, layer=name)
    ref = GuidedGradCam(ScoreModule(net, target), layer).attribute(x, interpolate_mode="trilinear")
    assert close(got, ref) and not REGISTRY["guided_gradcam"].shared_channels


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_layer_activation_and_gradient_x_activation_match_captum(case, reduce):
    net, x, target, name, layer = case
    score = ScoreModel(net, target)
    got = ours("layer_activation", net, x, target, layer=name, reduce=reduce)
    assert close(got, upsampled(LayerActivation(score, layer).attribute(x), x, reduce))
    got = ours("layer_gradient_x_activation", net, x, target, layer=name, reduce=reduce)
    ref = LayerGradientXActivation(score, layer).attribute(x)
    assert close(got, upsampled(ref, x, reduce))


@pytest.mark.parametrize("rule", ["riemann_trapezoid", "gausslegendre"])
def test_path_methods_match_captum(case, rule):
    net, x, target, name, layer = case
    score, zero = ScoreModel(net, target), torch.zeros_like(x)
    got = ours("layer_conductance", net, x, target, layer=name, n_steps=5, method=rule)
    ref = LayerConductance(score, layer).attribute(x, baselines=zero, n_steps=5, method=rule)
    assert close(got, upsampled(ref, x))
    got = ours("internal_influence", net, x, target, layer=name, n_steps=5, method=rule)
    ref = InternalInfluence(score, layer).attribute(x, baselines=zero, n_steps=5, method=rule)
    assert close(got, upsampled(ref, x))


def test_layer_gradient_shap_matches_captum_on_the_same_draws(case, monkeypatch):
    net, x, target, name, layer = case
    drawn = []
    draws = OurLayerGradientShap.draws

    def spy(self, count, generator):
        result = draws(self, count, generator)
        drawn.append(result[1])
        return result

    monkeypatch.setattr(OurLayerGradientShap, "draws", spy)
    params = {"layer": name, "n_samples": 5, "baselines": "zero"}
    got = ours("layer_gradient_shap", net, x, target, max_batch=2, **params)
    assert close(got, ours("layer_gradient_shap", net, x, target, max_batch=5, **params))
    # captum draws the points on the path with numpy: hand it ours.
    monkeypatch.setattr(np.random, "uniform", lambda low, high, size: drawn[0].numpy())
    ref = LayerGradientShap(ScoreModel(net, target), layer).attribute(
        x, baselines=torch.zeros_like(x), n_samples=5, stdevs=0.0
    )
    assert close(got, upsampled(ref, x))


def test_layer_gradient_shap_is_seeded_and_validates_its_baselines(case):
    net, x, target, name, _ = case
    params = {"layer": name, "n_samples": 3, "stdevs": 0.1, "blur_sigma": 1.0}
    a = ours("layer_gradient_shap", net, x, target, seed=4, **params)
    assert torch.equal(a, ours("layer_gradient_shap", net, x, target, seed=4, **params))
    assert not torch.equal(a, ours("layer_gradient_shap", net, x, target, seed=5, **params))
    with pytest.raises(UserInputError, match="baselines.*zero, min, mean, blur"):
        create_method("layer_gradient_shap", {"baselines": "zero,noise"})


def test_layer_deeplift_is_complete_and_matches_captum_where_captum_is_right(case):
    net, x, target, name, layer = case
    method, context = create_method("layer_deeplift", {"layer": name}), Context()
    got = method.attribute(net, x, target, context)
    # On the layer's grid the attributions sum to the score's change from the baseline.
    layer_map = method.layer_map(method.probe(net, x, target), x, Context())
    score = ScoreModel(net, target)
    with torch.no_grad():
        change = float(score(x) - score(torch.zeros_like(x)))
    assert abs(float(layer_map.sum()) - change) <= 1e-3 * abs(change) + 1e-6
    assert not context.notes
    ref = LayerDeepLift(ScoreModule(net, target), layer).attribute(x, baselines=torch.zeros_like(x))
    if name == "model.1":
        # Instance normalisation after the layer: captum's rule treats it as linear, and its
        # layer attributions miss the score change; ours do not follow it there.
        assert abs(float(ref.sum()) - change) > 0.05 * abs(change)
    else:
        assert close(got, upsampled(ref, x))


class ReuseNet(torch.nn.Module):
    """conv1 -> ReLU -> conv2 -> ReLU -> head, one in-place ReLU module used twice (tied)."""

    def __init__(self, tied=True):
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv3d(4, 4, 3, padding=1)
        self.head = torch.nn.Conv3d(4, 2, 1)
        self.act = torch.nn.ReLU(inplace=tied)
        self.act2 = self.act if tied else torch.nn.ReLU()

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act(self.conv1(x)))))


def test_layer_deeplift_works_with_reused_in_place_activations():
    tied, x, target = ReuseNet(tied=True), tiny_input(size=SIZE), centre_box_target(SIZE)
    untied = ReuseNet(tied=False)
    got = ours("layer_deeplift", tied, x, target, layer="conv1")
    ref = LayerDeepLift(ScoreModule(untied, target), untied.conv1).attribute(
        x, baselines=torch.zeros_like(x)
    )
    assert close(got, upsampled(ref, x))
    assert tied.act.inplace and tied.act2 is tied.act and type(tied.act) is torch.nn.ReLU


def test_layer_conductance_sums_to_the_score_change():
    net, x, target = make_network("deconvnorm", 1), tiny_input(size=SIZE), centre_box_target(SIZE)
    # A full-resolution layer: the upsampling is the identity, so sums are the layer's sums.
    got = ours("layer_conductance", net, x, target, layer="decode.2", n_steps=64)
    score = ScoreModel(net, target)
    with torch.no_grad():
        change = float(score(x) - score(torch.zeros_like(x)))
    assert abs(float(got[0, 0].sum()) - change) <= 0.02 * abs(change)


# Grad-CAM++ has no captum counterpart.


def test_gradcam_pp_follows_the_papers_formula_with_3d_sums():
    values = [-1.5, -0.5, 0.3, 1.0, 2.0, -2.0, 0.7, 1.2]
    x = torch.tensor(values).reshape(1, 1, 2, 2, 2)
    target = BoundTarget(1, torch.ones((2, 2, 2), dtype=torch.bool), "logits", "softmax", "sum")
    got = ours("gradcam_pp", KnownLayerNet(), x, target, layer="layer")
    # By hand: A0 = x + 0.2 with gradient A0; A1 = 1 - x / 2 with gradient 3.
    channels = [([v + 0.2 for v in values], [v + 0.2 for v in values])]
    channels.append(([1 - v / 2 for v in values], [3.0] * 8))
    weights = []
    for activation, grads in channels:
        total = sum(activation)  # over all three spatial axes
        weight = 0.0
        for g in grads:
            denominator = 2 * g**2 + total * g**3
            alpha = g**2 / denominator if denominator != 0 else 0.0
            weight += alpha * max(g, 0.0)
        weights.append(weight)
    expected = [max(sum(w * a[v] for w, (a, _) in zip(weights, channels)), 0.0) for v in range(8)]
    assert torch.allclose(got.flatten(), torch.tensor(expected), rtol=1e-5, atol=1e-6)


class ClassifierNet(torch.nn.Module):
    """conv -> ReLU -> spatial mean -> linear: each channel's gradient is constant over space."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv3d(1, 3, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.mul_(10)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3, 4)))


class AsSegmentation(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[:, :, None, None, None]


def test_gradcam_pp_equals_monai_gradcampp_where_that_applies():
    from monai.visualize import GradCAMpp

    net, x = ClassifierNet().eval(), tiny_input(size=4) / 100
    target = BoundTarget(1, torch.ones((1, 1, 1), dtype=torch.bool), "logits", "softmax", "sum")
    forward = AsSegmentation(net)
    got = ours("gradcam_pp", forward, x, target, layer="net.act")
    # MONAI keeps the factor exp(score) that ours leaves out (a positive scale per example).
    with torch.no_grad():
        scale = torch.exp(ScoreModel(forward, target)(x))
    ref = GradCAMpp(copy.deepcopy(net), target_layers="act").compute_map(x, class_idx=1)
    assert close(got * scale, upsampled(ref, x), rtol=1e-3)


def test_gradcam_pp_on_one_channel_is_proportional_to_gradcam():
    torch.manual_seed(2)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 1, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(1, 2, 3, padding=1)
    )
    x, target = tiny_input(size=SIZE), centre_box_target(SIZE)
    plus = ours("gradcam_pp", net, x, target, layer="1")
    plain = ours("gradcam", net, x, target, layer="1")
    ratio = plus[plain > 0] / plain[plain > 0]
    assert plain.max() > 0 and torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)
    assert torch.equal(plus > 0, plain > 0)


def test_gradcam_pp_default_layer_is_non_negative_and_does_not_vanish():
    net, x, target = tiny_unet(), tiny_input(size=SIZE), centre_box_target(SIZE)
    # The default layer of Grad-CAM (a skip concatenation after normalisation) is signed; all
    # Grad-CAM++ weights are non-negative, so there its map is negative and vanishes.
    assert ours("gradcam_pp", net, x, target, layer="model.1").abs().max() == 0
    assert ours("gradcam_pp", net, x, target).abs().max() > 0


# Layer choice, grids and clean-up, for every layer method.

FAST = {
    "layer_conductance": {"n_steps": 2},
    "internal_influence": {"n_steps": 2},
    # gradient.gaussian_blur needs 3 sigma < the volume's size: a small blur on 8^3 inputs
    "layer_gradient_shap": {"n_samples": 2, "blur_sigma": 1.0},
}


def run_all(net, x, target, max_batch=3, **params):
    return {
        name: ours(name, net, x, target, max_batch=max_batch, **FAST.get(name, {}), **params)
        for name in LAYER_METHODS
    }


def test_layer_parameter_is_validated():
    x, target = tiny_input(size=SIZE), centre_box_target(SIZE)
    one_voxel = BoundTarget(1, torch.ones((1, 1, 1), dtype=torch.bool), "logits", "softmax", "sum")
    for name in LAYER_METHODS:
        fast = FAST.get(name, {})
        with pytest.raises(UserInputError, match="no layer named 'nope'"):
            ours(name, ReuseNet(), x, target, layer="nope")
        with pytest.raises(UserInputError, match="ran 2 times in 1 network call"):
            ours(name, ReuseNet(), x, target, layer="act", **fast)
        with pytest.raises(UserInputError, match="not a feature map"):
            ours(name, AsSegmentation(ClassifierNet()), x, one_voxel, layer="net.fc", **fast)
        if not any(p.name == "reduce" for p in REGISTRY[name].params):
            continue  # one map per layer (Eigen-CAM) or channels weighted by scores
        with pytest.raises(UserInputError, match="reduce.*one of sum, mean, max"):
            create_method(name, {"reduce": "median"})


def test_maps_are_cropped_back_from_the_padded_grid():
    # 6^3 is padded to 8^3 (one voxel each side) before the network; the 4^3 layer map covers
    # the padded grid, so upsampling it straight to 6^3 would shift and stretch it.
    card = ModelCard(in_channels=1, out_channels=2, size_divisible=4)
    forward = SegmentationForward(tiny_unet(), card).eval()
    x, target = tiny_input(size=6), centre_box_target(size=6)
    got = ours("layer_activation", forward, x, target, layer="model.1")
    activation = LayerActivation(ScoreModel(forward, target), forward.network.model[1]).attribute(x)
    full = LayerAttribution.interpolate(activation.sum(1, keepdim=True), (8, 8, 8), "trilinear")
    assert close(got, full[:, :, 1:7, 1:7, 1:7])


def surgery_state(net):
    return [
        (
            name,
            type(module).__name__,
            getattr(module, "inplace", None),
            len(module._forward_hooks) + len(module._forward_pre_hooks),
            len(module._backward_hooks) + len(module._backward_pre_hooks),
            sorted(k for k in ("input", "output", "input_ref") if k in module.__dict__),
        )
        for name, module in net.named_modules(remove_duplicate=False)
    ]


def test_hooks_and_surgery_are_undone_after_success_and_after_an_exception():
    net, x, target = ReuseNet(), tiny_input(size=SIZE), centre_box_target(SIZE)
    x = torch.cat([x, x * 0.5])
    before = surgery_state(net)
    maps = run_all(net, x, target, layer="conv1")
    assert all(m.shape == x.shape and torch.isfinite(m).all() for m in maps.values())
    assert surgery_state(net) == before

    for name in LAYER_METHODS:
        calls = []

        def failing(logits, calls=calls):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("target failed")
            return target(logits)

        with pytest.raises(RuntimeError, match="target failed"):
            ours(name, net, x, failing, max_batch=1, layer="conv1", **FAST.get(name, {}))
        assert surgery_state(net) == before, name


def test_shared_channel_maps_are_identical_across_channels():
    net, x, target = tiny_unet(in_channels=2), tiny_input(2, SIZE), centre_box_target(SIZE)
    for name, attribution in run_all(net, x, target).items():
        assert attribution.shape == x.shape and torch.isfinite(attribution).all(), name
        if REGISTRY[name].shared_channels:
            assert torch.equal(attribution[:, 0], attribution[:, 1]), name
