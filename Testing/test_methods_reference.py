"""Deconvolution, DeepLIFT, DeepLIFT-SHAP, GradientSHAP and LRP: equal to captum where captum
supports the network, exact where it does not (summation to delta, conservation), and the model
is left as it was."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from captum.attr import LRP as CaptumLRP
from captum.attr import Deconvolution, DeepLift, DeepLiftShap, GradientShap
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule
from catalog import forward_for, make_network
from helpers import LinearVoxelModel, ScoreModule, centre_box_target, close, tiny_input, tiny_unet
from helpers import ours as _ours

from TorchEsegetaLib.engine.context import Context
from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.methods import ScoreModel, create_method
from TorchEsegetaLib.methods.baselines import draw_seeds, make_baseline
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import SegmentationForward
from TorchEsegetaLib.targets.bound import BoundTarget

ours = functools.partial(_ours, max_batch=4)


def pooling_net(seed=0):
    """Max pooling, eval batch norm and a transposed convolution, with no activation: captum's
    DeepLift misroutes multipliers when a ReLU and a max pooling meet (captum issue #1104)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.BatchNorm3d(4),
        torch.nn.MaxPool3d(2),
        torch.nn.Conv3d(4, 6, 3, padding=1),
        torch.nn.ConvTranspose3d(6, 2, 2, stride=2),
    )
    net[1].running_mean.uniform_(-0.2, 0.2)
    net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


#: Networks on which captum's DeepLift is right: one ReLU module per use, eval batch norm.
CAPTUM_NETWORKS = {"unet_batchnorm": lambda: tiny_unet(norm="BATCH"), "maxpool": pooling_net}


def voxel_target(voxel=(8, 7, 9), size=16, output="logits"):
    region = torch.zeros((size,) * 3, dtype=torch.bool)
    region[voxel] = True
    return BoundTarget(1, region, output, "softmax", "mean")


@pytest.fixture(autouse=True)
def _one_thread():
    # 16^3 volumes: one thread is faster, and spares the CPUs other jobs are using
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def x():
    return tiny_input() / 50 + 0.5


def test_deconvolution_matches_captum_and_differs_from_guided_backprop(x):
    net, target = make_network("unet", 1), centre_box_target()
    ref = Deconvolution(ScoreModule(net, target)).attribute(x)
    got = ours("deconvolution", net, x, target)
    assert close(got, ref)
    assert not close(got, ours("guided_backprop", net, x, target))


@pytest.mark.parametrize("network", sorted(CAPTUM_NETWORKS))
@pytest.mark.parametrize("baseline", ["zero", "blur"])
def test_deeplift_matches_captum_on_networks_captum_supports(x, network, baseline):
    net, target = CAPTUM_NETWORKS[network](), centre_box_target()
    base = make_baseline(baseline, x)
    ref = DeepLift(ScoreModule(net, target)).attribute(x, baselines=base)
    assert close(ours("deeplift", net, x, target, baseline=baseline), ref)


@pytest.mark.parametrize("kind", ["unet", "segresnet", "deconvnorm"])
@pytest.mark.parametrize("output", ["logits", "probabilities"])
def test_deeplift_sums_to_the_score_difference_on_monai_networks(x, kind, output):
    # Instance/group normalisation, a ReLU module called twice in place (SegResNet), softmax:
    # captum's DeepLift fails or misses the difference by more than its size on these.
    net, target = make_network(kind, 1), centre_box_target(output=output)
    score = ScoreModel(net, target)
    for baseline in ("zero", "mean"):
        context = Context()
        attribution = create_method("deeplift", {"baseline": baseline}).attribute(
            net, x, target, context
        )
        with torch.no_grad():
            delta = float(score(x) - score(make_baseline(baseline, x)))
        assert abs(float(attribution.sum()) - delta) <= 1e-3 * abs(delta) + 1e-6, baseline
        assert not context.notes


def test_deeplift_is_exact_through_a_sliding_window_and_frozen_zscore(x):
    card = ModelCard(
        intensity={"kind": "zscore", "nonzero": False, "channel_wise": True},
        roi_size=(16, 16, 8),
        overlap=0.5,
        sw_mode="gaussian",
    )
    forward = SegmentationForward(make_network("segresnet", 1), card).eval()
    forward.freeze_statistics(x)
    target = centre_box_target()
    attribution = ours("deeplift", forward, x, target)
    with torch.no_grad():
        delta = float(target(forward(x)) - target(forward(torch.zeros_like(x))))
    assert abs(float(attribution.sum()) - delta) <= 1e-3 * abs(delta)


class Unwindowed(torch.nn.Module):
    """The same forward, seen as a plain module: DeepLIFT then goes through the whole
    sliding-window inference in one graph (the reference for the window-by-window path)."""

    def __init__(self, forward):
        super().__init__()
        self.inner = forward
        self.network = forward.network  # LRP marks each network call's output layer

    def forward(self, inputs):
        return self.inner(inputs)


@pytest.mark.parametrize("output", ["logits", "probabilities"])
@pytest.mark.parametrize("name", ["deeplift", "deeplift_shap"])
def test_deeplift_window_by_window_equals_deeplift_through_the_whole_inference(x, output, name):
    # 16^3 in 8^3 windows at overlap 0.5 (27 windows), Gaussian blending, frozen z-score:
    # logits are a linear target (its gradient is known up front); probabilities are not
    # (DeepLIFT's softmax rule on the blended outputs of the input and the baseline).
    card = ModelCard(
        intensity={"kind": "zscore"},
        roi_size=(8, 8, 8),
        overlap=0.5,
        sw_mode="gaussian",
        sw_batch_size=4,
    )
    forward = SegmentationForward(make_network("segresnet", 1), card).eval()
    forward.freeze_statistics(x)
    target = centre_box_target(output=output)
    params = {"n_baselines": 2} if name == "deeplift_shap" else {}
    context = Context(max_batch=2)
    calls, paired = [], forward.paired_score_gradients
    forward.paired_score_gradients = lambda *args: calls.append(1) or paired(*args)
    windowed = create_method(name, params).attribute(forward, x, target, context)
    assert calls  # the window-by-window path ran
    whole = create_method(name, params).attribute(Unwindowed(forward), x, target, Context())
    assert forward.window_usage(x.shape[2:]) == {"used": 27, "total": 27}
    assert close(windowed, whole, rtol=1e-5, atol=1e-6)
    assert float(windowed.abs().max()) > 0
    assert not context.notes  # complete: the sums match the score changes


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus"])
def test_lrp_window_by_window_equals_lrp_through_the_whole_inference(x, composite):
    # The inferer's sums share each voxel's relevance among its windows by the epsilon rule;
    # window by window, each window's share is computed up front from the blended output.
    card = ModelCard(roi_size=(8, 8, 8), overlap=0.5, sw_mode="gaussian", sw_batch_size=4)
    forward = SegmentationForward(make_network("unet", 1), card).eval().double()
    x, target = x.double(), centre_box_target()
    calls, windowed_pass = [], forward.window_relevance
    forward.window_relevance = lambda *args: calls.append(1) or windowed_pass(*args)
    params = {"composite": composite, "epsilon": 1e-9}
    windowed = ours("lrp", forward, x, target, **params)
    whole = ours("lrp", Unwindowed(forward), x, target, **params)
    assert calls
    # equal up to the order of the sums (the inferer's chain of in-place additions gives each
    # partial sum its own epsilon): within 1e-5 of the largest relevance
    assert close(windowed, whole, rtol=1e-5, atol=1e-5)
    assert float(windowed.abs().max()) > 0


def test_deeplift_names_the_operations_it_has_no_rule_for(x):
    class GatedNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

        def forward(self, inputs):
            h = self.conv(inputs)
            return h * torch.sigmoid(h)  # a product of two activations: no rescale rule

    context = Context()
    create_method("deeplift").attribute(GatedNet().eval(), x, centre_box_target(), context)
    assert any("deeplift" in n and "mul" in n for n in context.notes), context.notes


def test_deeplift_shap_matches_captum_with_the_same_baselines(x):
    net, target = tiny_unet(norm="BATCH"), centre_box_target()
    method = create_method("deeplift_shap", {"n_baselines": 5, "baseline_noise": 0.2})
    baselines = method.baselines(x, draw_seeds(Context(seed=3), 1, 5)[0])
    ref = DeepLiftShap(ScoreModule(net, target)).attribute(x, baselines=baselines)
    assert close(method.attribute(net, x, target, Context(max_batch=2, seed=3)), ref)
    # DeepLIFT-SHAP sums to the score minus its mean over the baselines.
    score = ScoreModel(net, target)
    with torch.no_grad():
        expected = float(score(x) - score(baselines).mean())
    assert abs(float(ref.sum()) - expected) <= 1e-3 * abs(expected)


@pytest.mark.parametrize("distribution", ["noisy", "blurred", "uniform"])
def test_sampled_methods_are_reproducible_and_independent_of_the_batch_size(x, distribution):
    net, target = make_network("segresnet", 1), centre_box_target()
    for name, count in (("deeplift_shap", "n_baselines"), ("gradient_shap", "n_samples")):
        params = {count: 3, "distribution": distribution}
        a = ours(name, net, x, target, max_batch=1, seed=5, **params)
        b = ours(name, net, x, target, max_batch=3, seed=5, **params)
        c = ours(name, net, x, target, max_batch=3, seed=6, **params)
        assert close(a, b) and not close(a, c), name


def test_gradient_shap_matches_captum_with_the_same_random_draws(x, monkeypatch):
    net, target = make_network("unet", 1), centre_box_target()
    method = create_method("gradient_shap", {"n_samples": 4, "noise_level": 0.05})
    got = method.attribute(net, x, target, Context(max_batch=3, seed=11))
    baselines, noisy, alphas = method.draws(x, draw_seeds(Context(seed=11), 1, 4)[0])
    # captum draws baseline indices and path positions with numpy and noise with torch.normal
    monkeypatch.setattr(np.random, "choice", lambda n, size: np.arange(size))
    monkeypatch.setattr(np.random, "uniform", lambda low, high, size: alphas.numpy())
    monkeypatch.setattr(torch, "normal", lambda mean, std: noisy - x)
    ref = GradientShap(ScoreModel(net, target)).attribute(
        x, baselines=baselines, n_samples=4, stdevs=1.0
    )
    assert close(got, ref)


def test_gradient_shap_and_deeplift_on_a_linear_model(x):
    net, target = LinearVoxelModel(), centre_box_target()  # class 1: logit = -2 x + 0.3
    weight = -2.0 * target.region_weights(x.device, x.dtype)  # d score / d x, voxel by voxel
    params = {"n_samples": 400, "baseline_noise": 0.2}
    got = ours("gradient_shap", net, x, target, max_batch=400, **params)
    # each sample is exactly (x - baseline) * w; their mean tends to (x - E[baseline]) * w
    baselines, _, _ = create_method("gradient_shap", params).draws(
        x, draw_seeds(Context(), 1, 400)[0]
    )
    assert close(got, (x - baselines.mean(dim=0, keepdim=True)) * weight)
    spread = 0.2 * float(x.max() - x.min()) / 400**0.5  # standard error of the mean baseline
    inside = weight != 0
    assert float(((got - x * weight)[:, :, inside]).abs().max()) < 5 * spread * weight.abs().max()
    assert close(ours("deeplift", net, x, target, baseline="mean"), (x - x.mean()) * weight)


def _without_biases(net):
    for module in net.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            module.bias = None
        if isinstance(module, (torch.nn.BatchNorm3d, torch.nn.GroupNorm)):
            module.bias.data.zero_()
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.zero_()
    return net.double()


@pytest.mark.parametrize("kind", ["unet", "segresnet", "deconvnorm"])
def test_lrp_conserves_relevance_on_bias_free_networks(x, kind):
    # Through residual sums, instance/group/batch normalisation, max pooling, transposed
    # convolutions, trilinear upsampling and a sliding window with overlapping windows.
    card = ModelCard(intensity={"kind": "zscore"}, roi_size=(16, 16, 8), overlap=0.5)
    forward = SegmentationForward(_without_biases(make_network(kind, 1)), card).eval()
    x = x.double()
    forward.freeze_statistics(x)
    target = centre_box_target()
    with torch.no_grad():
        score = float(target(forward(x)))
    relevance = ours("lrp", forward, x, target, composite="epsilon", epsilon=1e-12)
    assert abs(float(relevance.sum()) - score) <= 1e-6 * abs(score)


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus"])
def test_lrp_matches_captum_with_the_same_rules(x, composite):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool3d(2),
        torch.nn.Conv3d(4, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose3d(6, 4, 2, stride=2),
        torch.nn.ReLU(),
        torch.nn.Conv3d(4, 2, 1),
    ).eval()
    if composite == "epsilon_plus":  # z+ ignores biases; captum's rule keeps them
        for module in net[:-1]:
            if hasattr(module, "bias"):
                module.bias.data.zero_()
    target = voxel_target()
    got = ours("lrp", net, x, target, composite=composite, epsilon=1e-9)
    for module in net:
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            hidden = composite == "epsilon_plus" and module is not net[-1]
            module.rule = Alpha1_Beta0_Rule() if hidden else EpsilonRule(1e-9)

    class Voxel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, inputs):
            return self.net(inputs)[:, 1, 8, 7, 9][:, None]

    ref = CaptumLRP(Voxel()).attribute(x, target=0)
    assert close(got, ref)


def _snapshot(module):
    return {
        "state": {k: v.clone() for k, v in module.state_dict().items()},
        "types": [type(m) for m in module.modules()],
        "inplace": [getattr(m, "inplace", None) for m in module.modules()],
        "attributes": [sorted(vars(m)) for m in module.modules()],
    }


def _assert_restored(module, before):
    after = _snapshot(module)
    assert after["types"] == before["types"] and after["inplace"] == before["inplace"]
    assert after["attributes"] == before["attributes"]
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())
    for m in module.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)


METHODS = ["deconvolution", "deeplift", "deeplift_shap", "gradient_shap", "lrp"]


@pytest.mark.parametrize("name", METHODS)
def test_the_model_is_restored_after_each_method_even_on_error(x, name):
    forward = forward_for(make_network("segresnet", 1), 1)  # in-place ReLU called twice
    before = _snapshot(forward)
    params = {"n_baselines": 2} if name == "deeplift_shap" else {}
    params = {"n_samples": 2} if name == "gradient_shap" else params
    ours(name, forward, x, centre_box_target(), **params)
    _assert_restored(forward, before)

    class Broken(BoundTarget):
        def voxel_scores(self, logits):
            raise RuntimeError("target failed")

        def channel_scores(self, logits):  # where LRP starts
            raise RuntimeError("target failed")

    broken = centre_box_target()
    broken.__class__ = Broken
    with pytest.raises(RuntimeError, match="target failed"):
        ours(name, forward, x, broken, **params)
    _assert_restored(forward, before)


@pytest.mark.parametrize("name", ["deeplift", "lrp"])
def test_torchscript_models_are_refused_clearly(x, name):
    scripted = torch.jit.script(pooling_net())
    with pytest.raises(UserInputError, match="eager PyTorch model"):
        ours(name, scripted, x, centre_box_target())


@pytest.mark.parametrize("base", ["deconvolution", "deeplift", "lrp"])
def test_smoothgrad_without_noise_equals_its_new_base(x, base):
    net, target = make_network("unet", 1), centre_box_target()
    smoothed = ours("smoothgrad", net, x, target, base=base, samples=1, noise_level=0.0)
    assert close(smoothed, ours(base, net, x, target))
