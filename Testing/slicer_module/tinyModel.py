"""A tiny MONAI UNet saved as a state_dict, and a 16^3 image on an oblique anisotropic grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from TorchEsegetaLib.io.volume import Geometry

SIZE = (16, 16, 16)
_ANGLE = np.radians(25)
GEOMETRY = Geometry(
    size=SIZE,
    spacing=(1.0, 1.2, 1.5),
    origin=(-10.0, 12.5, 3.0),
    direction=(
        np.cos(_ANGLE),
        -np.sin(_ANGLE),
        0.0,
        np.sin(_ANGLE),
        np.cos(_ANGLE),
        0.0,
        0.0,
        0.0,
        1.0,
    ),
)


def tinyModelReference(folder: Path, inChannels: int = 1) -> dict:
    """Save a seeded tiny UNet in ``folder``; returns its engine model reference."""
    import torch
    from helpers import TINY_UNET_KWARGS, tiny_unet

    path = Path(folder) / f"tiny-unet-{inChannels}.pt"
    if not path.exists():
        torch.save(tiny_unet(in_channels=inChannels).state_dict(), path)
    kwargs = {**TINY_UNET_KWARGS, "in_channels": inChannels}
    return {"kind": "monai", "network": "UNet", "kwargs": kwargs, "checkpoint": str(path)}


def tinyImage(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(SIZE).astype(np.float32) * 100.0
