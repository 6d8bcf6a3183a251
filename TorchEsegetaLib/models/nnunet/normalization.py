"""nnU-Net's intensity normalisation schemes, with their statistics fixed per case.

nnU-Net normalises each channel of the cropped image before resampling, with the scheme the
plans name (``nnunetv2.preprocessing.normalization``). Every scheme is an affine map of the
intensities (CT's after a clip to fixed percentiles): its shift and scale come from the plans'
foreground intensity properties (CT) or from the case itself (z-score, rescale to [0, 1]). The
case's statistics are computed here exactly as nnU-Net computes them (numpy, float32, on the
same voxels) and then applied to a tensor; for explanations they stay those of the unperturbed
input, like the project's z-scoring, so every method explains one fixed function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import UserInputError

SCHEMES = (
    "ZScoreNormalization",
    "CTNormalization",
    "NoNormalization",
    "RescaleTo01Normalization",
    "RGBTo01Normalization",
)
_EPS = 1e-8  # nnU-Net's, for its float32 target dtype


@dataclass(frozen=True)
class ChannelNormalization:
    """``(clip(x, low, high) - shift) / scale``, applied inside ``mask`` only when it is set
    (nnU-Net's z-score with ``use_mask_for_norm``; other voxels keep their value)."""

    shift: float = 0.0
    scale: float = 1.0
    low: float | None = None
    high: float | None = None
    mask: np.ndarray | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.low is not None or self.high is not None:
            y = torch.clamp(y, min=_f32(self.low), max=_f32(self.high))
        # float32 constants so that the arithmetic equals nnU-Net's float32 numpy, bit for bit
        shift = torch.tensor(np.float32(self.shift), dtype=x.dtype, device=x.device)
        scale = torch.tensor(np.float32(self.scale), dtype=x.dtype, device=x.device)
        y = (y - shift) / scale
        if self.mask is None:
            return y
        mask = torch.as_tensor(self.mask, device=x.device)
        return torch.where(mask, y, x)


def channel_normalization(
    scheme: str, use_mask: bool, properties: dict, image: np.ndarray, nonzero: np.ndarray
) -> ChannelNormalization:
    """The normalisation nnU-Net's ``scheme`` applies to ``image`` (one cropped channel,
    float32), with ``nonzero`` its nonzero mask (nnU-Net's ``seg >= 0``)."""
    image = np.asarray(image, dtype=np.float32)
    if scheme == "ZScoreNormalization":
        if use_mask:
            values = image[nonzero]
            return ChannelNormalization(
                float(values.mean()), float(max(values.std(), _EPS)), mask=nonzero
            )
        return ChannelNormalization(float(image.mean()), float(max(image.std(), _EPS)))
    if scheme == "CTNormalization":
        missing = {"mean", "std", "percentile_00_5", "percentile_99_5"} - set(properties)
        if missing:
            raise UserInputError(
                f"CTNormalization needs the intensity properties {sorted(missing)}, which the plans' "
                "foreground_intensity_properties_per_channel lacks; check plans.json"
            )
        return ChannelNormalization(
            properties["mean"],
            max(properties["std"], _EPS),
            properties["percentile_00_5"],
            properties["percentile_99_5"],
        )
    if scheme == "NoNormalization":
        return ChannelNormalization()
    if scheme == "RescaleTo01Normalization":
        low = image.min()
        return ChannelNormalization(float(low), float(max(image.max() - low, _EPS)))
    if scheme == "RGBTo01Normalization":
        return ChannelNormalization(0.0, 255.0)
    raise UserInputError(
        f"the plans normalise with {scheme!r}, which TorchEsegeta does not reproduce "
        f"(supported: {', '.join(SCHEMES)})"
    )


def _f32(value: float | None) -> float | None:
    return None if value is None else float(np.float32(value))
