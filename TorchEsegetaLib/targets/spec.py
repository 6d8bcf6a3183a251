"""What to explain, as the user asks for it: a :class:`TargetSpec` (JSON-serialisable, part of a
Job) parsed from text or a dict and validated against the job schema, and :func:`score_phrase`,
the target score in words from a run's record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np

from ..errors import UserInputError
from ..schema.validation import check, job_field_schema, plain


def target_schema() -> dict[str, Any]:
    """The schema of a target object (the job schema's ``target`` in its object form)."""
    return next(alt for alt in job_field_schema("target")["oneOf"] if alt.get("type") == "object")


@dataclass
class TargetSpec:
    """The user's choice of what to explain.

    Attributes:
        kind: "class" (the predicted mask of ``class_``), "mask" (a user label volume, optionally
            one ``label`` value of it), "roi" (a box from ``start`` to ``end``, both inclusive) or
            "voxel" (the single voxel ``voxel``).
        class_: the class to explain, by name or output-channel index; None picks the first
            foreground class (channel 1 for softmax models, 0 for sigmoid models).
        output: score "logits" (default; does not saturate) or "probabilities".
        mask: path of a label volume on the input grid (kind "mask"); ``mask_array`` may hold it.
        label: keep only this value of the mask (None: every non-zero voxel).
        start, end: box corners (kind "roi"), in ``coordinates``.
        voxel: the voxel (kind "voxel"), in ``coordinates``.
        coordinates: "voxel" indices (i, j, k) of the input grid, or physical "lps" / "ras" mm.
        reduction: "mean" or "sum" of the scores over the region.
        uncertainty: None, or score the predictive entropy of these members over the region
            instead (:mod:`.uncertainty`): "auto" (the job's first uncertainty kind), a kind
            ("ensemble", "tta", "dropout") or a kind with its options as a dict.
    """

    kind: str = "class"
    class_: str | int | None = None
    output: str = "logits"
    mask: str | None = None
    label: int | None = None
    start: tuple[float, float, float] | None = None
    end: tuple[float, float, float] | None = None
    voxel: tuple[float, float, float] | None = None
    coordinates: str = "voxel"
    reduction: str = "mean"
    uncertainty: str | dict[str, Any] | None = None
    mask_array: np.ndarray | None = None

    def __post_init__(self) -> None:
        check(plain(self.to_dict()), target_schema(), "target field", root="the target")
        if self.kind == "mask" and self.mask is None and self.mask_array is None:
            raise UserInputError(
                "a mask target needs a label volume: give its path (--target mask:FILE)"
            )
        if self.kind == "roi":
            if self.start is None or self.end is None:
                raise UserInputError(
                    "an ROI target needs two corners: --target roi:i0,j0,k0:i1,j1,k1"
                )
            self.start, self.end = _triple(self.start, "ROI start"), _triple(self.end, "ROI end")
        if self.kind == "voxel":
            if self.voxel is None:
                raise UserInputError("a voxel target needs a position: --target voxel:i,j,k")
            self.voxel = _triple(self.voxel, "voxel")

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "mask_array"}
        data["class"] = data.pop("class_")
        if data["uncertainty"] is None:  # an ordinary target: its dict as before uncertainty
            del data["uncertainty"]
        if self.mask_array is not None:
            data["mask"] = data["mask"] or "<array>"
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetSpec:
        check(plain(data), target_schema(), "target field", root="the target")
        data = dict(data)
        if "class" in data:
            data["class_"] = data.pop("class")
        return cls(**data)

    @classmethod
    def from_any(cls, value: str | dict[str, Any] | TargetSpec) -> TargetSpec:
        """A target from its CLI text, its dict form, or itself."""
        if isinstance(value, str):
            return cls.parse(value)
        return cls.from_dict(value) if isinstance(value, dict) else value

    @classmethod
    def parse(cls, text: str, **extra: Any) -> TargetSpec:
        """Parse the CLI form: ``class``, ``mask:FILE[:LABEL]``, ``roi:A,B,C:D,E,F``, ``voxel:A,B,C``;
        ``uncertainty:`` before any of them explains the predictive entropy over that region."""
        kind, _, rest = text.partition(":")
        kind = kind.strip().lower()
        if kind == "uncertainty":
            extra.setdefault("uncertainty", "auto")
            return cls.parse(rest or "class", **extra)
        check(kind, target_schema()["properties"]["kind"], "target kind")
        if kind == "class":
            if rest:
                extra.setdefault("class_", rest)
            return cls(kind="class", **extra)
        if kind == "mask":
            path, sep, label = rest.rpartition(":")
            if not (sep and label.isdigit()):
                path, label = rest, ""
            return cls(kind="mask", mask=path, label=int(label) if label else None, **extra)
        parts = rest.split(":")
        try:
            # three values each: the spec checks their count
            corners = [
                cast("tuple[float, float, float]", tuple(float(v) for v in p.split(",")))
                for p in parts
            ]
        except ValueError as e:
            raise UserInputError(
                f"could not read the numbers in target {text!r}; write e.g. roi:10,10,10:20,20,20"
            ) from e
        if kind == "roi":
            if len(corners) != 2:
                raise UserInputError(f"target {text!r} needs two corners: roi:i0,j0,k0:i1,j1,k1")
            return cls(kind="roi", start=corners[0], end=corners[1], **extra)
        if len(corners) != 1:
            raise UserInputError(f"target {text!r} needs one position: voxel:i,j,k")
        return cls(kind="voxel", voxel=corners[0], **extra)


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in value)
    if len(values) != 3 or not all(np.isfinite(values)):
        raise UserInputError(f"the {what} needs three finite coordinates, got {value!r}")
    return values


def score_phrase(target: dict[str, Any]) -> str:
    """What the target score is, in words, from a run's target record (``run.json``'s
    ``"target"``): "mean vessel logit over the predicted vessel mask (8358 voxels)"."""
    if not target:
        return ""
    # a model whose activation is "none" outputs probabilities already (its "logits" are them)
    logits = target.get("output", "logits") == "logits" and target.get("activation") != "none"
    unit = "logit" if logits else "probability"
    name = target.get("class")
    what = f"{name} {unit}" if name is not None else unit
    kind = target.get("kind", "class")
    if target.get("uncertainty"):
        what = f"predictive entropy ({target['uncertainty']}, {target.get('members')} members)"
    if kind == "voxel":
        return f"{what} at the target voxel"
    region = {"class": f"predicted {name} mask", "mask": "target mask", "roi": "target box"}
    voxels = target.get("region_voxels")
    size = f" ({voxels} voxels)" if voxels else ""
    return f"{target.get('reduction', 'mean')} {what} over the {region.get(kind, 'target region')}{size}"
