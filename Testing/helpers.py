"""Tiny models and inputs shared by the engine tests (seeded, CPU, 16^3 voxels)."""

from __future__ import annotations

import numpy as np
import torch

from TorchEsegetaLib.targets import BoundTarget


def tiny_unet(
    in_channels: int = 1,
    out_channels: int = 2,
    seed: int = 0,
    act: str = "RELU",
    norm: str = "INSTANCE",
) -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    net = UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=(4, 8),
        strides=(2,),
        num_res_units=1,
        act=act,
        norm=norm,
    )
    return net.eval()


def tiny_input(channels: int = 1, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, channels, size, size, size), generator=generator) * 100.0


def centre_box_target(size: int = 16, class_index: int = 1, output: str = "logits") -> BoundTarget:
    region = torch.zeros((size, size, size), dtype=torch.bool)
    low, high = size // 4, 3 * size // 4
    region[low:high, low:high, low:high] = True
    return BoundTarget(class_index, region, output, "softmax", "mean")


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


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
