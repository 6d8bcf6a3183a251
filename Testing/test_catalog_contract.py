"""Every registered method on tiny 3D segmentation networks of different kinds, 1- and 2-channel
inputs and every target kind: a finite map of the input's shape, not all zero. And the
ground truth: on a model that only sees a known region, the attribution lies in that region."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from catalog import FAST_PARAMS, RegionNet, forward_for, make_network

from TorchEsegetaLib.card import ModelCard
from TorchEsegetaLib.engine import Context
from TorchEsegetaLib.inference import SegmentationForward
from TorchEsegetaLib.methods import REGISTRY, create_method
from TorchEsegetaLib.targets import TargetSpec, bind_target, region_in_input_grid
from TorchEsegetaLib.volume import Geometry

SIZE = 16
NETWORKS = ("unet", "segresnet", "deconvnorm")
TARGETS = {
    "class": TargetSpec(kind="class", class_=1),
    "mask": TargetSpec(kind="mask", mask_array=np.pad(np.ones((6, 6, 6), np.uint8), 5)),
    "roi": TargetSpec(kind="roi", start=(4, 4, 4), end=(11, 11, 11), output="probabilities"),
    "voxel": TargetSpec(kind="voxel", voxel=(8, 7, 9)),
}


def run(method_name, forward, x, spec, seed=0):
    with torch.no_grad():
        logits = forward(x)
    if spec.kind == "class" and not bool((logits[0].argmax(0) == 1).any()):
        spec = TargetSpec(kind="class", class_=int(logits[0].argmax(0).flatten()[0]))
    region = None if spec.kind == "class" else region_in_input_grid(spec, Geometry((SIZE,) * 3))
    target = bind_target(spec, forward.card, logits, region)
    method = create_method(method_name, FAST_PARAMS.get(method_name, {}))
    return method.attribute(forward, x, target, Context(max_batch=4, seed=seed))


def inputs(channels, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, channels, SIZE, SIZE, SIZE), generator=generator) * 2 + 0.5


def check(attribution, x, label):
    assert attribution.shape == x.shape, label
    assert torch.isfinite(attribution).all(), label
    assert attribution.abs().sum() > 0, f"{label}: all zero"


CASES = [(net, 1, "class") for net in NETWORKS] + [(net, 2, "roi") for net in NETWORKS]
CASES += [("unet", 1, kind) for kind in ("mask", "roi", "voxel")] + [
    ("deconvnorm", 2, kind) for kind in ("class", "mask", "voxel")
]


@pytest.mark.parametrize("method_name", sorted(REGISTRY))
def test_contract(method_name):
    for network_kind, channels, target_kind in CASES:
        forward = forward_for(make_network(network_kind, channels), channels)
        x = inputs(channels)
        check(
            run(method_name, forward, x, TARGETS[target_kind]),
            x,
            f"{method_name}/{network_kind}/{channels}ch/{target_kind}",
        )


@pytest.mark.slow
@pytest.mark.parametrize("method_name", sorted(REGISTRY))
def test_contract_full_product(method_name):
    for network_kind, channels, target_kind in itertools.product(NETWORKS, (1, 2), TARGETS):
        forward = forward_for(make_network(network_kind, channels), channels)
        x = inputs(channels)
        check(
            run(method_name, forward, x, TARGETS[target_kind]),
            x,
            f"{method_name}/{network_kind}/{channels}ch/{target_kind}",
        )


#: Share of the absolute attribution mass inside the region the model sees, as measured (see
#: the README). Methods that cannot reach 0.95, with the reason:
GROUND_TRUTH_EXCEPTIONS = {
    # Grad-CAM is not an input attribution: it weights a layer's activations, and those are
    # non-zero outside the region too (the biases give a constant feature map there). On this
    # model its map equals ReLU(class logit - bias), which is positive outside the region and
    # negative inside it: measured share 0.0. It shows where the layer responds, not which input
    # voxels the score depends on; no bound is asserted.
    "gradcam": 0.0,
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
        params = dict(FAST_PARAMS.get(name, {}))
        if name == "occlusion":
            params.update(window=4, stride=4)
        attribution = (
            create_method(name, params)
            .attribute(forward, x, target, Context(max_batch=8))
            .abs()[0, 0]
        )
        shares[name] = float(attribution[REGION].sum() / attribution.sum())
    print("attribution mass inside the region:", {n: round(s, 4) for n, s in shares.items()})
    failures = {n: s for n, s in shares.items() if s < GROUND_TRUTH_EXCEPTIONS.get(n, 0.95)}
    assert not failures, f"attribution mass inside the region: {shares}"
