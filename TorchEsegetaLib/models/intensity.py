"""Intensity preprocessing inside the differentiable forward pass, with MONAI's semantics.

A step is a model card entry ``{"kind": ..., **MONAI's arguments}``:

* ``zscore``: NormalizeIntensity (``nonzero``, ``channel_wise``, ``subtrahend``, ``divisor``)
* ``scale_range``: ScaleIntensityRange (``a_min``, ``a_max``, ``b_min``, ``b_max``, ``clip``)
* ``percentiles``: ScaleIntensityRangePercentiles (``lower``, ``upper``, ``b_min``, ``b_max``,
  ``clip``, ``relative``, ``channel_wise``)
* ``scale_intensity``: ScaleIntensity (``minv``, ``maxv``, ``factor``, ``channel_wise``)
* ``affine``: ``x * scale + shift`` (a bundle's Lambda of that form)

The steps that read statistics of the image (mean and std, percentiles, minimum and maximum)
compute them as MONAI does, but detached; for explanations they are fixed on the unperturbed
input ("frozen"), like the target's region, so that every step is one fixed map and every
method explains the same function (see :class:`~.inference.SegmentationForward`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UserInputError

#: The statistics of one step on a batch: tensors shaped to broadcast over (B, C, *S).
Statistics = tuple[torch.Tensor, ...]


def check_step(step: dict[str, Any]) -> None:
    """Raise a clear error for a step whose arguments cannot be applied."""
    kind = step.get("kind")
    if kind == "scale_range":
        missing = {"a_min", "a_max"} - {k for k, v in step.items() if v is not None}
        if missing:
            raise UserInputError(
                f"scale_range intensity preprocessing lacks {sorted(missing)}; add them to the model card"
            )
    if kind == "percentiles":
        for key in ("lower", "upper"):
            if not 0 <= float(step.get(key, -1)) <= 100:
                raise UserInputError(
                    f"percentiles intensity step needs {key} in [0, 100], got {step.get(key)!r}"
                )
        if step.get("relative") and (step.get("b_min") is None or step.get("b_max") is None):
            raise UserInputError("a relative percentiles step needs b_min and b_max; add them")
    if kind == "zscore" and not step.get("channel_wise"):
        for key in ("subtrahend", "divisor"):
            if isinstance(step.get(key), (list, tuple)):
                raise UserInputError(
                    f"a zscore step with a per-channel {key} needs channel_wise true"
                )
    if kind == "affine" and not {"scale", "shift"} <= set(step):
        raise UserInputError("an affine intensity step needs scale and shift")


def is_affine(step: dict[str, Any]) -> bool:
    """Whether the step, its statistics fixed, is the same affine map at every voxel (then it
    commutes with linear resampling: resampling first and scaling after gives the same image)."""
    kind = step["kind"]
    if kind in ("scale_range", "percentiles"):
        return not step.get("clip")
    if kind == "zscore":
        return not step.get("nonzero")
    return kind in ("scale_intensity", "affine")


def reads_image(step: dict[str, Any]) -> bool:
    """Whether the step takes statistics of the image it is applied to (unless they are
    frozen): without them it maps each voxel on its own."""
    kind = step["kind"]
    if kind == "zscore":
        return step.get("subtrahend") is None or step.get("divisor") is None
    if kind == "scale_intensity":
        return step.get("minv") is not None or step.get("maxv") is not None
    return kind == "percentiles"


def statistics(step: dict[str, Any], x: torch.Tensor) -> Statistics | None:
    """The step's statistics of ``x`` (B, C, *S), detached; None for steps without any."""
    kind = step["kind"]
    data = x.detach().float()
    if kind == "zscore":
        return _zscore_statistics(data, step)
    if kind == "percentiles":
        from monai.transforms.utils_pytorch_numpy_unification import percentile

        # MONAI's own percentile function (torch.quantile, numpy beyond 10^6 voxels) on the
        # tensors MONAI gives it: each sample, or each channel of it
        def pair(values: torch.Tensor) -> list[torch.Tensor]:
            return [
                torch.as_tensor(percentile(values, float(step[q]))).float().reshape(())
                for q in ("lower", "upper")
            ]

        lows, highs = [], []
        for sample in data:
            parts = [pair(c) for c in sample] if step.get("channel_wise") else [pair(sample)]
            lows.append(torch.stack([p[0] for p in parts]))
            highs.append(torch.stack([p[1] for p in parts]))
        shape = (x.shape[0], -1) + (1,) * (x.dim() - 2)
        return torch.stack(lows).reshape(shape).to(x.device), torch.stack(highs).reshape(shape).to(
            x.device
        )
    if kind == "scale_intensity" and (step.get("minv") is not None or step.get("maxv") is not None):
        dims = tuple(range(2 if step.get("channel_wise") else 1, x.dim()))
        return data.amin(dim=dims, keepdim=True), data.amax(dim=dims, keepdim=True)
    return None


def apply(step: dict[str, Any], x: torch.Tensor, stats: Statistics | None) -> torch.Tensor:
    """The step on ``x`` (B, C, *S), differentiable, with the given statistics."""
    kind = step["kind"]
    if kind == "zscore":
        mean, std = stats if stats is not None else _zscore_statistics(x.detach().float(), step)
        if step.get("nonzero"):
            return torch.where(x.detach() != 0, (x - mean) / std, x)
        return (x - mean) / std
    if kind == "scale_range":
        return scale_range(
            x, step["a_min"], step["a_max"], step.get("b_min"), step.get("b_max"), step.get("clip")
        )
    if kind == "percentiles":
        a_min, a_max = _measured(step, x, stats)
        b_min, b_max = step.get("b_min"), step.get("b_max")
        if step.get("relative"):
            lower, upper = float(step["lower"]), float(step["upper"])
            out_min, out_span = float(step["b_min"]), float(step["b_max"]) - float(step["b_min"])
            b_min = out_span * (lower / 100.0) + out_min
            b_max = out_span * (upper / 100.0) + out_min
        return scale_range(x, a_min, a_max, b_min, b_max, step.get("clip"))
    if kind == "scale_intensity":
        minv, maxv = step.get("minv"), step.get("maxv")
        if minv is None and maxv is None:
            factor = step.get("factor")
            return x * (1 + factor) if factor is not None else x
        low, high = _measured(step, x, stats)
        flat = low == high
        norm = (x - low) / torch.where(flat, torch.ones_like(high), high - low)
        if minv is not None and maxv is not None:
            norm = norm * (maxv - minv) + minv
        return torch.where(flat, x * minv if minv is not None else x, norm)
    if kind == "affine":
        return x * float(step["scale"]) + float(step["shift"])
    raise UserInputError(f"unknown intensity step {kind!r}; use one of the model card's kinds")


def apply_all(
    steps: list[dict[str, Any]],
    x: torch.Tensor,
    frozen: list[Statistics | None] | None = None,
    fills: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The steps in order on ``x`` (B, C, *S), with their frozen statistics (None: each computed
    on its input). ``fills[k]``: a (1, 1, *S) bool mask of voxels set to zero before step ``k``
    (``k == len(steps)``: after the last), the zero padding a bundle adds between its intensity
    steps (see :func:`~.pipeline.model_input`)."""
    frozen = frozen or [None] * len(steps)
    fills = fills or {}
    for index, (step, stats) in enumerate(zip(steps, frozen)):
        x = apply(step, _fill(x, fills.get(index)), stats)
    return _fill(x, fills.get(len(steps)))


def _fill(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x
    if tuple(mask.shape[2:]) != tuple(x.shape[2:]):
        raise ValueError(f"padding mask of shape {tuple(mask.shape)} for an input {tuple(x.shape)}")
    return torch.where(mask.to(x.device), torch.zeros((), dtype=x.dtype, device=x.device), x)


def statistics_on(stats: list[Statistics | None], device: Any) -> list[Statistics | None]:
    """Per-step statistics moved to ``device``."""
    return [None if s is None else tuple(t.to(device) for t in s) for s in stats]


def scale_range(
    x: torch.Tensor,
    a_min: float | torch.Tensor,
    a_max: float | torch.Tensor,
    b_min: float | None = None,
    b_max: float | None = None,
    clip: bool | None = False,
) -> torch.Tensor:
    """MONAI ScaleIntensityRange (``a_min``/``a_max`` may be per-sample tensors); clipping has
    zero gradient where the model saw no change."""
    if not isinstance(a_min, torch.Tensor) and not isinstance(a_max, torch.Tensor):
        if a_max == a_min:
            return x - a_min + (b_min or 0.0)
        scaled = (x - a_min) / (a_max - a_min)
    else:
        a_min, a_max = torch.as_tensor(a_min).to(x), torch.as_tensor(a_max).to(x)
        flat = a_max == a_min
        scaled = (x - a_min) / torch.where(flat, torch.ones_like(a_max), a_max - a_min)
        if b_min is not None and b_max is not None:
            scaled = scaled * (b_max - b_min) + b_min
        # where the range is empty, MONAI shifts instead of scaling, and never clips
        scaled = torch.where(flat, x - a_min + (b_min or 0.0), scaled)
        if clip and (b_min is not None or b_max is not None):
            scaled = torch.where(flat, scaled, torch.clamp(scaled, min=b_min, max=b_max))
        return scaled
    if b_min is not None and b_max is not None:
        scaled = scaled * (b_max - b_min) + b_min
    if clip and (b_min is not None or b_max is not None):
        scaled = torch.clamp(scaled, min=b_min, max=b_max)
    return scaled


def _measured(step: dict[str, Any], x: torch.Tensor, stats: Statistics | None) -> Statistics:
    """The step's statistics: the given (frozen) ones, or those of ``x``."""
    measured = stats if stats is not None else statistics(step, x)
    if measured is None:
        raise ValueError(f"intensity step {step['kind']!r} has no statistics")
    return measured


def _zscore_statistics(data: torch.Tensor, step: dict[str, Any]) -> Statistics:
    """Mean and std (zero std -> 1) per sample (and per channel), MONAI's way; a given
    subtrahend or divisor replaces the computed one."""
    dims = tuple(range(2 if step.get("channel_wise") else 1, data.dim()))
    mask = (data != 0) if step.get("nonzero") else torch.ones_like(data, dtype=torch.bool)
    count = mask.sum(dim=dims, keepdim=True).clamp_min(1)
    mean = torch.where(mask, data, 0).sum(dim=dims, keepdim=True) / count
    variance = torch.where(mask, (data - mean) ** 2, 0).sum(dim=dims, keepdim=True) / count
    std = variance.sqrt()
    shape = mean.shape
    if step.get("subtrahend") is not None:
        mean = torch.as_tensor(step["subtrahend"], dtype=data.dtype, device=data.device)
        mean = mean.reshape(-1, *[1] * (data.dim() - 2)).expand(shape[1:]).expand(shape)
    if step.get("divisor") is not None:
        std = torch.as_tensor(step["divisor"], dtype=data.dtype, device=data.device)
        std = std.reshape(-1, *[1] * (data.dim() - 2)).expand(shape[1:]).expand(shape)
    return mean, torch.where(std == 0, torch.ones_like(std), std)
