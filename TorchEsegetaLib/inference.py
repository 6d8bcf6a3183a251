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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .card import ModelCard
from .errors import OutOfMemoryError, UserInputError
from .volume import Volume
from .windows import PairedPass, WindowCanvas, WindowPlan

if TYPE_CHECKING:
    from .models import LoadedModel


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SegmentationForward(torch.nn.Module):
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
            x, crop = _pad_explicitly(x, self.padding)
        else:
            x, crop = _pad_to_multiple(x, self.card.size_divisible)
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
                region[_divisible_crop(self.region.shape, card.size_divisible)] = self.region
                self._plan.restrict(self._plan.windows_touching(region))
        return self._plan

    def input_support(self, spatial_shape: Sequence[int]) -> np.ndarray | None:
        """Bool mask of the input voxels the restricted forward reads; None: all of them."""
        if not self.sliding or self.region is None:
            return None
        return self._plan_of(spatial_shape).support()[
            _divisible_crop(spatial_shape, self.card.size_divisible)
        ]

    def window_usage(self, spatial_shape: Sequence[int]) -> dict[str, int] | None:
        """How many sliding windows run, of how many; None for whole-volume models."""
        if not self.sliding:
            return None
        plan = self._plan_of(spatial_shape)
        return {"used": len(plan.indices), "total": len(plan.slices)}

    def windows_per_pass(self, spatial_shape: Sequence[int]) -> int:
        """How many windows one example's pass runs (1 for whole-volume models)."""
        return len(self._plan_of(spatial_shape).indices) if self.sliding else 1

    def blend_windows(
        self,
        maps: torch.Tensor,
        spatial_shape: Sequence[int],
        upsample: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Maps computed per sliding window (B * windows in use, C, ...), example-major in the
        order the windows run, blended onto the model grid of an input of ``spatial_shape``
        with the inferer's weights: each window's map weighted by the importance map, the sum
        divided by the weight of all windows at each voxel. ``upsample`` brings maps on a
        layer's grid to the window's size, a window batch at a time (never all at once)."""
        plan = self._plan_of(spatial_shape)
        used = len(plan.indices)
        if maps.shape[0] % used:
            raise ValueError(f"{maps.shape[0]} maps are not a whole number of {used} windows")
        examples = maps.shape[0] // used
        canvas = WindowCanvas(plan, examples, maps.shape[1], plan.count.device, maps.dtype)
        rows = [row for batch in plan.window_batches(examples, used) for row in batch]
        step = max(1, int(self.card.sw_batch_size))
        for start in range(0, len(rows), step):
            part = maps[start : start + step]
            canvas.add(rows[start : start + step], upsample(part) if upsample else part)
        return self.canvas_result(canvas, spatial_shape)

    def window_canvas(
        self, spatial_shape: Sequence[int], examples: int, channels: int, dtype: torch.dtype
    ) -> WindowCanvas:
        """An empty blend of window maps for inputs of ``spatial_shape`` (see
        :meth:`layer_windows`); :meth:`canvas_result` gives the blended maps."""
        plan = self._plan_of(spatial_shape)
        return WindowCanvas(plan, examples, channels, plan.count.device, dtype)

    def canvas_result(self, canvas: WindowCanvas, spatial_shape: Sequence[int]) -> torch.Tensor:
        """The blended maps of ``canvas`` on the model grid of an input of ``spatial_shape``."""
        return canvas.result()[self._model_grid(spatial_shape)]

    def _model_grid(self, spatial_shape: Sequence[int]) -> tuple[slice, ...]:
        """Where the input sits in its padded-to-divisible grid, as an index of (B, C, ...)."""
        crop = _divisible_crop(spatial_shape, self.card.size_divisible)
        return (slice(None), slice(None), *crop)

    def layer_windows(
        self,
        inputs: Sequence[torch.Tensor],
        target: Callable[[torch.Tensor], torch.Tensor],
        layer: torch.nn.Module,
        gradients: Sequence[bool],
    ) -> Iterator[tuple[list[tuple[slice, ...]], list[tuple[torch.Tensor, torch.Tensor | None]]]]:
        """A layer's feature maps, one window batch at a time (sliding-window models).

        ``inputs`` are inputs of one shape, run in lockstep (a path point, a noisy input and a
        baseline: the same windows of each come together). Yields, per window batch: the
        windows' index tuples (as :meth:`WindowPlan.window_batches`: one example's windows at
        a time), and for each input the layer's output on those windows and, where
        ``gradients`` says so, the gradient of the target score of the *whole blended
        prediction* with respect to that output (the score's gradient with respect to the
        output, shared by the inferer's weights, pulled back through this window batch alone).
        Peak memory: one window batch's graph.
        """
        multiple = self.card.size_divisible
        with torch.no_grad():
            prepared = [_pad_to_multiple(self.preprocess(x.detach()), multiple) for x in inputs]
        plan = self.plan(prepared[0][0])
        padded = [plan.pad(x) for x, _ in prepared]
        count = plan.count.to(padded[0].device, padded[0].dtype)
        upstream = [
            plan.pad(self._upstream(x, crop, plan, target)) / count if wanted else None
            for (x, crop), wanted in zip(prepared, gradients)
        ]
        captured: list[torch.Tensor] = []

        def keep(_module, _inputs, output):
            captured.append(output)
            # the network goes on with a copy: a later in-place operation cannot change it
            return output.clone() if isinstance(output, torch.Tensor) else None

        handle = layer.register_forward_hook(keep)
        try:
            batches = plan.window_batches(inputs[0].shape[0], self.card.sw_batch_size, True)
            for rows in batches:
                maps = []
                for volume, weights in zip(padded, upstream):
                    captured.clear()
                    wanted = weights is not None
                    data = torch.cat([volume[r] for r in rows]).requires_grad_(wanted)
                    with torch.set_grad_enabled(wanted):
                        prediction = self._network(data)
                    if len(captured) != 1 or not isinstance(captured[0], torch.Tensor):
                        raise UserInputError(
                            f"the layer ran {len(captured)} times in one network call; a layer "
                            "map needs one feature map per network input: choose another layer"
                        )
                    activation, grads = captured[0], None
                    if weights is not None:
                        share = torch.cat([weights[r] for r in rows]) * plan.importance
                        (grads,) = torch.autograd.grad(
                            prediction, activation, grad_outputs=share, allow_unused=True
                        )
                        grads = torch.zeros_like(activation) if grads is None else grads
                    maps.append((activation.detach(), grads))
                yield rows, maps
        finally:
            handle.remove()

    def _plan_of(self, spatial_shape: Sequence[int]) -> WindowPlan:
        """The plan an input of this (unpadded) shape gets, without allocating the input."""
        multiple = self.card.size_divisible
        padded = tuple(n + (-n) % multiple if multiple > 1 else n for n in spatial_shape)
        parameter = next(self.network.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        return self.plan_for(padded, device, torch.float32)

    def score_gradients(
        self, x: torch.Tensor, target: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(scores, d scores / d x) window by window for sliding-window models; None otherwise.

        Equal to differentiating through the whole sliding-window inference, with peak memory
        set by the window batch instead of the volume (see :mod:`TorchEsegetaLib.windows`).
        """
        if not self.sliding:
            return None
        with torch.enable_grad():
            raw = x.detach().requires_grad_(True)
            prepared, crop = _pad_to_multiple(self.preprocess(raw), self.card.size_divisible)
            plan = self.plan(prepared)
            full = self._upstream(prepared, crop, plan, target)
            grad_prepared, blended, _ = plan.input_gradients(
                prepared, self._network, full, self.card.sw_batch_size
            )
            (grad,) = torch.autograd.grad(prepared, raw, grad_outputs=grad_prepared)
        with torch.no_grad():
            scores = target(blended[crop])
        return scores, grad

    def _upstream(
        self,
        prepared: torch.Tensor,
        crop: tuple[slice, ...],
        plan: WindowPlan,
        target: Callable[[torch.Tensor], torch.Tensor],
        through: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The score's gradient with respect to the blended output, on the padded grid
        (B, K, *prepared spatial shape): known up front for a linear target, otherwise from one
        inference without a graph. ``through(logits)`` replaces the gradient of a non-linear
        target by another upstream quantity (DeepLIFT's multipliers)."""
        linear = getattr(target, "output_gradient", None)
        upstream = (
            linear(self.card.out_channels, prepared.device, prepared.dtype) if linear else None
        )
        if upstream is None:
            with torch.no_grad():
                logits = plan.infer(prepared.detach(), self._network, self.card.sw_batch_size)
            if through is not None:
                upstream = through(logits[crop])
            else:
                logits = logits[crop].detach().requires_grad_(True)
                with torch.enable_grad():
                    (upstream,) = torch.autograd.grad(target(logits).sum(), logits)
        else:
            upstream = upstream.expand(prepared.shape[0], -1, *upstream.shape[2:])
        full = torch.zeros(
            (prepared.shape[0], upstream.shape[1], *prepared.shape[2:]),
            dtype=prepared.dtype,
            device=prepared.device,
        )
        full[crop] = upstream.to(full.dtype)
        return full

    def paired_score_gradients(
        self,
        x: torch.Tensor,
        reference: torch.Tensor,
        target: Callable[[torch.Tensor], torch.Tensor],
        paired: PairedPass,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """DeepLIFT's :meth:`score_gradients`: each step runs on ``x`` and ``reference``
        together through ``paired`` (rules recorded on the reference, applied on the input):
        the intensity preprocessing, every window batch, and the target on the blended
        outputs. Returns (multipliers of the score with respect to ``x``, scores of ``x``,
        scores of ``reference``), equal to DeepLIFT through the whole sliding-window inference
        with peak memory set by the window batch; None for whole-volume models.
        """
        if not self.sliding:
            return None
        multiple = self.card.size_divisible
        with torch.enable_grad():
            raw = x.detach().requires_grad_(True)
            prepared, prepared_reference = paired(self.preprocess, raw, reference.detach())
            prepared, crop = _pad_to_multiple(prepared, multiple)
            prepared_reference, _ = _pad_to_multiple(prepared_reference.detach(), multiple)
            plan = self.plan(prepared)

            def multipliers(logits: torch.Tensor) -> torch.Tensor:
                """The target's own multipliers, between the blended outputs."""
                with torch.no_grad():
                    logits_reference = plan.infer(
                        prepared_reference, self._network, self.card.sw_batch_size
                    )[crop]
                logits = logits.detach().requires_grad_(True)
                scores, _ = paired(target, logits, logits_reference)
                return torch.autograd.grad(scores.sum(), logits)[0]

            full = self._upstream(prepared, crop, plan, target, through=multipliers)
            grad_prepared, blended, blended_reference = plan.input_gradients(
                prepared,
                self._network,
                full,
                self.card.sw_batch_size,
                reference=prepared_reference,
                paired=paired,
            )
            (grad,) = torch.autograd.grad(prepared, raw, grad_outputs=grad_prepared)
        assert blended_reference is not None
        with torch.no_grad():
            scores = target(blended[crop])
            scores_reference = target(blended_reference[crop])
        return grad, scores, scores_reference

    def window_relevance(
        self,
        x: torch.Tensor,
        start: Callable[[torch.Tensor], torch.Tensor],
        call: Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor], torch.Tensor],
        stabilise: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor | None:
        """LRP through the sliding-window inference, window by window (memory set by the
        window batch): ``x`` is the network's input (preprocessed), ``start(logits)`` the
        relevance of the blended logits, ``call(network, windows)`` runs the network under the
        LRP rules. Returns the relevance of ``x``; None for whole-volume models.
        See :meth:`WindowPlan.input_relevance`."""
        if not self.sliding:
            return None
        padded, crop = _pad_to_multiple(x.detach(), self.card.size_divisible)
        plan = self.plan(padded)
        batch = self.card.sw_batch_size
        with torch.no_grad():
            logits = plan.infer(padded, self._network, batch)
        relevance = torch.zeros_like(logits)
        relevance[crop] = start(logits[crop])
        result = plan.input_relevance(
            padded,
            lambda windows: call(self._network, windows),
            relevance,
            logits,
            batch,
            stabilise,
        )
        return result[crop]

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


def _divisible_crop(spatial: Sequence[int], multiple: int) -> tuple[slice, ...]:
    """Where an array of ``spatial`` shape sits inside its padded-to-``multiple`` version."""
    before = [((-n) % multiple) // 2 if multiple > 1 else 0 for n in spatial]
    return tuple(slice(b, b + n) for b, n in zip(before, spatial))


def _pad_explicitly(
    x: torch.Tensor, padding: Sequence[tuple[int, int]]
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial dims by (before, after) each; returns the padded tensor and where
    the input sits in it."""
    if not any(a or b for a, b in padding):
        return x, (slice(None),) * x.ndim
    pads = [p for a, b in reversed(list(padding)) for p in (a, b)]
    crop = (slice(None), slice(None)) + tuple(
        slice(a, a + n) for (a, _), n in zip(padding, x.shape[2:])
    )
    return F.pad(x, pads), crop


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the (preprocessed) spatial dims symmetrically, as MONAI's DivisiblePad does."""
    spatial = x.shape[2:]
    if multiple <= 1 or all(n % multiple == 0 for n in spatial):
        return x, (slice(None),) * x.ndim
    before = [((-n) % multiple) // 2 for n in spatial]
    after = [(-n) % multiple - b for n, b in zip(spatial, before)]
    pads = [p for b, a in zip(reversed(before), reversed(after)) for p in (b, a)]
    crop = (slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(before, spatial))
    return F.pad(x, pads), crop
