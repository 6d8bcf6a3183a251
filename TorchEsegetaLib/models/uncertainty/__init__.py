"""How sure the model is: several predictions of one case (the *members* of an ensemble, of
test-time augmentation or of Monte-Carlo dropout) and what their spread says.

* :class:`UncertaintySpec`: one kind of members as the user asks for it (part of a Job);
* :mod:`.statistics`: voxelwise predictive entropy, mutual information and the standard deviation
  of a class's probability, accumulated one member at a time, and the predictive entropy as a
  differentiable function of the members' logits (what an uncertainty target scores);
* :mod:`.members`: the members of each kind as one differentiable forward, on the model's grid.

May import what :mod:`TorchEsegetaLib.models` may import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import UserInputError
from ...schema.validation import check, job_field_schema, plain

#: The kinds of members, in the order the docs describe them.
KINDS = ("ensemble", "tta", "dropout")
#: Members of a kind that draws them, unless the spec says otherwise.
DEFAULT_MEMBERS = 8
#: The maps written for each kind, in file order.
QUANTITIES = ("entropy", "mutual_information", "std")
#: Options that only some kinds take.
_TTA_OPTIONS = ("flip_axes", "intensity_scale", "noise")


@dataclass
class UncertaintySpec:
    """One kind of members and its options (the job's ``uncertainty`` list holds these).

    Attributes:
        kind: "ensemble" (the model's own members: nnU-Net folds x mirror combinations, or the
            checkpoints a model reference lists under ``ensemble``), "tta" (test-time
            augmentation) or "dropout" (Monte-Carlo dropout).
        members: how many members tta and dropout draw (None: :data:`DEFAULT_MEMBERS`); the
            ensemble's are the model's.
        flip_axes: tta: the model-grid axes flips may reverse (None: those the model allows).
        intensity_scale: tta: an augmented member scales the raw intensities by a factor drawn
            uniformly from [1 - s, 1 + s].
        noise: tta: an augmented member adds Gaussian noise of this many standard deviations
            of the image (per channel).
    """

    kind: str
    members: int | None = None
    flip_axes: list[int] | None = None
    intensity_scale: float = 0.05
    noise: float = 0.02
    #: the options the user gave (only those are written back, so a job stays short)
    given: set[str] = field(default_factory=set, repr=False, compare=False)

    def __post_init__(self) -> None:
        check(plain(self.to_dict(every=True)), _item_schema(), "uncertainty entry")
        if self.kind != "tta":
            stray = sorted(set(self.given) & set(_TTA_OPTIONS))
            if stray:
                raise UserInputError(
                    f"uncertainty {self.kind} takes no {', '.join(stray)} (options of tta); "
                    f"remove them or use tta"
                )
        if self.kind == "ensemble" and self.members is not None:
            raise UserInputError(
                "the ensemble's members are the model's own (nnU-Net folds x mirrorings, or the "
                'checkpoints of the model reference\'s "ensemble"); remove members, or use tta '
                "or dropout to choose a count"
            )
        if self.flip_axes is not None:
            self.flip_axes = sorted({int(a) for a in self.flip_axes})

    @property
    def count(self) -> int:
        """How many members tta or dropout draws."""
        return DEFAULT_MEMBERS if self.members is None else int(self.members)

    def to_dict(self, every: bool = False) -> dict[str, Any]:
        """``{"kind", ...options}``: the options given (``every``: all of this kind's)."""
        options: dict[str, Any] = {"members": self.members}
        if self.kind == "tta":
            options.update(
                flip_axes=self.flip_axes, intensity_scale=self.intensity_scale, noise=self.noise
            )
        chosen = options if every else {k: v for k, v in options.items() if k in self.given}
        return {"kind": self.kind, **chosen}

    @classmethod
    def from_any(cls, value: str | dict[str, Any] | UncertaintySpec) -> UncertaintySpec:
        """A spec from its kind's name, its dict form, or itself."""
        if isinstance(value, UncertaintySpec):
            return value
        check(plain(value), _item_schema(), "uncertainty entry")
        if isinstance(value, str):
            return cls(value)
        options = {k: v for k, v in value.items() if k != "kind"}
        return cls(value["kind"], **options, given=set(options))


def uncertainty_specs(values: Any) -> list[UncertaintySpec]:
    """The job's ``uncertainty`` list as specs; a kind given twice is an error."""
    specs = [UncertaintySpec.from_any(v) for v in values or []]
    kinds = [s.kind for s in specs]
    twice = sorted({k for k in kinds if kinds.count(k) > 1})
    if twice:
        raise UserInputError(
            f"uncertainty kind(s) {twice} appear twice; give each kind once, with its options"
        )
    return specs


def parse_uncertainty(text: str) -> list[dict[str, Any]]:
    """The command line's ``--uncertainty`` text as job entries: comma-separated kinds, each
    optionally ``KIND:key=value;key=value`` (``tta:members=16;noise=0;flip_axes=ik``)."""
    entries: list[dict[str, Any]] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        kind, _, options = token.partition(":")
        entry: dict[str, Any] = {"kind": kind.strip().lower()}
        for option in (o.strip() for o in options.split(";")):
            if not option:
                continue
            key, equals, value = option.partition("=")
            if not equals:
                raise UserInputError(
                    f"--uncertainty {token!r}: write options as KIND:key=value;key=value, "
                    "e.g. tta:members=16;noise=0"
                )
            entry[key.strip()] = _option_value(key.strip(), value.strip())
        entries.append(entry)
    if not entries:
        raise UserInputError("--uncertainty is empty; give kinds among ensemble, tta, dropout")
    return [e if len(e) > 1 else e["kind"] for e in entries]


def _option_value(key: str, value: str) -> Any:
    if key == "flip_axes":
        letters = {"i": 0, "j": 1, "k": 2, "0": 0, "1": 1, "2": 2}
        text = value.lower().replace("+", "").replace(" ", "")
        if text in ("", "none"):
            return []
        if not all(c in letters for c in text):
            raise UserInputError(
                f"flip_axes={value!r}: name the axes by letter or number, e.g. flip_axes=ik or "
                "flip_axes=02 (none: no flips)"
            )
        return [letters[c] for c in text]
    try:
        return int(value) if key == "members" else float(value)
    except ValueError as error:
        raise UserInputError(f"uncertainty option {key}={value!r} is not a number") from error


def _item_schema() -> dict[str, Any]:
    return job_field_schema("uncertainty")["items"]
