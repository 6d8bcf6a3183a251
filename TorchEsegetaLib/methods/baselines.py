"""Baselines: the reference inputs that the path, reference and perturbation methods (and the
deletion metrics) compare the input with, and their declared parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Param

if TYPE_CHECKING:
    import torch

BASELINES = ("zero", "min", "mean", "blur")


def baseline_params(
    help: str = "Reference input: zeros, each channel's minimum or mean, or a Gaussian blur of "
    "the input.",
) -> tuple[Param, Param]:
    """The ``baseline`` and ``blur_sigma`` parameters of :func:`make_baseline`; ``help`` says
    what the baseline stands for in the method."""
    return (
        Param("baseline", "choice", "zero", help, choices=BASELINES),
        Param(
            "blur_sigma",
            "float",
            4.0,
            "Sigma in voxels of the blurred baseline.",
            minimum=0.1,
            maximum=100.0,
        ),
    )


BASELINE, BLUR_SIGMA = baseline_params()


def make_baseline(kind: str, inputs: torch.Tensor, blur_sigma: float = 4.0) -> torch.Tensor:
    """A reference input of ``inputs.shape``: zeros, or each channel's minimum or mean, or a blur."""
    import torch

    spatial = tuple(range(2, inputs.dim()))
    if kind == "zero":
        return torch.zeros_like(inputs)
    if kind == "min":
        return inputs.amin(dim=spatial, keepdim=True).expand_as(inputs).clone()
    if kind == "mean":
        return inputs.mean(dim=spatial, keepdim=True).expand_as(inputs).clone()
    return gaussian_blur(inputs, blur_sigma)


def intensity_range(inputs: torch.Tensor) -> torch.Tensor:
    """Each example's and channel's max - min, shaped to broadcast over ``inputs``."""
    spatial = tuple(range(2, inputs.dim()))
    return inputs.amax(dim=spatial, keepdim=True) - inputs.amin(dim=spatial, keepdim=True)


def gaussian_blur(inputs: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over the spatial axes, reflecting at the borders."""
    import torch

    radius = max(1, int(3 * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=inputs.dtype, device=inputs.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = inputs
    channels = inputs.shape[1]
    for axis in range(inputs.dim() - 2):
        shape = [1] * (inputs.dim() - 2)
        shape[axis] = kernel.numel()
        weight = kernel.reshape(1, 1, *shape).repeat(channels, 1, *[1] * len(shape))
        # reflect as far as the axis allows, then repeat the edge (a kernel longer than the axis)
        reflect = min(radius, inputs.shape[2 + axis] - 1)
        side = 2 * (inputs.dim() - 3 - axis)
        padded = out
        for mode, width in (("reflect", reflect), ("replicate", radius - reflect)):
            if width > 0:
                pad = [0, 0] * (inputs.dim() - 2)
                pad[side] = pad[side + 1] = width
                padded = torch.nn.functional.pad(padded, pad, mode=mode)
        conv = torch.nn.functional.conv3d if inputs.dim() == 5 else torch.nn.functional.conv2d
        out = conv(padded, weight, groups=channels)
    return out
