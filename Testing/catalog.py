"""Shared fixtures of the catalog tests: tiny 3D segmentation networks of different kinds,
fast parameters per method, and the ground-truth region model."""

from __future__ import annotations

import torch

from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import SegmentationForward

#: Parameters that keep each method to a fraction of a second on 16^3 inputs.
FAST_PARAMS: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"samples": 2},
    "occlusion": {"window": 8, "stride": 8},
    "occlusion_adaptive": {"window": 4, "stride": 4},
    "feature_ablation": {"feature_size": 8},
    "shapley_value_sampling": {"feature_size": 8, "n_samples": 1},
    "lime": {"feature_size": 8, "n_samples": 16},
    "kernel_shap": {"feature_size": 8, "n_samples": 16},
    "rise": {"n_masks": 8, "cell_size": 8},
    "deeplift_shap": {"n_baselines": 2},
    "gradient_shap": {"n_samples": 2},
    "layer_conductance": {"n_steps": 4},
    "internal_influence": {"n_steps": 4},
    "layer_gradient_shap": {"n_samples": 2},
}


class DeconvNormNet(torch.nn.Module):
    """Encoder-decoder with max pooling, batch and group normalisation, and ConvTranspose3d."""

    def __init__(self, in_channels: int, out_channels: int = 2):
        super().__init__()
        self.encode = torch.nn.Sequential(
            torch.nn.Conv3d(in_channels, 6, 3, padding=1),
            torch.nn.BatchNorm3d(6),
            torch.nn.ReLU(),
            torch.nn.MaxPool3d(2),
            torch.nn.Conv3d(6, 8, 3, padding=1),
            torch.nn.GroupNorm(2, 8),
            torch.nn.ReLU(),
        )
        self.decode = torch.nn.Sequential(
            torch.nn.ConvTranspose3d(8, 6, 2, stride=2),
            torch.nn.BatchNorm3d(6),
            torch.nn.ReLU(),
            torch.nn.Conv3d(6, out_channels, 1),
        )

    def forward(self, x):
        return self.decode(self.encode(x))


def make_network(kind: str, in_channels: int, seed: int = 0) -> torch.nn.Module:
    """A tiny randomly initialised (seeded) network in eval mode, with non-trivial BN statistics."""
    from monai.networks.nets import SegResNet, UNet

    torch.manual_seed(seed)
    if kind == "unet":
        net = UNet(
            3,
            in_channels,
            2,
            channels=(4, 8),
            strides=(2,),
            num_res_units=1,
            act="RELU",
            norm="INSTANCE",
        )
    elif kind == "segresnet":
        net = SegResNet(
            3,
            init_filters=4,
            in_channels=in_channels,
            out_channels=2,
            blocks_down=(1, 1),
            blocks_up=(1,),
            norm=("GROUP", {"num_groups": 2}),
        )
    elif kind == "deconvnorm":
        net = DeconvNormNet(in_channels)
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    else:
        raise ValueError(kind)
    return net.eval()


def forward_for(network: torch.nn.Module, in_channels: int) -> SegmentationForward:
    card = ModelCard(
        in_channels=in_channels,
        out_channels=2,
        class_names=["background", "target"],
        size_divisible=2,
    )
    return SegmentationForward(network, card).eval()


class RegionNet(torch.nn.Module):
    """A segmentation network whose output depends only on the input inside ``region``."""

    def __init__(self, region: torch.Tensor, in_channels: int = 1, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.register_buffer("region", region.float()[None, None])
        self.features = torch.nn.Sequential(
            torch.nn.Conv3d(in_channels, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv3d(8, 8, 3, padding=1),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Conv3d(8, 2, 1)

    def forward(self, x):
        return self.head(self.features(x * self.region))
