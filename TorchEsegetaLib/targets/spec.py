"""What to explain, as the user asks for it: a :class:`TargetSpec` (JSON-serialisable, part of a
Job) parsed from text or a dict and validated against the job schema, and :func:`score_phrase`,
the target score in words from a run's record.

Each kind's text form is read by one entry of :data:`PARSERS` and put in words by one entry of
:data:`REGION_PHRASES`; a new kind adds an entry to each (and its region to :mod:`.bound`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np

from ..errors import UserInputError
from ..schema.validation import check, job_field_schema, plain


def target_schema() -> dict[str, Any]:
    """The schema of a target object (the job schema's ``target`` in its object form)."""
    return next(alt for alt in job_field_schema("target")["oneOf"] if alt.get("type") == "object")


#: Fields only some kinds use, written into a job only when set.
OPTIONAL_FIELDS = ("width", "versus", "uncertainty")


@dataclass
class TargetSpec:
    """The user's choice of what to explain.

    Attributes:
        kind: "class" (the predicted mask of ``class_``), "mask" (a user label volume, optionally
            one ``label`` value of it), "roi" (a box from ``start`` to ``end``, both inclusive),
            "voxel" (the single voxel ``voxel``); the object targets "component" (the connected
            component of the predicted ``class_`` that holds ``voxel``), "boundary" (the band
            of ``width`` voxels each side of the predicted ``class_``'s surface) and "contrast"
            (``class_``'s score minus ``versus``'s over ``class_``'s predicted region).
        class_: the class to explain, by name or output-channel index; None picks the first
            foreground class (channel 1 for softmax models, 0 for sigmoid models), or for a
            component target the class predicted at its voxel.
        output: score "logits" (default; does not saturate) or "probabilities".
        mask: path of a label volume on the input grid (kind "mask"); ``mask_array`` may hold it.
        label: keep only this value of the mask (None: every non-zero voxel).
        start, end: box corners (kind "roi"), in ``coordinates``.
        voxel: the voxel (kinds "voxel" and "component"), in ``coordinates``.
        coordinates: "voxel" indices (i, j, k) of the input grid, or physical "lps" / "ras" mm.
        reduction: "mean" or "sum" of the scores over the region.
        width: the boundary band's half-width in voxels (kind "boundary"; None: 1).
        versus: class B of a contrast target, by name or output-channel index.
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
    width: int | None = None
    versus: str | int | None = None
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
        if self.kind in ("voxel", "component"):
            if self.voxel is None:
                raise UserInputError(
                    f"a {self.kind} target needs a position: --target {self.kind}:i,j,k"
                )
            self.voxel = _triple(self.voxel, "voxel")
        if self.kind == "contrast" and (self.class_ in (None, "") or self.versus in (None, "")):
            raise UserInputError(
                "a contrast target needs two classes: --target contrast:A,B (A's score minus B's)"
            )

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "mask_array"}
        data["class"] = data.pop("class_")
        for key in OPTIONAL_FIELDS:  # left out unset, so jobs recorded before them compare equal
            if data[key] is None:
                del data[key]
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
        """Parse the CLI form: ``class[:NAME]``, ``mask:FILE[:LABEL]``, ``roi:A,B,C:D,E,F``,
        ``voxel:A,B,C``, ``component:A,B,C``, ``boundary[:CLASS[:WIDTH]]``, ``contrast:A,B``;
        ``uncertainty:`` before any of them explains the predictive entropy over that region."""
        kind, _, rest = text.partition(":")
        kind = kind.strip().lower()
        if kind == "uncertainty":
            extra.setdefault("uncertainty", "auto")
            return cls.parse(rest or "class", **extra)
        check(kind, target_schema()["properties"]["kind"], "target kind")
        return PARSERS[kind](text, rest, extra)


def _parse_class(text: str, rest: str, extra: dict[str, Any]) -> TargetSpec:
    if rest:
        extra.setdefault("class_", rest)
    return TargetSpec(kind="class", **extra)


def _parse_mask(text: str, rest: str, extra: dict[str, Any]) -> TargetSpec:
    path, sep, label = rest.rpartition(":")
    if not (sep and label.isdigit()):
        path, label = rest, ""
    return TargetSpec(kind="mask", mask=path, label=int(label) if label else None, **extra)


def _points(text: str, rest: str, count: int, form: str) -> list[tuple[float, float, float]]:
    """``count`` comma-separated triples, separated by colons (the spec checks each has three)."""
    try:
        points = [
            cast("tuple[float, float, float]", tuple(float(v) for v in part.split(",")))
            for part in rest.split(":")
        ]
    except ValueError as e:
        raise UserInputError(
            f"could not read the numbers in target {text!r}; write e.g. {form}"
        ) from e
    if len(points) != count:
        what = "two corners" if count == 2 else "one position"
        raise UserInputError(f"target {text!r} needs {what}: {form}")
    return points


def _parse_roi(text: str, rest: str, extra: dict[str, Any]) -> TargetSpec:
    start, end = _points(text, rest, 2, "roi:i0,j0,k0:i1,j1,k1")
    return TargetSpec(kind="roi", start=start, end=end, **extra)


def _parse_voxel(text: str, rest: str, extra: dict[str, Any]) -> TargetSpec:
    (voxel,) = _points(text, rest, 1, "voxel:i,j,k")
    return TargetSpec(kind="voxel", voxel=voxel, **extra)


def _parse_component(text: str, rest: str, extra: dict[str, Any]) -> TargetSpec:
    (voxel,) = _points(text, rest, 1, "component:i,j,k")
    return TargetSpec(kind="component", voxel=voxel, **extra)


def _parse_boundary(text: str, rest: str, extra: dict[str, Any]) -> TargetSpec:
    name, _, width = rest.partition(":")
    if name:
        extra.setdefault("class_", name)
    if width and not width.strip().isdigit():
        raise UserInputError(
            f"the band width in target {text!r} must be a whole number of voxels, e.g. boundary:vessel:2"
        )
    return TargetSpec(kind="boundary", width=int(width) if width else None, **extra)


def _parse_contrast(text: str, rest: str, extra: dict[str, Any]) -> TargetSpec:
    names = [name.strip() for name in rest.split(",")]
    if len(names) != 2 or not all(names):
        raise UserInputError(
            f"target {text!r} needs two classes: contrast:A,B (A's score minus B's over A's region)"
        )
    extra["class_"] = names[0]  # the text names A itself: it wins over --class
    return TargetSpec(kind="contrast", versus=names[1], **extra)


#: kind -> reader of its text form (the text, the part after "kind:", the other fields).
PARSERS: dict[str, Callable[[str, str, dict[str, Any]], TargetSpec]] = {
    "class": _parse_class,
    "mask": _parse_mask,
    "roi": _parse_roi,
    "voxel": _parse_voxel,
    "component": _parse_component,
    "boundary": _parse_boundary,
    "contrast": _parse_contrast,
}


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
    if kind == "contrast":
        what = f"{what} minus {target.get('versus')} {unit}"
    voxels = target.get("region_voxels")
    size = f" ({voxels} voxels)" if voxels else ""
    region = REGION_PHRASES.get(kind, lambda t: "the target region")(target)
    return f"{target.get('reduction', 'mean')} {what} over {region}{size}"


#: kind -> its region in words, from the run's target record.
REGION_PHRASES: dict[str, Callable[[dict[str, Any]], str]] = {
    "class": lambda t: f"the predicted {t.get('class')} mask",
    "mask": lambda t: "the target mask",
    "roi": lambda t: "the target box",
    "component": lambda t: (
        f"the connected {t.get('class')} component at voxel "
        f"{tuple(t.get('component', {}).get('seed', ()))}"
    ),
    "boundary": lambda t: (
        f"the band of {t.get('width') or 1} voxel(s) each side of the {t.get('class')} surface"
    ),
    "contrast": lambda t: f"the predicted {t.get('class')} mask",
}
