"""The built-in demo: a synthetic MRA-like volume and a small vessel UNet trained on others like it.

The weights in ``weights/`` are reproduced by ``python -m TorchEsegetaLib.models.demo.train``; the
demo input uses a seed that training never saw. torch and MONAI are imported only when the
network is built, so importing this package stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import UserInputError
from ...io.volume import Geometry, Volume
from ..card import ModelCard
from .synthetic import make_vessel_volume

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEMO_NETWORK",
    "DEMO_NETWORK_KWARGS",
    "DEMO_SEED",
    "DEMO_SHAPE",
    "build_demo_network",
    "demo_card",
    "demo_structures",
    "demo_volume",
    "demo_weights_path",
    "make_vessel_volume",
]

DEMO_SHAPE = (64, 64, 64)
DEMO_SEED = 7
DEMO_SPACING = (0.6, 0.6, 0.8)
DEMO_ORIGIN = (-19.2, -24.6, 31.5)

DEMO_NETWORK = "UNet"
DEMO_NETWORK_KWARGS: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": (8, 16, 32),
    "strides": (2, 2),
    "num_res_units": 1,
    # Plain ReLU so guided backpropagation and deconvolution mean what they say.
    "act": "RELU",
    # No running statistics: train and eval modes compute the same function.
    "norm": "INSTANCE",
}
DEMO_INTENSITY: dict[str, Any] = {"kind": "zscore", "nonzero": False, "channel_wise": True}


def demo_volume() -> tuple[Volume, np.ndarray]:
    """The demo input with an anisotropic MRA-like geometry, and its ground-truth vessel label."""
    image, label = make_vessel_volume(DEMO_SHAPE, DEMO_SEED)
    geometry = Geometry(size=DEMO_SHAPE, spacing=DEMO_SPACING, origin=DEMO_ORIGIN)
    return Volume(image, geometry), label


#: the demo's structures: the true vessels, a shell around them, and the rest
DEMO_STRUCTURE_NAMES = {1: "vessels", 2: "vessel surroundings (1.5 mm)", 3: "other tissue"}
DEMO_SHELL_MM = 1.5


def demo_structures(truth: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, dict[int, str]]:
    """A label image of the demo input, as an atlas would give one: its true vessels, the
    tissue within 1.5 mm of them, and the rest (for ``--structures``)."""
    from scipy.ndimage import distance_transform_edt

    vessels = truth.astype(bool)
    distance = distance_transform_edt(~vessels, sampling=geometry.spacing)
    labels = np.full(truth.shape, 3, dtype=np.uint8)
    labels[distance <= DEMO_SHELL_MM] = 2
    labels[vessels] = 1
    return labels, dict(DEMO_STRUCTURE_NAMES)


def demo_card() -> ModelCard:
    """Model card of the demo network (run on the whole volume, z-scored inside the forward pass)."""
    return ModelCard(
        in_channels=DEMO_NETWORK_KWARGS["in_channels"],
        out_channels=DEMO_NETWORK_KWARGS["out_channels"],
        class_names=["background", "vessel"],
        activation="softmax",
        intensity=dict(DEMO_INTENSITY),
        spacing=None,
        roi_size=None,
        size_divisible=int(np.prod(DEMO_NETWORK_KWARGS["strides"])),
        name="TorchEsegeta demo vessel UNet",
    )


def demo_weights_path() -> Path:
    """The committed state_dict of the demo network."""
    return Path(__file__).parent / "weights" / "demo_unet.pt"


def build_demo_network() -> torch.nn.Module:
    """The demo UNet with its committed weights, in eval mode, on the CPU."""
    import torch
    from monai.networks.nets import UNet

    path = demo_weights_path()
    if not path.is_file():
        raise UserInputError(
            f"the demo weights {path} are missing; reinstall the package or recreate them "
            "with `python -m TorchEsegetaLib.models.demo.train`"
        )
    network = UNet(**DEMO_NETWORK_KWARGS)
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return network.eval()
