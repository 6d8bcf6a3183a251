"""Every registered method on tiny 3D segmentation networks of different kinds, 1- and 2-channel
inputs and every target kind: a finite map of the input's shape, not all zero. And the
ground truth: on a model that only sees a known region, the attribution lies in that region."""

from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from catalog import FAST_PARAMS, RegionNet, forward_for, make_network

from TorchEsegetaLib.engine.context import Context
from TorchEsegetaLib.io.volume import Geometry
from TorchEsegetaLib.methods import REGISTRY, create_method
from TorchEsegetaLib.methods.guides import ALL_ZERO_IN_GROUND_TRUTH, GROUND_TRUTH_SHARE
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import SegmentationForward
from TorchEsegetaLib.targets.bound import bind_target, region_in_input_grid
from TorchEsegetaLib.targets.objects import REGIONS
from TorchEsegetaLib.targets.spec import TargetSpec

SIZE = 16
NETWORKS = ("unet", "segresnet", "deconvnorm")
TARGETS = {
    "class": TargetSpec(kind="class", class_=1),
    "mask": TargetSpec(kind="mask", mask_array=np.pad(np.ones((6, 6, 6), np.uint8), 5)),
    "roi": TargetSpec(kind="roi", start=(4, 4, 4), end=(11, 11, 11), output="probabilities"),
    "voxel": TargetSpec(kind="voxel", voxel=(8, 7, 9)),
    # the object targets: their voxel and class are set from the network's prediction in run()
    "component": TargetSpec(kind="component", voxel=(0, 0, 0)),
    "boundary": TargetSpec(kind="boundary", class_=1, width=1),
    "contrast": TargetSpec(kind="contrast", class_=1, versus=0),
}


def run(method_name, forward, x, spec, seed=0, **params):
    with torch.no_grad():
        logits = forward(x)
    labels = logits[0].argmax(0)
    if spec.kind in ("class", "boundary", "contrast") and not bool((labels == 1).any()):
        present = int(labels.flatten()[0])
        spec = dataclasses.replace(
            spec, class_=present, versus=1 - present if spec.kind == "contrast" else None
        )
    geometry = Geometry((SIZE,) * 3)
    if spec.kind == "component":
        voxel = tuple(float(v) for v in torch.nonzero(labels == labels.max())[0])
        # a network that predicts background everywhere: its one object is the background's
        spec = dataclasses.replace(spec, voxel=voxel, class_=0 if labels.max() == 0 else None)
    if spec.kind in REGIONS:  # the object targets' own region builders, on the prediction
        prediction = SimpleNamespace(
            labelmap=labels.numpy(), class_mask=lambda card, c: labels.numpy() == c
        )
        region, facts = REGIONS[spec.kind](spec, forward.card, prediction, geometry)
        spec = dataclasses.replace(spec, class_=facts.get("class_index", spec.class_))
    elif spec.kind in ("class", "contrast"):
        region = None
    else:
        region = region_in_input_grid(spec, geometry)
    target = bind_target(spec, forward.card, logits, region)
    method = create_method(method_name, {**FAST_PARAMS.get(method_name, {}), **params})
    return method.attribute(forward, x, target, Context(max_batch=4, seed=seed))


def inputs(channels, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, channels, SIZE, SIZE, SIZE), generator=generator) * 2 + 0.5


def check_case(method_name, network_kind, channels, target_kind):
    forward = forward_for(make_network(network_kind, channels), channels)
    x = inputs(channels)
    label = f"{method_name}/{network_kind}/{channels}ch/{target_kind}"
    if target_kind == "boundary":
        with torch.no_grad():
            labels = forward(x)[0].argmax(0)
        if bool((labels == labels.flatten()[0]).all()):
            return  # one class everywhere has no surface: the run refuses (test_object_targets)
    attribution = run(method_name, forward, x, TARGETS[target_kind])
    assert attribution.shape == x.shape, label
    assert torch.isfinite(attribution).all(), label
    # "Not all zero" holds where the target depends on the input at all: a voxel whose logit
    # sits on a flat (switched-off ReLU) stretch has a zero gradient, correctly.
    gradient = run("saliency", forward, x, TARGETS[target_kind])
    relu = any(p.name == "relu" for p in REGISTRY[method_name].params)
    if gradient.abs().sum() > 0 and relu and attribution.abs().sum() == 0:
        # A CAM's ReLU keeps positive evidence only: where the layer's evidence for the target
        # is negative everywhere (one voxel's), the map is zero; without the ReLU it is not.
        attribution = run(method_name, forward, x, TARGETS[target_kind], relu=False)
    if gradient.abs().sum() > 0:
        assert attribution.abs().sum() > 0, f"{label}: all zero"


CASES = [(net, 1, "class") for net in NETWORKS] + [(net, 2, "roi") for net in NETWORKS]
CASES += [("unet", 1, kind) for kind in ("mask", "roi", "voxel", "component")] + [
    ("deconvnorm", 2, kind) for kind in ("class", "mask", "voxel", "contrast")
]
CASES += [("segresnet", 1, "boundary")]


@pytest.mark.parametrize("method_name", sorted(REGISTRY))
def test_contract(method_name):
    for case in CASES:
        check_case(method_name, *case)


@pytest.mark.slow
@pytest.mark.parametrize("method_name", sorted(REGISTRY))
def test_contract_full_product(method_name):
    for case in itertools.product(NETWORKS, (1, 2), TARGETS):
        check_case(method_name, *case)


#: Share of the absolute attribution mass inside the region the model sees. Every method reaches
#: 0.95 but those whose share the method pages quote (GROUND_TRUTH_SHARE of methods/guides.py,
#: held here to within 0.03) and guided Grad-CAM, whose map is all zero (share nan). Why:
#: Grad-CAM is not an input attribution: it weights a layer's activations, and those are
#: non-zero outside the region too (the biases give a constant feature map there). On this
#: model its map equals ReLU(class logit - bias), which is positive outside the region and
#: negative inside it: measured share 0.0. It shows where the layer responds, not which input
#: voxels the score depends on.
#: LIME and Kernel SHAP fit a linear surrogate on random coalitions of the 64 grid blocks.
#: The model is not additive over blocks (ReLU convolutions across block faces), and the
#: part of the score the surrogate cannot fit leaks as noise into the coefficients of every
#: block, the 56 the model never sees included; it shrinks as 1/sqrt(n_samples). Measured
#: at 512 samples: LIME 0.861, Kernel SHAP 0.905 (0.45 at 128 samples; the Shapley value of
#: an unseen block is exactly 0, which sampling and feature ablation reach: 1.0).
#: RISE weighs smooth random masks by the score: a voxel outside the region gets weight
#: wherever its mask value is correlated with the masks inside (one coarse cell around
#: the region, all of this 16^3 volume's 4-voxel shell), plus the estimator's sampling
#: noise, which falls as 1/sqrt(n_masks). Measured 0.404 (512 masks of 4-voxel cells).
#: The other layer methods share Grad-CAM's limit: their maps are per unit of a layer, placed
#: at the unit's position, not per input voxel. Here the default layer (the second ReLU, full
#: resolution) has constant, bias-driven activations outside the region, and units within
#: the two 3x3x3 convolutions' reach (a 2-voxel rim) see the region. Measured: Grad-CAM++
#: 0.0625 and layer activation 0.251, gradient x activation 0.254 (activations are non-zero
#: everywhere); internal influence 0.125 (the layer gradient is the constant head weight, so
#: the map is uniform: the region's share of the volume); conductance and DeepLIFT 0.434,
#: layer GradientSHAP 0.438 (zero outside the rim, where the activation does not change, and
#: about half the mass in the rim). Guided Grad-CAM multiplies guided backpropagation, zero
#: outside the region, by Grad-CAM, zero inside it: an all-zero map.
#: The rest of the CAM family on the same layer. Its gradient is the constant head weight, so
#: HiResCAM's and XGrad-CAM's maps are Grad-CAM's up to a positive factor: 0.0; LayerCAM keeps
#: the channels of positive weight as Grad-CAM++ does: 0.0625. Eigen-CAM and Eigen-Grad-CAM
#: project the (gradient x) activations on their first principal component over the volume,
#: centred: the constant activations outside the region sit away from the mean too (0.515 and
#: 0.149). Score-CAM's masks are the activations, non-zero outside (0.251, as layer
#: activation); Ablation-CAM's weights, the score's drops w_k mean(A_k), make the weighted sum
#: negative everywhere here: an all-zero map.
#: Parameters of the ground-truth run where the fast ones would blur the answer: boxes and
#: feature blocks of 4 voxels, aligned with the region, and enough random samples.
GROUND_TRUTH_PARAMS = {
    "occlusion": {"window": 4, "stride": 4},
    "occlusion_adaptive": {"window": 4, "stride": 4},
    "feature_ablation": {"feature_size": 4},
    "shapley_value_sampling": {"feature_size": 4},
    "lime": {"feature_size": 4, "n_samples": 512},
    "kernel_shap": {"feature_size": 4, "n_samples": 512},
    "rise": {"n_masks": 512, "cell_size": 4},
}
REGION = (slice(4, 12),) * 3


def test_ground_truth_region():
    region = torch.zeros((SIZE,) * 3, dtype=torch.bool)
    region[REGION] = True
    network = RegionNet(region).eval()
    card = ModelCard(in_channels=1, out_channels=2, class_names=["background", "target"])
    forward = SegmentationForward(network, card)
    x = inputs(1, seed=5)
    spec = TargetSpec(kind="roi", start=(0, 0, 0), end=(SIZE - 1,) * 3)
    with torch.no_grad():
        logits = forward(x)
    target = bind_target(spec, card, logits, region_in_input_grid(spec, Geometry((SIZE,) * 3)))
    shares = {}
    for name in sorted(REGISTRY):
        params = {**FAST_PARAMS.get(name, {}), **GROUND_TRUTH_PARAMS.get(name, {})}
        attribution = (
            create_method(name, params)
            .attribute(forward, x, target, Context(max_batch=8))
            .abs()[0, 0]
        )
        shares[name] = float(attribution[REGION].sum() / attribution.sum())
    print("attribution mass inside the region:", {n: round(s, 4) for n, s in shares.items()})
    failures = {
        name: share
        for name, share in shares.items()
        if not (
            abs(share - GROUND_TRUTH_SHARE[name]) <= 0.03
            if name in GROUND_TRUTH_SHARE
            else np.isnan(share)
            if name in ALL_ZERO_IN_GROUND_TRUTH
            else share >= 0.95
        )
    }
    assert not failures, f"attribution mass inside the region: {shares}"
