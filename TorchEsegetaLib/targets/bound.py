"""What to explain: a segmentation output reduced to one differentiable score per example.

A :class:`TargetSpec` is what the user asks for (JSON-serialisable, part of a Job). Binding it to
the model's unperturbed output gives a :class:`BoundTarget`: the class, the fixed region of the
model's output grid, and how to score it. The region is fixed once, from the unperturbed
prediction, so perturbed or interpolated inputs are all scored on the same voxels; the score is
a masked mean (or sum) of logits or probabilities, which is smooth in the input. (Thresholding
inside the forward pass, as the original TorchEsegeta wrapper did, makes every input gradient
identically zero.) A contrast target scores one class minus another on the same region.

Where a kind's region comes from: :data:`PREDICTED_REGION_KINDS` use the class's prediction
(as a class target), :mod:`.objects` builds the object targets' regions from the segmentation,
and :func:`region_in_input_grid` the mask, ROI and voxel targets' from what the user gave.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserInputError
from .spec import TargetSpec

if TYPE_CHECKING:
    import torch

    from ..io.volume import Geometry
    from ..models.card import ModelCard
    from ..models.inference import SegmentationResult


#: Target kinds whose region is the prediction of their class (``class_``).
PREDICTED_REGION_KINDS = ("class", "contrast")


@dataclasses.dataclass(eq=False)
class BoundTarget:
    """A target fixed on the unperturbed prediction: ``target(logits) -> (B,)`` scores.

    Attributes:
        class_index: the output channel scored.
        region: (*S) bool, the voxels of the model grid the score is taken over.
        output: "logits" or "probabilities".
        activation: the model's ("softmax", "sigmoid" or "none").
        reduction: "mean" or "sum" over the region.
        versus_index: a contrast target's class B, whose score is subtracted; None otherwise.
        facts: what run.json keeps about the region (a component's seed and size, a band's width).
    """

    class_index: int
    region: torch.Tensor
    output: str
    activation: str
    reduction: str
    versus_index: int | None = None
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self._weights: torch.Tensor | None = None

    @property
    def voxel_count(self) -> int:
        return int(self.region.sum())

    def replace(self, **changes: Any) -> BoundTarget:
        """The same target with some fields changed (a crop's region, another class)."""
        return dataclasses.replace(self, **changes)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.voxel_scores(logits).flatten(1).sum(dim=1)

    def voxel_scores(
        self, logits: torch.Tensor, box: tuple[slice, ...] | None = None
    ) -> torch.Tensor:
        """Each voxel's share of the score, (B, *S): the scored value times the region weight.

        ``box``: ``logits`` are those of this box of the output grid only (the score of a part
        of the output, as window reuse re-scores the part a perturbation changed)."""
        values = self._scored(logits, self.class_index)
        if self.versus_index is not None:
            values = values - self._scored(logits, self.versus_index)
        weights = self.region_weights(values.device, values.dtype)
        return values * (weights if box is None else weights[box])

    def channel_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The score split over the output channels, (B, K, *S), summing to it: where relevance
        starts (LRP). Class A's part, and for a contrast minus class B's."""
        import torch

        start = torch.zeros_like(logits)
        weights = self.region_weights(logits.device, logits.dtype)
        start[:, self.class_index] = self._scored(logits, self.class_index) * weights
        if self.versus_index is not None:
            start[:, self.versus_index] = -self._scored(logits, self.versus_index) * weights
        return start

    def _scored(self, logits: torch.Tensor, channel: int) -> torch.Tensor:
        import torch

        if self.output == "logits" or self.activation == "none":
            return logits[:, channel]  # "none": the outputs are probabilities
        if self.activation == "softmax":
            return torch.softmax(logits, dim=1)[:, channel]
        return torch.sigmoid(logits[:, channel])

    def output_gradient(
        self, channels: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """d score / d logits as a (1, channels, *S) tensor when the score is linear in the
        logits (a logit target), else None (it then depends on the logits themselves)."""
        import torch

        if self.output != "logits":
            return None
        weights = self.region_weights(device, dtype)
        gradient = torch.zeros((1, channels, *weights.shape), device=device, dtype=dtype)
        gradient[0, self.class_index] = weights
        if self.versus_index is not None:
            gradient[0, self.versus_index] = -weights
        return gradient

    def region_weights(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if self._weights is None or self._weights.device != device or self._weights.dtype != dtype:
            weights = self.region.to(device=device, dtype=dtype)
            if self.reduction == "mean":
                weights = weights / weights.sum()
            self._weights = weights
        return self._weights

    def describe(self, card: ModelCard) -> dict[str, Any]:
        versus = {}
        if self.versus_index is not None:
            versus = {
                "versus": card.class_names[self.versus_index],
                "versus_index": self.versus_index,
            }
        return {
            "class": card.class_names[self.class_index],
            "class_index": self.class_index,
            **versus,
            "output": self.output,
            "activation": self.activation,
            "reduction": self.reduction,
            "region_voxels": self.voxel_count,
            **self.facts,
        }


def default_class(card: ModelCard) -> int:
    return 1 if card.exclusive and card.out_channels > 1 else 0


def target_class(spec: TargetSpec, card: ModelCard) -> int:
    """The output channel a target scores: its class, or the card's default foreground."""
    return default_class(card) if spec.class_ is None else card.class_index(spec.class_)


def versus_class(spec: TargetSpec, card: ModelCard, class_index: int) -> int | None:
    """A contrast target's class B (checked to differ from A), else None."""
    if spec.kind != "contrast" or spec.versus is None:
        return None
    versus = card.class_index(spec.versus)
    if versus == class_index:
        raise UserInputError(
            f"a contrast target needs two different classes, got {card.class_names[versus]!r} "
            "twice; write contrast:A,B with B another class"
        )
    return versus


def nothing_predicted(card: ModelCard, class_index: int, where: str = "") -> UserInputError:
    return UserInputError(
        f"the model predicts no voxel of class {card.class_names[class_index]!r} in this image{where}, "
        "so there is nothing to explain; choose another class or target a mask, ROI or voxel"
    )


def predicted_mask(logits: torch.Tensor, class_index: int, activation: str) -> torch.Tensor:
    """The unperturbed prediction of one class, (*S) bool, from (1, K, *S) logits (for
    activation "none": probabilities, mutually exclusive when there are several channels)."""
    if activation == "softmax" or (activation == "none" and logits.shape[1] > 1):
        return logits[0].argmax(dim=0) == class_index
    return logits[0, class_index] > (0.5 if activation == "none" else 0)


def region_in_input_grid(spec: TargetSpec, geometry: Geometry) -> np.ndarray:
    """The region of a mask/roi/voxel target as a bool (I, J, K) array on the input grid."""
    shape = geometry.size
    if spec.kind == "mask":
        if spec.mask_array is not None:
            labels = np.asarray(spec.mask_array)
            if labels.shape != tuple(shape):
                raise UserInputError(
                    f"the target mask has shape {labels.shape} but the image has {tuple(shape)}; "
                    "resample the mask onto the image grid"
                )
        else:
            from ..io.images import read_label

            if spec.mask is None:
                raise ValueError("a mask target without its mask")
            labels = read_label(spec.mask, like=geometry)
        region = labels == spec.label if spec.label is not None else labels != 0
        where = f"label {spec.label} of the mask" if spec.label is not None else "the mask"
        if not region.any():
            raise UserInputError(
                f"{where} is empty: the target has no voxel; pick a label present in the mask"
            )
        return region
    if spec.kind == "roi":
        low, high, _ = roi_box(spec, geometry)
        region = np.zeros(shape, dtype=bool)
        region[low[0] : high[0] + 1, low[1] : high[1] + 1, low[2] : high[2] + 1] = True
        return region
    region = np.zeros(shape, dtype=bool)
    region[voxel_index(spec, geometry)] = True
    return region


def voxel_index(spec: TargetSpec, geometry: Geometry) -> tuple[int, int, int]:
    """A voxel or component target's position as the index of the input voxel holding it."""
    shape = geometry.size
    index = np.floor(_to_index(spec.voxel, spec.coordinates, geometry) + 0.5).astype(int)
    if np.any(index < 0) or np.any(index >= np.asarray(shape)):
        raise UserInputError(
            f"the voxel {spec.voxel} ({spec.coordinates}) lies outside the image (size {tuple(shape)}); "
            "give a position inside the image"
        )
    return (int(index[0]), int(index[1]), int(index[2]))


def roi_box(spec: TargetSpec, geometry: Geometry) -> tuple[list[int], list[int], list[str]]:
    """An ROI target's box on the input grid: its first and last voxel (inclusive, ordered,
    inside the image) and a note for each liberty taken with the corners as given (reversed
    order, parts outside the image)."""
    shape = np.asarray(geometry.size)
    a, b = (
        _to_index(spec.start, spec.coordinates, geometry),
        _to_index(spec.end, spec.coordinates, geometry),
    )
    unclipped_low = np.floor(np.minimum(a, b) + 0.5).astype(int)
    unclipped_high = np.floor(np.maximum(a, b) + 0.5).astype(int)
    low, high = np.clip(unclipped_low, 0, None), np.minimum(unclipped_high, shape - 1)
    if np.any(high < low):
        raise UserInputError(
            f"the ROI {spec.start}..{spec.end} ({spec.coordinates}) lies outside the image "
            f"(size {tuple(int(n) for n in shape)} voxels); give corners inside the image"
        )
    low_list, high_list = [int(v) for v in low], [int(v) for v in high]
    box = f"voxels {tuple(low_list)} to {tuple(high_list)}"
    notes = []
    axes = [
        name
        for name, s, e in zip(
            "ijk" if spec.coordinates == "voxel" else "xyz", spec.start or (), spec.end or ()
        )
        if s > e
    ]
    if axes:
        notes.append(
            f"the ROI's start corner lies after its end corner along {', '.join(axes)} "
            f"({spec.coordinates} coordinates): the corners were swapped there; explained {box}"
        )
    if np.any(low != unclipped_low) or np.any(high != unclipped_high):
        notes.append(
            f"the ROI reaches outside the image (size {tuple(int(n) for n in shape)}): "
            f"explained its part inside, {box}"
        )
    return low_list, high_list, notes


def _to_index(
    point: tuple[float, float, float] | None, coordinates: str, geometry: Geometry
) -> np.ndarray:
    if point is None:  # the spec's checks make every ROI and voxel target carry its points
        raise ValueError("a target point is missing")
    point_array = np.asarray(point, dtype=np.float64)
    if coordinates == "voxel":
        return point_array
    if coordinates == "ras":
        point_array = point_array * np.array([-1.0, -1.0, 1.0])
    return geometry.physical_to_index(point_array)


def bind_target(
    spec: TargetSpec,
    card: ModelCard,
    logits: torch.Tensor,
    input_region: np.ndarray | None = None,
    facts: dict[str, Any] | None = None,
) -> BoundTarget:
    """Fix the target on the unperturbed ``logits`` (1, K, *S) of the model grid.

    Args:
        spec: the user's target.
        card: the model card (class names, activation).
        logits: the model's unperturbed output on the model grid.
        input_region: the region already mapped onto the model grid as a bool array of shape
            ``logits.shape[2:]``: needed for every kind but class and contrast targets; for
            those, their class's mask in the postprocessed segmentation (else the prediction
            of ``logits``).
        facts: what run.json keeps about the region (see :mod:`.objects`).
    """
    import torch

    class_index = target_class(spec, card)
    if spec.kind in PREDICTED_REGION_KINDS and input_region is None:
        region = predicted_mask(logits, class_index, card.activation)
        if not bool(region.any()):
            raise nothing_predicted(card, class_index)
    else:
        if input_region is None:
            raise ValueError(f"a {spec.kind} target needs its region on the model grid")
        region = torch.as_tensor(np.asarray(input_region, dtype=bool))
        if tuple(region.shape) != tuple(logits.shape[2:]):
            raise ValueError(
                f"region shape {tuple(region.shape)} does not match the output {tuple(logits.shape[2:])}"
            )
        if not bool(region.any()):
            raise UserInputError("the target region is empty; give a non-empty mask, ROI or voxel")
    return BoundTarget(
        class_index,
        region.to(logits.device),
        spec.output,
        card.activation,
        spec.reduction,
        versus_index=versus_class(spec, card, class_index),
        facts=dict(facts or {}),
    )


def resolve_target(
    spec: TargetSpec, card: ModelCard, segmentation: SegmentationResult, geometry: Geometry
) -> tuple[BoundTarget, np.ndarray]:
    """The target bound on the unperturbed output of the model grid (``segmentation.logits``),
    and its region on the input grid (``segmentation.input.grid`` maps one onto the other, see
    :func:`~TorchEsegetaLib.models.grids.resample_to_model_grid`).

    A class target's region comes from the prediction on the model grid and is mapped back to
    the input grid; when the card has a bundle's postprocessing, from the class in the
    postprocessed segmentation instead, so that what is explained is the segmentation shown.
    A mask, ROI or voxel target's region comes from the input grid, mapped onto the model's.
    """
    if segmentation.input is None:
        raise ValueError("a segmentation without its model input")
    logits, info = segmentation.logits, segmentation.input.grid
    predicted = spec.kind in PREDICTED_REGION_KINDS
    if predicted and not card.postprocessing:
        from ..models.grids import restore_input_grid

        bound = bind_target(spec, card, logits)
        restored = restore_input_grid(bound.region[None, None].float(), info)[0, 0]
        return bound, np.asarray(restored.cpu() >= 0.5)
    facts: dict[str, Any] = {}
    if predicted:
        # the class as the bundle's postprocessing left it (largest component, holes filled, ...)
        class_index = target_class(spec, card)
        input_region = segmentation.class_mask(card, class_index)
        if not input_region.any():
            raise nothing_predicted(card, class_index, " after its postprocessing")
    elif spec.kind in ("mask", "roi", "voxel"):
        input_region = region_in_input_grid(spec, geometry)
    else:
        from .objects import REGIONS

        input_region, facts = REGIONS[spec.kind](spec, card, segmentation, geometry)
        if "class_index" in facts:  # a component's class, read where the user clicked
            spec = dataclasses.replace(spec, class_=facts.pop("class_index"))
    region = region_on_model_grid(input_region, info)
    bound = bind_target(spec, card, logits, region, facts)
    return bound, input_region


def region_on_model_grid(region: np.ndarray, info: Any) -> np.ndarray:
    """Map a bool input-grid region onto the model grid, never losing it to the resampling."""
    if info.identity:
        return region
    import torch

    from ..models.grids import ResampleInfo

    mask = torch.from_numpy(region.astype(np.float32))[None, None]
    resized = info.to_model_grid(mask)[0, 0].numpy()
    for threshold in (0.5, 1e-6):
        mapped = resized >= threshold
        if mapped.any():
            return mapped
    model_shape = np.asarray(resized.shape)
    mapped = np.zeros(resized.shape, dtype=bool)
    if isinstance(info, ResampleInfo):
        # A region smaller than a model voxel: keep the model voxel nearest to its centre.
        centre = np.argwhere(region).mean(axis=0)
        scale = (model_shape - 1) / np.maximum(np.asarray(info.input_shape) - 1, 1)
        mapped[tuple(np.clip(np.round(centre * scale).astype(int), 0, model_shape - 1))] = True
        return mapped
    raise UserInputError(
        "the target region lies outside what the model sees of the image (its preprocessing "
        "crops it away); choose a region inside the model's field of view"
    )
