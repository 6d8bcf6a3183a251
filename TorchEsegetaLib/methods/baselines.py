"""Baselines: the reference inputs that the path, reference and perturbation methods (and the
deletion metrics) compare the input with, the distributions that the sampled methods
(DeepLIFT-SHAP, GradientSHAP) draw them from, and their declared parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Param

if TYPE_CHECKING:
    import torch

    from ..engine.context import Context

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

DISTRIBUTIONS = ("noisy", "blurred", "uniform")

DISTRIBUTION = (
    Param(
        "distribution",
        "choice",
        "noisy",
        "How baselines are drawn: the reference input plus Gaussian noise, Gaussian blurs of "
        "the input (sigma uniform in [blur_sigma/2, 3 blur_sigma/2]), or uniform intensities "
        "in each channel's range.",
        choices=DISTRIBUTIONS,
    ),
    BASELINE,
    Param(
        "baseline_noise",
        "float",
        0.1,
        "Noise of the 'noisy' baselines, as a fraction of each channel's intensity range.",
        minimum=0.0,
        maximum=10.0,
    ),
    BLUR_SIGMA,
)


def draw_baselines(
    x: torch.Tensor, seeds: torch.Tensor, config: dict[str, Any]
) -> list[torch.Tensor]:
    """One baseline of ``x.shape`` (one example) per seed, drawn as ``config`` says.

    Each draw has its own generator, so a draw depends only on its seed, never on the batch
    it was computed in (an out-of-memory retry gives the same numbers).
    """
    import torch

    kind = config["distribution"]
    if kind == "noisy":
        centre = make_baseline(config["baseline"], x, config["blur_sigma"])
        std = (config["baseline_noise"] * intensity_range(x)).expand_as(x).cpu()
    draws = []
    for seed in seeds.tolist():
        generator = torch.Generator().manual_seed(int(seed))
        if kind == "noisy":
            draws.append(centre + torch.normal(0.0, std, generator=generator).to(x.device))
        elif kind == "blurred":
            sigma = config["blur_sigma"] * (0.5 + float(torch.rand(1, generator=generator)))
            draws.append(gaussian_blur(x, sigma))
        else:
            unit = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            draws.append(
                x.amin(dim=tuple(range(2, x.dim())), keepdim=True) + unit * intensity_range(x)
            )
    return draws


def draw_seeds(context: Context, examples: int, count: int) -> torch.Tensor:
    """(examples, count) seeds, one per random draw, from the run's seeded generator."""
    import torch

    return torch.randint(0, 2**62, (examples, count), generator=context.generator())


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
