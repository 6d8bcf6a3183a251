"""How the input grid maps onto the model's grid and back (the card-spacing resample).

Shared by :mod:`.pipeline` (which puts the raw image on the model grid) and :mod:`.inference`
(which brings outputs back); a bundle's geometric transforms have their own grid,
:class:`~.pipeline.TransformGrid`, with the same ``to_input_grid`` interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserInputError
from ..io.volume import Volume
from .card import ModelCard


@dataclass(frozen=True)
class ResampleInfo:
    """How the input grid maps onto the model grid.

    The resize keeps the centres of the corner voxels fixed (``align_corners=True``), so the
    model grid spans exactly the input's extent and both directions map the same physical
    points onto each other; ``model_spacing`` is the resulting spacing, which differs slightly from the card's
    target when the extent is not a whole number of target voxels.
    """

    input_shape: tuple[int, int, int]
    model_shape: tuple[int, int, int]
    input_spacing: tuple[float, float, float]
    model_spacing: tuple[float, float, float]

    @property
    def identity(self) -> bool:
        return self.input_shape == self.model_shape

    def to_model_grid(self, t: torch.Tensor) -> torch.Tensor:
        """(B, K, *input shape) -> (B, K, *model shape), the same resize as the image's."""
        if self.identity:
            return t
        return F.interpolate(t, size=self.model_shape, mode="trilinear", align_corners=True)

    def to_input_grid(self, t: torch.Tensor, mode: str = "trilinear") -> torch.Tensor:
        """(B, K, *model shape) -> (B, K, *input shape); the inverse of the resize.

        ``mode`` is "trilinear" (probabilities, logits, attributions) or "nearest" (labels, any
        dtype); both use the same corner-aligned mapping as :func:`resample_to_model_grid`.
        """
        if self.identity:
            return t
        if mode == "trilinear":
            return F.interpolate(t, size=self.input_shape, mode="trilinear", align_corners=True)
        if mode != "nearest":
            raise UserInputError(f"unknown resampling mode {mode!r}; use 'trilinear' or 'nearest'")
        for axis, (m, n) in enumerate(zip(self.model_shape, self.input_shape)):
            if m != n:
                position = torch.arange(n, dtype=torch.float64) * ((m - 1) / max(n - 1, 1))
                index = position.round().long().clamp(0, m - 1).to(t.device)
                t = t.index_select(axis + 2, index)
        return t


def resample_to_model_grid(volume: Volume, card: ModelCard) -> tuple[torch.Tensor, ResampleInfo]:
    """The image as a (1, C, *S') float32 tensor on the model's grid, and how to undo it.

    Identity when the card has no spacing or the target shape equals the input shape;
    otherwise a trilinear resize to ``round(size * spacing / target)`` voxels per axis. A
    non-positive target spacing keeps the input spacing along that axis (MONAI's pixdim rule).
    """
    x = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))[None]
    input_shape = volume.spatial_shape
    spacing = volume.geometry.spacing
    if card.spacing is None:
        model_shape = input_shape
    else:
        target = [s if t <= 0 else t for s, t in zip(spacing, card.spacing)]
        model_shape = cast(
            "tuple[int, int, int]",
            tuple(max(1, round(n * s / t)) for n, s, t in zip(input_shape, spacing, target)),
        )
    model_spacing = cast(
        "tuple[float, float, float]",
        tuple(
            s if n == m else ((n - 1) * s / (m - 1) if m > 1 else n * s)
            for n, m, s in zip(input_shape, model_shape, spacing)
        ),
    )
    info = ResampleInfo(input_shape, model_shape, spacing, model_spacing)
    if not info.identity:
        x = F.interpolate(x, size=model_shape, mode="trilinear", align_corners=True)
    return x, info


def restore_input_grid(t: torch.Tensor, info: Any, mode: str = "trilinear") -> torch.Tensor:
    """(B, K, *S') on the model grid -> (B, K, *input shape): the inverse of the way onto the
    model grid (a :class:`ResampleInfo` or a bundle's :class:`~.pipeline.TransformGrid`).

    ``mode`` is "trilinear" (probabilities, logits, attributions: each transform's own
    interpolation for a bundle) or "nearest" (labels, any dtype).
    """
    return info.to_input_grid(t, mode)
