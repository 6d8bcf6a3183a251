"""Tiny models, inputs and the ours-versus-reference helpers shared by the engine tests (seeded,
CPU, 16^3 voxels)."""

from __future__ import annotations

import numpy as np
import torch

from TorchEsegetaLib.engine.context import Context
from TorchEsegetaLib.methods import create_method
from TorchEsegetaLib.targets.bound import BoundTarget

#: The tiny MONAI UNet's kwargs, as a model reference gives them (JSON: lists, not tuples).
TINY_UNET_KWARGS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 1,
    "act": "RELU",
    "norm": "INSTANCE",
}


def tiny_unet_cli_args(checkpoint) -> list[str]:
    """The command line's model options for a state dict of :func:`tiny_unet` saved at ``checkpoint``."""
    import json

    return [
        "--model",
        str(checkpoint),
        "--network",
        "UNet",
        "--network-kwargs",
        json.dumps(TINY_UNET_KWARGS),
    ]


def tiny_unet(
    in_channels: int = 1,
    out_channels: int = 2,
    seed: int = 0,
    act: str = "RELU",
    norm: str = "INSTANCE",
) -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    changes = {"in_channels": in_channels, "out_channels": out_channels, "act": act, "norm": norm}
    return UNet(**{**TINY_UNET_KWARGS, **changes}).eval()


def tiny_input(channels: int = 1, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, channels, size, size, size), generator=generator) * 100.0


def centre_box_target(size: int = 16, class_index: int = 1, output: str = "logits") -> BoundTarget:
    region = torch.zeros((size, size, size), dtype=torch.bool)
    low, high = size // 4, 3 * size // 4
    region[low:high, low:high, low:high] = True
    return BoundTarget(class_index, region, output, "softmax", "mean")


def local_window_case():
    """A tiny UNet behind 16^3 sliding windows on a 40 x 40 x 24 input, restricted to a small
    region's windows, and a target over that region: (forward, x, target). Boxes outside the
    region's windows cannot change the score."""
    from TorchEsegetaLib.models.card import ModelCard
    from TorchEsegetaLib.models.inference import SegmentationForward

    card = ModelCard(roi_size=(16, 16, 16), overlap=0.25, sw_batch_size=2, size_divisible=2)
    card.intensity = {"kind": "none"}
    forward = SegmentationForward(tiny_unet(), card)
    x = tiny_input(size=40)[..., :24]
    region = torch.zeros(x.shape[2:], dtype=torch.bool)
    region[2:6, 3:7, 2:6] = True
    forward.restrict_to(region.numpy())
    return forward, x, BoundTarget(1, region, "logits", "softmax", "mean")


class LinearVoxelModel(torch.nn.Module):
    """logits[:, c] = w[c] * x + b[c] voxel by voxel (a 1x1x1 convolution with known weights)."""

    def __init__(self, weights=(0.5, -2.0), biases=(0.1, 0.3)):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, len(weights), kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.tensor(weights, dtype=torch.float32).reshape(-1, 1, 1, 1, 1)
            )
            self.conv.bias.copy_(torch.tensor(biases, dtype=torch.float32))

    def forward(self, x):
        return self.conv(x)


class KnownLayerNet(torch.nn.Module):
    """A 1x1x1 convolution to two channels, A0 = x + 0.2 and A1 = 1 - x / 2 (the layer, named
    "layer"); foreground logit = A0^2 / 2 + 3 A1, background 0."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.layer.weight.copy_(torch.tensor([1.0, -0.5]).reshape(2, 1, 1, 1, 1))
            self.layer.bias.copy_(torch.tensor([0.2, 1.0]))

    def forward(self, x):
        a = self.layer(x)
        foreground = 0.5 * a[:, :1] ** 2 + 3 * a[:, 1:]
        return torch.cat([torch.zeros_like(foreground), foreground], dim=1)


def ours(name, net, x, target, max_batch=3, seed=0, **params) -> torch.Tensor:
    """Our method ``name`` with ``params``, run in batches of ``max_batch`` with ``seed``."""
    context = Context(max_batch=max_batch, seed=seed)
    return create_method(name, params).attribute(net, x, target, context)


def close(a, b, rtol=1e-4, atol=1e-6) -> bool:
    """Same shape and equal up to ``rtol``/``atol`` relative to the largest magnitude of ``b``."""
    b = b.to(a.dtype)  # captum 0.7 returns float64 for its Gauss-Legendre path
    scale = b.abs().max().clamp(min=1e-12)
    return a.shape == b.shape and torch.allclose(a / scale, b / scale, rtol=rtol, atol=atol)


class ScoreModule(torch.nn.Module):
    """The score as a module: captum's DeepLift and guided backpropagation hook a module."""

    def __init__(self, net, target):
        super().__init__()
        self.net, self.target = net, target

    def forward(self, x):
        return self.target(self.net(x))


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def tiny_unet_job(folder, methods: list, **fields):
    """A :class:`~TorchEsegetaLib.runs.job.Job` of the :func:`tiny_unet` (its state dict saved
    as ``folder/unet.pt``) on a random 16^3 image (``folder/image.nii.gz``), writing
    ``folder/run`` without figures; ``fields`` set the job's others."""
    from pathlib import Path

    from TorchEsegetaLib.io.images import write_volume
    from TorchEsegetaLib.io.volume import Geometry
    from TorchEsegetaLib.runs.job import Job

    folder = Path(folder)
    torch.save(tiny_unet().state_dict(), folder / "unet.pt")
    image = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32) * 100
    write_volume(image, Geometry((16, 16, 16)), folder / "image.nii.gz")
    model = {
        "kind": "monai",
        "network": "UNet",
        "kwargs": TINY_UNET_KWARGS,
        "checkpoint": str(folder / "unet.pt"),
    }
    settings = {"output": str(folder / "run"), "figures": False, **fields}
    return Job(images=[str(folder / "image.nii.gz")], model=model, methods=methods, **settings)


def metric_case(forward, x: torch.Tensor, target: BoundTarget, **fields):
    """A metrics :class:`~TorchEsegetaLib.metrics.Case` of ``x`` on its own grid (1 mm voxels,
    no resampling), its region the target's; ``fields`` set the case's others (seed, card, ...)."""
    from TorchEsegetaLib.metrics import Case
    from TorchEsegetaLib.models.grids import ResampleInfo

    shape = tuple(x.shape[2:])
    return Case(
        forward=forward,
        x=x,
        target=target,
        info=ResampleInfo(shape, shape, (1.0,) * 3, (1.0,) * 3),
        region=target.region.cpu().numpy(),
        spacing=(1.0, 1.0, 1.0),
        **fields,
    )


#: run.json's entry of a tta entropy map, as a run writes it (runs.uncertainty)
TTA_ENTROPY_ENTRY = {
    "kind": "tta",
    "quantity": "entropy",
    "file": "uncertainty_tta_entropy.nii.gz",
    "members": 8,
    "label": "uncertainty_tta_entropy",
    "title": "predictive entropy (tta, 8 members)",
    "unit": "nats",
}


class FullRecomputation(torch.nn.Module):
    """The same model without window reuse: every perturbed input runs every window."""

    def __init__(self, forward):
        super().__init__()
        self.inner, self.network = forward, forward.network

    def forward(self, x):
        return self.inner(x)


class Float64Sum(BoundTarget):
    """The same target, its voxel shares summed in float64: the reference's score without the
    rounding of a float32 sum over the volume (which is larger than a small score drop)."""

    def __call__(self, logits):
        return self.voxel_scores(logits).double().flatten(1).sum(dim=1)

    @classmethod
    def of(cls, target: BoundTarget) -> Float64Sum:
        """The same fields as ``target``, summed in float64."""
        import dataclasses

        return cls(**{f.name: getattr(target, f.name) for f in dataclasses.fields(target)})
