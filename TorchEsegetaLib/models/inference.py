"""Segmentation as the model is meant to be run, with every step differentiable where it matters.

The pipeline, split so that explanations can attribute to the raw image intensities:

1. :func:`~.pipeline.model_input` puts the raw image on the model's grid (outside the
   differentiable forward pass): :func:`~.grids.resample_to_model_grid` to the card's spacing, or a
   bundle's geometric transforms (:mod:`.pipeline`); identity when the grids agree;
2. :class:`SegmentationForward` turns raw intensities on that grid into logits: intensity
   preprocessing (:mod:`.intensity`), padding to ``size_divisible``, MONAI's sliding-window
   inferer;
3. :func:`~.grids.restore_input_grid` brings outputs back to the input grid, and
   :mod:`.postprocessing` makes the labelmap.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..engine.windows import WindowPlan, divisible_crop, pad_explicitly, pad_to_multiple
from ..errors import OutOfMemoryError, UserInputError
from ..io.volume import Volume
from . import intensity
from .card import ModelCard
from .input_size import check_input_size, too_small_guard
from .postprocessing import (  # noqa: F401  (part of this module's interface)
    class_mask,
    labelmap_from_probabilities,
    probabilities_from_logits,
    segmentation_outputs,
)
from .window_passes import WindowPasses

if TYPE_CHECKING:
    from ..engine.denormals import DenormalFlush
    from .loading import LoadedModel
    from .pipeline import ModelInput


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SegmentationForward(WindowPasses, torch.nn.Module):
    """Raw intensities (B, C, *S) -> logits (B, K, *S), exactly as the model is meant to be run.

    Differentiable with respect to the input, the sliding-window path included.

    The intensity statistics (z-score mean and std, percentiles) are computed on the input
    itself but *detached*: the forward values equal MONAI's transforms, while gradients treat
    the statistics as constants. Attached, every voxel's gradient would carry a global term (through the mean
    and std of the whole image) that spreads evidence uniformly over the volume and couples
    distant voxels; detached, a gradient map reads as the per-voxel sensitivity of the
    prediction.

    For explanations the runner fixes them on the unperturbed input (:meth:`freeze_statistics`,
    or the statistics :func:`~.pipeline.model_input` took at each step of a bundle's
    preprocessing): from then on each intensity step is one fixed map, fixed from the unperturbed case like
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
        self.intensity_steps = card.intensity_steps()
        for step in self.intensity_steps:
            intensity.check_step(step)
        #: per intensity step, its statistics fixed on the unperturbed input; None: computed
        #: on each input
        self.frozen_statistics: list[intensity.Statistics | None] | None = None
        #: zero padding of a bundle between its intensity steps (see intensity.apply_all)
        self.fills: dict[int, torch.Tensor] = {}
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
            if card.roi_size is None:
                raise ValueError("a window plan needs the card's roi_size (a sliding-window model)")
            plan = WindowPlan(
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
                plan.restrict(plan.windows_touching(region))
            self._plan = plan
        return plan

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
        return intensity.apply_all(self.intensity_steps, x, self.frozen_statistics, self.fills)

    def freeze_statistics(self, x: torch.Tensor) -> None:
        """Fix the intensity statistics to those of ``x`` (the unperturbed input, batch of one)."""
        from .pipeline import staged_statistics

        self.frozen_statistics = staged_statistics(self.intensity_steps, x)

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "float32":
            out = self.network(x)
        else:
            with torch.autocast(device_type=x.device.type, dtype=PRECISIONS[self.precision]):
                out = self.network(x)
        # deep-supervision networks may return several heads; the first is the prediction
        out = out[0] if isinstance(out, (list, tuple)) else out
        return out.float()


@dataclass
class SegmentationResult:
    """The model's output on one volume.

    Attributes:
        logits: (1, K, *S') on the model grid, detached, on the CPU.
        probabilities: (K, I, J, K) float32 on the input grid.
        labelmap: (I, J, K) uint8 on the input grid: the bundle's postprocessing, or argmax
            for mutually exclusive classes, else 1 + the highest channel with probability
            > 0.5, 0 elsewhere (names: :attr:`~.card.ModelCard.label_names`).
        input: the network's input it was computed from (grid and intensity statistics).
        class_masks: (K, I, J, K) bool, each channel's mask after a bundle's postprocessing
            where the classes may overlap; None where the labelmap holds every class.
    """

    logits: torch.Tensor
    probabilities: np.ndarray
    labelmap: np.ndarray
    input: ModelInput | None = None
    class_masks: np.ndarray | None = None

    def class_mask(self, card: ModelCard, class_index: int) -> np.ndarray:
        """One class's (I, J, K) bool mask in this segmentation."""
        return class_mask(self.labelmap, self.class_masks, card, class_index)


def segment(
    model: LoadedModel,
    volume: Volume,
    device: str | torch.device = "cpu",
    prepared: ModelInput | None = None,
    flush_denormals: bool | DenormalFlush = True,
) -> SegmentationResult:
    """Segment ``volume`` with a :class:`~TorchEsegetaLib.models.loading.LoadedModel`; results on the
    input grid. ``prepared``: the network's input, when already made (:func:`~.pipeline.model_input`).
    ``flush_denormals``: on the CPU, compute with denormal floats flushed to zero, once a check
    on a small region found the labelmap unchanged by it (:mod:`.denormal_check`); a run passes
    its own :class:`~TorchEsegetaLib.engine.denormals.DenormalFlush`, checked once for the run."""
    from ..engine.denormals import DenormalFlush
    from .pipeline import model_input

    card = model.card
    check_input(volume, card)
    bind = getattr(model.network, "bind_geometry", None)
    if callable(bind):  # a pipeline whose resampling follows the input's spacing (nnU-Net)
        bind(volume.geometry)
    target_device = resolve_device(device)
    prepared = prepared if prepared is not None else model_input(volume, card)
    model_shape = tuple(prepared.x.shape[2:])
    check_input_size(model.network, card, model_shape, volume.spatial_shape)
    forward = SegmentationForward(model.network, card)
    forward.frozen_statistics = intensity.statistics_on(prepared.statistics, target_device)
    forward.fills = prepared.fills
    flush = DenormalFlush.of(flush_denormals, target_device)
    with (
        out_of_memory_guard(target_device),
        too_small_guard(model_shape),
        torch.no_grad(),
        flush.scope(),
    ):
        model.network.to(target_device)
        try:
            logits = _first_pass(forward, prepared.x.to(target_device), flush).float().cpu()
        finally:
            model.network.to("cpu")  # a LoadedModel stays on the CPU between runs
    probabilities, labelmap, masks = segmentation_outputs(logits, card, prepared.grid)
    return SegmentationResult(logits, probabilities, labelmap, prepared, masks)


def _first_pass(
    forward: SegmentationForward, x: torch.Tensor, flush: DenormalFlush
) -> torch.Tensor:
    """The model's first run on this input, flushing denormals where the check allows: a
    failure says which input it got and what to check."""
    from ..engine.context import is_out_of_memory
    from .denormal_check import check_flush

    try:
        if flush.active and flush.check is None:
            checked = check_flush(forward, x, flush)  # may keep exact arithmetic for the run
            if checked is not None:  # the check ran on the whole input
                return checked
        return forward(x)
    except RuntimeError as error:
        if is_out_of_memory(error):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        card = forward.card
        raise UserInputError(
            f"the network failed on its input of shape {tuple(x.shape)} ({first[:200]}); check "
            f"the model card (in_channels {card.in_channels}, size_divisible "
            f"{card.size_divisible}, roi_size {card.roi_size}) and fix it with --card"
        ) from error


def check_input(volume: Volume, card: ModelCard) -> None:
    """Raise a :class:`UserInputError` when the model cannot run on ``volume``."""
    from ..io.images import check_finite

    if volume.channels != card.in_channels:
        raise UserInputError(_channel_mismatch(volume, card.in_channels))
    check_finite(volume, "image")


def _channel_mismatch(volume: Volume, expected: int) -> str:
    """What is wrong with the input's channel count, naming a 4D or vector file that gave several."""
    several = [s for s in volume.sources if s.channels > 1]
    if volume.channels > expected and several:
        source = several[0]
        kind = "frame" if source.axis == "frames" else "channel"
        what = (
            f"a 4D image with {source.channels} frames"
            if source.axis == "frames"
            else f"a vector image with {source.channels} components per voxel"
        )
        return (
            f"the model expects {expected} input channel(s) but {source.path} is {what}, read as "
            f"{source.channels} channels; pick the {kind}(s) the model takes with --image "
            f"{source.path}:{kind}=N (N from 0 to {source.channels - 1}), one --image per channel"
        )
    return (
        f"the model expects {expected} input channel(s) but got {volume.channels} image(s); pass "
        "one --image per channel"
    )


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
    from ..engine.context import is_out_of_memory

    try:
        yield
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        raise OutOfMemoryError(
            f"the model ran out of memory on {device}; use a smaller sliding-window roi_size or "
            "sw_batch_size in the model card, or run on the CPU (--device cpu)"
        ) from error
