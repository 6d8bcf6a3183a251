"""Segmentation models whose answer is known: the target score provably depends on the input in
one region only (every other voxel can change without changing the score), for validating the
recommendation. Each is a tiny network on a 16^3 volume; layer methods are misleading on them
(their layers respond outside the region: biases, context pooling).

* ``gated``: the input times a learned gate (1 in the region, 0 elsewhere), then two 3x3x3 ReLU
  convolutions and a 1x1x1 head; the score is the mean class-1 logit over the whole volume.
* ``gated_unet``: the same gate before a MONAI UNet (strided and transposed convolutions,
  instance normalisation).
* ``context``: the gated input's features averaged over the volume decide every voxel's logit:
  the scored target region is far from the region it depends on (a model using context).
* ``hardwired``: the region is a fixed buffer of the architecture (no weight to randomise), so
  randomising the weights cannot move a faithful map off the region.

The gate is a parameter of its own layer, as a trained model learns where to look: randomising
the model's weights (the sanity check) randomises it too.
"""

from __future__ import annotations

import torch
from catalog import RegionNet

from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import SegmentationForward
from TorchEsegetaLib.targets.bound import BoundTarget

SIZE = 16
KINDS = ("gated", "gated_unet", "context", "hardwired")
CARD = ModelCard(in_channels=1, out_channels=2, class_names=["background", "target"])


class Gate(torch.nn.Module):
    """x times a learned per-voxel weight."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(region.float()[None, None].clone())

    def forward(self, x):
        return x * self.weight


class GatedNet(torch.nn.Module):
    def __init__(self, region: torch.Tensor, body: torch.nn.Module):
        super().__init__()
        self.gate = Gate(region)
        self.body = body

    def forward(self, x):
        return self.body(self.gate(x))


class ContextNet(torch.nn.Module):
    """Every voxel's logits are a function of the gated input's mean features."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.gate = Gate(region)
        self.features = torch.nn.Sequential(
            torch.nn.Conv3d(1, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv3d(8, 8, 3, padding=1),
        )
        self.act = torch.nn.ReLU()
        self.head = torch.nn.Conv3d(8, 2, 1)

    def forward(self, x):
        features = self.act(self.features(self.gate(x)))
        pooled = features.mean(dim=(2, 3, 4), keepdim=True)
        return self.head(pooled.expand_as(features))


def true_region(kind: str) -> torch.Tensor:
    region = torch.zeros((SIZE,) * 3, dtype=torch.bool)
    if kind == "context":
        region[2:8, 2:8, 2:8] = True
    else:
        region[4:12, 4:12, 4:12] = True
    return region


def target_region(kind: str) -> torch.Tensor:
    """What the score averages over: far from the true region for ``context``."""
    region = torch.zeros((SIZE,) * 3, dtype=torch.bool)
    if kind == "context":
        region[10:15, 10:15, 10:15] = True
    else:
        region[:] = True
    return region


def make_model(kind: str, seed: int = 0) -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    region = true_region(kind)
    if kind == "gated":
        body = torch.nn.Sequential(
            torch.nn.Conv3d(1, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv3d(8, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv3d(8, 2, 1),
        )
        network: torch.nn.Module = GatedNet(region, body)
    elif kind == "gated_unet":
        unet = UNet(3, 1, 2, channels=(8, 16), strides=(2,), num_res_units=1, act="RELU")
        network = GatedNet(region, unet)
    elif kind == "context":
        network = ContextNet(region)
    elif kind == "hardwired":
        network = RegionNet(region, seed=seed)
    else:
        raise ValueError(kind)
    return network.eval()


def known_answer_case(kind: str, seed: int = 0):
    """(score model, input, bound target, true region) of one known-answer model."""
    forward = SegmentationForward(make_model(kind, seed), CARD).eval()
    generator = torch.Generator().manual_seed(seed + 5)
    x = torch.rand((1, 1, SIZE, SIZE, SIZE), generator=generator) * 2 + 0.5
    target = BoundTarget(1, target_region(kind), "logits", "softmax", "mean")
    return forward, x, target, true_region(kind)
