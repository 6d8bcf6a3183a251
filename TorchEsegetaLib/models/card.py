"""The model card: what the engine must know about a segmentation model to run and explain it.

A card travels with every loaded model. It is plain data (JSON-serialisable through
:meth:`ModelCard.to_dict`) so it can be written into run.json and shown in the Slicer panel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np

from ..errors import UserInputError

INTENSITY_KINDS = ("none", "zscore", "scale_range")
ACTIVATIONS = ("softmax", "sigmoid", "none")
#: The steps of a ``preprocessing`` list: geometric ones run by MONAI on the image before the
#: network's input is taken (inverted for outputs and maps), intensity ones inside the
#: differentiable forward pass (see :mod:`.pipeline` and :mod:`.intensity`).
GEOMETRIC_STEPS = (
    "orientation",
    "spacing",
    "resize",
    "crop_foreground",
    "spatial_pad",
    "divisible_pad",
)
INTENSITY_STEPS = ("zscore", "scale_range", "percentiles", "scale_intensity", "affine")
POSTPROCESSING_STEPS = ("transform", "invert")


@dataclass
class ModelCard:
    """Description of a segmentation model.

    Attributes:
        in_channels: number of input channels (co-registered images).
        out_channels: number of output channels (classes, background included for softmax).
        class_names: one name per output channel.
        activation: "softmax" (mutually exclusive classes), "sigmoid" (independent labels), or
            "none": the network's outputs are probabilities already (labels by argmax).
        intensity: intensity preprocessing applied inside the differentiable forward pass, so
            attributions refer to the raw image intensities. ``{"kind": "none"}``,
            ``{"kind": "zscore", "nonzero": bool, "channel_wise": bool}`` or
            ``{"kind": "scale_range", "a_min", "a_max", "b_min", "b_max", "clip": bool}``.
        spacing: target voxel spacing in mm along (i, j, k); None keeps the input grid.
        preprocessing: instead of ``spacing`` and ``intensity``, a MONAI bundle's whole
            preprocessing as ordered steps ``{"kind": ..., **MONAI's arguments}``: geometric
            kinds (:data:`GEOMETRIC_STEPS`, run by MONAI's own transforms) and intensity kinds
            (:data:`INTENSITY_STEPS`, applied inside the forward pass).
        postprocessing: how the labelmap is made from the network's output, as a bundle does
            it: ``{"kind": "transform", "name": MONAI transform, "args": {...}}`` steps and one
            ``{"kind": "invert", "nearest": bool}`` (back to the input grid); empty: the
            activation, back to the input grid, argmax (or threshold 0.5 for sigmoid).
        roi_size: sliding-window size in voxels; None runs the whole volume at once.
        overlap: sliding-window overlap fraction.
        sw_batch_size: windows per forward pass of the sliding-window inferer.
        sw_mode: blending mode of the sliding-window inferer ("constant" or "gaussian").
        size_divisible: input sizes the network accepts must be divisible by this; inputs are
            padded (and outputs cropped) when they are not.
        ignored_preprocessing: preprocessing steps of a bundle that the engine cannot apply as
            the bundle does; loading fails on them unless ``allow_unapplied_preprocessing``.
        allow_unapplied_preprocessing: run anyway, with a warning, when a bundle's
            preprocessing cannot be honoured exactly (the model then sees another input).
        name: a short human-readable name.
    """

    in_channels: int = 1
    out_channels: int = 2
    class_names: list[str] = field(default_factory=list)
    activation: str = "softmax"
    intensity: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})
    spacing: tuple[float, float, float] | None = None
    roi_size: tuple[int, int, int] | None = None
    overlap: float = 0.25
    sw_batch_size: int = 1
    sw_mode: str = "constant"
    size_divisible: int = 1
    preprocessing: list[dict[str, Any]] = field(default_factory=list)
    postprocessing: list[dict[str, Any]] = field(default_factory=list)
    ignored_preprocessing: list[str] = field(default_factory=list)
    allow_unapplied_preprocessing: bool = False
    name: str = "model"

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = (
                ["background"] + [f"class {i}" for i in range(1, self.out_channels)]
                if self.exclusive
                else [f"label {i}" for i in range(self.out_channels)]
            )
        if len(self.class_names) != self.out_channels:
            raise UserInputError(
                f"the model card lists {len(self.class_names)} class names for "
                f"{self.out_channels} output channels; give one name per output channel"
            )
        if self.activation not in ACTIVATIONS:
            raise UserInputError(
                f"unknown activation {self.activation!r} in the model card; use one of {ACTIVATIONS}"
            )
        kind = self.intensity.get("kind", "none")
        if kind not in INTENSITY_KINDS:
            raise UserInputError(
                f"unknown intensity preprocessing {kind!r} in the model card; use one of {INTENSITY_KINDS}"
            )
        if self.spacing is not None:
            self.spacing = cast("tuple[float, float, float]", tuple(float(s) for s in self.spacing))
        if self.roi_size is not None:
            self.roi_size = cast("tuple[int, int, int]", tuple(int(s) for s in self.roi_size))
        if not 0 <= self.overlap < 1:
            raise UserInputError(f"sliding-window overlap {self.overlap} must lie in [0, 1)")
        self._check_steps()

    def _check_steps(self) -> None:
        known = {
            "preprocessing": GEOMETRIC_STEPS + INTENSITY_STEPS,
            "postprocessing": POSTPROCESSING_STEPS,
        }
        for name, kinds in known.items():
            for step in getattr(self, name):
                if not isinstance(step, dict) or step.get("kind") not in kinds:
                    raise UserInputError(
                        f"model card {name} step {step!r} needs a 'kind' among {', '.join(kinds)}"
                    )
        if self.preprocessing and (
            self.spacing is not None or self.intensity.get("kind", "none") != "none"
        ):
            raise UserInputError(
                "the model card has both a preprocessing list and spacing/intensity; give "
                "the steps in one place: edit the preprocessing list, or set it to []"
            )

    @property
    def exclusive(self) -> bool:
        """Whether the classes are mutually exclusive (labels by argmax over the channels)."""
        if self.activation == "none":
            return self.out_channels > 1 and not any(
                "threshold" in (step.get("args") or {}) for step in self.postprocessing
            )
        return self.activation == "softmax"

    @property
    def label_names(self) -> list[str]:
        """One name per value of the labelmap, 0 first: the class names for mutually exclusive
        classes (label n is channel n, channel 0 the background); otherwise "background" and
        then the channels' names (label n + 1 is channel n, as MONAI's 0.5 threshold of a
        one-channel sigmoid output gives 1 for the foreground)."""
        return list(self.class_names) if self.exclusive else ["background", *self.class_names]

    def label_of(self, class_index: int) -> int:
        """The labelmap value of an output channel (see :attr:`label_names`)."""
        return class_index if self.exclusive else class_index + 1

    def intensity_steps(self) -> list[dict[str, Any]]:
        """The intensity steps the forward pass applies, in order."""
        if self.preprocessing:
            return [s for s in self.preprocessing if s["kind"] in INTENSITY_STEPS]
        return [] if self.intensity.get("kind", "none") == "none" else [dict(self.intensity)]

    def class_index(self, name_or_index: str | int) -> int:
        """Resolve a class given by name or index; raises a clear error otherwise."""
        if isinstance(name_or_index, int) or str(name_or_index).lstrip("-").isdigit():
            index = int(name_or_index)
            if not 0 <= index < self.out_channels:
                raise UserInputError(
                    f"class {index} is out of range: the model has {self.out_channels} output "
                    f"channels ({', '.join(self.class_names)}); pick an index in 0..{self.out_channels - 1}"
                )
            return index
        lowered = [c.lower() for c in self.class_names]
        if str(name_or_index).lower() in lowered:
            return lowered.index(str(name_or_index).lower())
        raise UserInputError(
            f"unknown class {name_or_index!r}; the model's classes are: {', '.join(self.class_names)}"
        )

    def summary(self) -> str:
        """One line for the Slicer panel and the CLI."""
        pixdim = next(
            (s.get("pixdim") for s in self.preprocessing if s["kind"] == "spacing"), self.spacing
        )
        spacing = (
            "input grid"
            if pixdim is None
            else "x".join(f"{s:g}" for s in np.broadcast_to(pixdim, (3,))) + " mm"
        )
        window = (
            "whole volume"
            if self.roi_size is None
            else "windows " + "x".join(map(str, self.roi_size))
        )
        return (
            f"{self.name}: {self.in_channels} input channel(s), classes "
            f"{', '.join(self.class_names)} ({self.activation}), spacing {spacing}, {window}"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("spacing", "roi_size"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserInputError(
                f"unknown model card field(s) {unknown}; known fields are {sorted(known)}"
            )
        return cls(**data)
