"""Segmentation as the model is meant to be run, with every step differentiable where it matters.

The pipeline, split so that explanations can attribute to the raw image intensities:

1. :func:`resample_to_model_grid` resizes the raw image to the card's spacing (outside the
   differentiable forward pass, identity when the grids agree);
2. :class:`SegmentationForward` turns raw intensities on that grid into logits: intensity
   preprocessing, padding to ``size_divisible``, MONAI's sliding-window inferer;
3. :func:`restore_input_grid` brings outputs back to the input grid.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .card import ModelCard
from .errors import OutOfMemoryError, UserInputError
from .volume import Volume
from .window_passes import WindowPasses
from .windows import WindowPlan, divisible_crop, pad_explicitly, pad_to_multiple

if TYPE_CHECKING:
    from .models import LoadedModel


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SegmentationForward(WindowPasses, torch.nn.Module):
    """Raw intensities (B, C, *S) -> logits (B, K, *S), exactly as the model is meant to be run.

    Differentiable with respect to the input, the sliding-window path included.

    The z-score statistics (mean, std) are computed on the input itself but *detached*: the
    forward values equal MONAI's NormalizeIntensity, while gradients treat the statistics as
    constants. Attached, every voxel's gradient would carry a global term (through the mean
    and std of the whole image) that spreads evidence uniformly over the volume and couples
    distant voxels; detached, a gradient map reads as the per-voxel sensitivity of the
    prediction.

    For explanations the runner calls :meth:`freeze_statistics` on the unperturbed input: from
    then on the intensity step is one fixed affine map, fixed from the unperturbed case like
    the target's region. Every method then explains the same function: its gradients are
    exact (so integrated gradients is complete), and a perturbed or scaled input is not
    silently renormalised (z-scoring is scale-invariant, which would make every path from a
    zero baseline flat).
    """

    def __init__(
        self, network: torch.nn.Module, card: ModelCard, precision: str = "float32"
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise UserInputError(
                f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}"
            )
        self.network = network
        self.card = card
        #: "float32", or "bfloat16" / "float16" autocast of the network (the runner falls back
        #: to float32 when a map comes out non-finite).
        self.precision = precision
        self.intensity = dict(card.intensity)
        if self.intensity.get("kind") == "scale_range":
            missing = {"a_min", "a_max"} - {k for k, v in self.intensity.items() if v is not None}
            if missing:
                raise UserInputError(
                    f"scale_range intensity preprocessing lacks {sorted(missing)}; add them to the model card"
                )
        self.frozen_statistics: tuple[torch.Tensor, torch.Tensor] | None = None
        self.region: np.ndarray | None = None
        self._plan: WindowPlan | None = None
        #: explicit zero padding (before, after) per axis of the preprocessed input, instead of
        #: padding it symmetrically to ``size_divisible``: set on the forward of a crop of a
        #: larger input (:meth:`on_crop`), so that the crop gets the padding it has there
        self.padding: tuple[tuple[int, int], ...] | None = None

    @property
    def sliding(self) -> bool:
        return self.card.roi_size is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        if self.padding is not None:
            x, crop = pad_explicitly(x, self.padding)
        else:
            x, crop = pad_to_multiple(x, self.card.size_divisible)
        if self.sliding:
            logits = self.plan(x).infer(x, self._network, self.card.sw_batch_size)
        else:
            logits = self._network(x)
        return logits[crop]

    def on_crop(self, padding: tuple[tuple[int, int], ...]) -> SegmentationForward:
        """The same model for a crop of the input: same network, precision and frozen
        intensity statistics, with the crop's ``padding`` (see :attr:`padding`)."""
        cropped = SegmentationForward(self.network, self.card, self.precision)
        cropped.frozen_statistics = self.frozen_statistics
        cropped.padding = tuple((int(a), int(b)) for a, b in padding)
        return cropped

    def restrict_to(self, region: np.ndarray | None) -> None:
        """Run only the sliding windows that touch ``region`` (bool, model grid); None: all.

        Exact for every score computed on ``region``: its voxels are covered by no other
        window. No effect on whole-volume models, whose every output voxel may depend on every
        input voxel.
        """
        self.region = None if region is None else np.asarray(region, dtype=bool)
        self._plan = None

    def plan(self, padded: torch.Tensor) -> WindowPlan:
        """The window plan for this (preprocessed, padded-to-divisible) input."""
        return self.plan_for(tuple(padded.shape[2:]), padded.device, padded.dtype)

    def plan_for(
        self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> WindowPlan:
        """The window plan for a padded-to-divisible spatial shape (cached)."""
        plan = self._plan
        if plan is None or (plan.input_shape, plan.count.device, plan.count.dtype) != (
            shape,
            device,
            dtype,
        ):
            card = self.card
            self._plan = WindowPlan(
                shape,
                card.roi_size,
                card.overlap,
                card.sw_mode,
                device=device,
                dtype=dtype,
            )
            if self.region is not None:
                region = np.zeros(shape, dtype=bool)
                region[divisible_crop(self.region.shape, card.size_divisible)] = self.region
                self._plan.restrict(self._plan.windows_touching(region))
        return self._plan

    def input_support(self, spatial_shape: Sequence[int]) -> np.ndarray | None:
        """Bool mask of the input voxels the restricted forward reads; None: all of them."""
        if not self.sliding or self.region is None:
            return None
        return self._plan_of(spatial_shape).support()[
            divisible_crop(spatial_shape, self.card.size_divisible)
        ]

    def window_usage(self, spatial_shape: Sequence[int]) -> dict[str, int] | None:
        """How many sliding windows run, of how many; None for whole-volume models."""
        if not self.sliding:
            return None
        plan = self._plan_of(spatial_shape)
        return {"used": len(plan.indices), "total": len(plan.slices)}

    def _plan_of(self, spatial_shape: Sequence[int]) -> WindowPlan:
        """The plan an input of this (unpadded) shape gets, without allocating the input."""
        multiple = self.card.size_divisible
        padded = tuple(n + (-n) % multiple if multiple > 1 else n for n in spatial_shape)
        parameter = next(self.network.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        return self.plan_for(padded, device, torch.float32)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """The card's intensity preprocessing (MONAI's semantics, on a batch)."""
        i = self.intensity
        if i.get("kind") == "zscore":
            return _zscore(
                x, bool(i.get("nonzero")), bool(i.get("channel_wise")), self.frozen_statistics
            )
        if i.get("kind") == "scale_range":
            return _scale_range(
                x, i["a_min"], i["a_max"], i.get("b_min"), i.get("b_max"), i.get("clip")
            )
        return x

    def freeze_statistics(self, x: torch.Tensor) -> None:
        """Fix the z-score statistics to those of ``x`` (the unperturbed input, batch of one)."""
        i = self.intensity
        if i.get("kind") == "zscore":
            self.frozen_statistics = _zscore_statistics(
                x, bool(i.get("nonzero")), bool(i.get("channel_wise"))
            )

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "float32":
            out = self.network(x)
        else:
            with torch.autocast(device_type=x.device.type, dtype=PRECISIONS[self.precision]):
                out = self.network(x)
        # deep-supervision networks may return several heads; the first is the prediction
        out = out[0] if isinstance(out, (list, tuple)) else out
        return out.float()


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
        model_shape = tuple(
            max(1, round(n * s / t)) for n, s, t in zip(input_shape, spacing, target)
        )
    model_spacing = tuple(
        s if n == m else ((n - 1) * s / (m - 1) if m > 1 else n * s)
        for n, m, s in zip(input_shape, model_shape, spacing)
    )
    info = ResampleInfo(input_shape, model_shape, spacing, model_spacing)
    if not info.identity:
        x = F.interpolate(x, size=model_shape, mode="trilinear", align_corners=True)
    return x, info


def restore_input_grid(
    t: torch.Tensor, info: ResampleInfo, mode: str = "trilinear"
) -> torch.Tensor:
    """(B, K, *S') on the model grid -> (B, K, *input shape); the inverse of the resample.

    ``mode`` is "trilinear" (probabilities, logits, attributions) or "nearest" (labels, any
    dtype); both use the same corner-aligned mapping as :func:`resample_to_model_grid`.
    """
    if info.identity:
        return t
    if mode == "trilinear":
        return F.interpolate(t, size=info.input_shape, mode="trilinear", align_corners=True)
    if mode != "nearest":
        raise UserInputError(f"unknown resampling mode {mode!r}; use 'trilinear' or 'nearest'")
    for axis, (m, n) in enumerate(zip(info.model_shape, info.input_shape)):
        if m != n:
            position = torch.arange(n, dtype=torch.float64) * ((m - 1) / max(n - 1, 1))
            index = position.round().long().clamp(0, m - 1).to(t.device)
            t = t.index_select(axis + 2, index)
    return t


@dataclass
class SegmentationResult:
    """The model's output on one volume.

    Attributes:
        logits: (1, K, *S') on the model grid, detached, on the CPU.
        probabilities: (K, I, J, K) float32 on the input grid.
        labelmap: (I, J, K) uint8 on the input grid: argmax for softmax models; for sigmoid
            models the highest channel index with probability > 0.5, 0 elsewhere.
    """

    logits: torch.Tensor
    probabilities: np.ndarray
    labelmap: np.ndarray


def segment(
    model: LoadedModel, volume: Volume, device: str | torch.device = "cpu"
) -> SegmentationResult:
    """Segment ``volume`` with a :class:`~TorchEsegetaLib.models.LoadedModel`; results on the input grid."""
    card = model.card
    check_input(volume, card)
    target_device = resolve_device(device)
    x, info = resample_to_model_grid(volume, card)
    forward = SegmentationForward(model.network, card)
    with out_of_memory_guard(target_device), torch.no_grad():
        model.network.to(target_device)
        try:
            logits = forward(x.to(target_device)).float()
            probabilities = restore_input_grid(
                probabilities_from_logits(logits, card.activation), info
            )
        finally:
            model.network.to("cpu")  # a LoadedModel stays on the CPU between runs
    probabilities_np = probabilities[0].cpu().numpy().astype(np.float32)
    return SegmentationResult(
        logits=logits.cpu(),
        probabilities=probabilities_np,
        labelmap=labelmap_from_probabilities(probabilities_np, card.activation),
    )


def probabilities_from_logits(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """Softmax over channels or elementwise sigmoid, as the card says."""
    return torch.softmax(logits, dim=1) if activation == "softmax" else torch.sigmoid(logits)


def labelmap_from_probabilities(probabilities: np.ndarray, activation: str) -> np.ndarray:
    """(K, *S) probabilities -> (*S) labels (uint8, uint16 beyond 256 classes)."""
    dtype = np.uint8 if probabilities.shape[0] <= 256 else np.uint16
    if activation == "softmax":
        return np.argmax(probabilities, axis=0).astype(dtype)
    above = probabilities > 0.5
    highest = probabilities.shape[0] - 1 - np.argmax(above[::-1], axis=0)
    return np.where(above.any(axis=0), highest, 0).astype(dtype)


def check_input(volume: Volume, card: ModelCard) -> None:
    """Raise a :class:`UserInputError` when the model cannot run on ``volume``."""
    from .io import check_finite

    if volume.channels != card.in_channels:
        raise UserInputError(
            f"the model expects {card.in_channels} input channel(s) but got {volume.channels} "
            "image(s); pass one --image per channel"
        )
    check_finite(volume, "image")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N' -> a usable device."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match:
        raise UserInputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserInputError(
            f"device {name!r} needs CUDA, which this PyTorch installation cannot use; "
            "run with --device cpu (or auto), or install a CUDA build of PyTorch"
        )
    count = torch.cuda.device_count()
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise UserInputError(
            f"device {name!r} does not exist: this machine has {count} CUDA device(s); "
            f"use cuda:0 to cuda:{count - 1}"
        )
    return torch.device(text)


@contextmanager
def out_of_memory_guard(device: torch.device) -> Iterator[None]:
    """Turn running out of memory into an :class:`OutOfMemoryError` that says what to change."""
    from .engine import is_out_of_memory

    try:
        yield
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        raise OutOfMemoryError(
            f"the model ran out of memory on {device}; use a smaller sliding-window roi_size or "
            "sw_batch_size in the model card, or run on the CPU (--device cpu)"
        ) from error


def _zscore_statistics(
    x: torch.Tensor, nonzero: bool, channel_wise: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (zero std -> 1) per sample (and per channel), detached, MONAI's way."""
    dims = tuple(range(2 if channel_wise else 1, x.ndim))
    data = x.detach().float()
    mask = (data != 0) if nonzero else torch.ones_like(data, dtype=torch.bool)
    count = mask.sum(dim=dims, keepdim=True).clamp_min(1)
    mean = torch.where(mask, data, 0).sum(dim=dims, keepdim=True) / count
    variance = torch.where(mask, (data - mean) ** 2, 0).sum(dim=dims, keepdim=True) / count
    std = variance.sqrt()
    return mean, torch.where(std == 0, torch.ones_like(std), std)


def _zscore(
    x: torch.Tensor,
    nonzero: bool,
    channel_wise: bool,
    statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """MONAI NormalizeIntensity per sample (and per channel); statistics detached (see class doc)."""
    if statistics is None:
        statistics = _zscore_statistics(x, nonzero, channel_wise)
    mean, std = statistics
    mask = (x.detach() != 0) if nonzero else torch.ones_like(x, dtype=torch.bool)
    return torch.where(mask, (x - mean) / std, x)


def _scale_range(
    x: torch.Tensor,
    a_min: float,
    a_max: float,
    b_min: float | None = None,
    b_max: float | None = None,
    clip: bool = False,
) -> torch.Tensor:
    """MONAI ScaleIntensityRange; clipping has zero gradient where the model saw no change."""
    if a_max == a_min:
        return x - a_min + (b_min or 0.0)
    x = (x - a_min) / (a_max - a_min)
    if b_min is not None and b_max is not None:
        x = x * (b_max - b_min) + b_min
    if clip and (b_min is not None or b_max is not None):
        x = torch.clamp(x, min=b_min, max=b_max)
    return x
