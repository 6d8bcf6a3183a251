"""The method registry: one small class per attribution method, with declared parameters.

Every method answers one call, ``attribute(forward, inputs, target, context)``, returning a map
of the input's shape (B, C, *S). The declared :class:`Param` list drives the CLI flags, the
Slicer panel's forms, validation and the documentation, so the three never drift apart.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import UserInputError

if TYPE_CHECKING:
    import torch

    from ..engine import Context
    from ..targets import BoundTarget

FAMILIES = ("gradient", "layer", "perturbation")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One declared parameter of a method.

    Attributes:
        name: the keyword (snake_case).
        kind: "int", "float", "bool", "choice" or "str".
        default: the value used when none is given.
        help: one sentence for tooltips, ``--help`` and the docs.
        minimum, maximum: inclusive range for numbers.
        choices: allowed values for "choice".
    """

    name: str
    kind: str
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None

    def coerce(self, value: Any, owner: str) -> Any:
        """Validate ``value`` (also accepting its text form, as typed on a command line)."""
        where = f"parameter {self.name!r} of {owner}"
        try:
            if self.kind == "bool":
                if isinstance(value, str):
                    if value.lower() not in _TRUE | _FALSE:
                        raise ValueError(value)
                    value = value.lower() in _TRUE
                if not isinstance(value, bool):
                    raise ValueError(value)
            elif self.kind == "int":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(value)
                value = int(value)
            elif self.kind == "float":
                if isinstance(value, bool):
                    raise ValueError(value)
                value = float(value)
            else:
                value = str(value)
        except (TypeError, ValueError) as e:
            raise UserInputError(f"{where} must be {_kind_phrase(self.kind)}, got {value!r}") from e
        if self.kind == "choice" and value not in (self.choices or ()):
            raise UserInputError(
                f"{where} must be one of {', '.join(self.choices or ())}; got {value!r}"
            )
        if self.minimum is not None and value < self.minimum:
            raise UserInputError(f"{where} must be at least {self.minimum:g}; got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise UserInputError(f"{where} must be at most {self.maximum:g}; got {value!r}")
        return value

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "type": self.kind, "default": self.default, "help": self.help}
        for key in ("minimum", "maximum", "choices"):
            if getattr(self, key) is not None:
                data[key] = list(self.choices) if key == "choices" else getattr(self, key)
        return data


def _kind_phrase(kind: str) -> str:
    return {"bool": "true or false", "int": "an integer", "float": "a number"}.get(kind, "text")


class Method:
    """Base class: subclasses set the class attributes and implement :meth:`attribute`."""

    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]
    family: ClassVar[str]
    signed: ClassVar[bool]
    cost: ClassVar[str]
    reference: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    needs_layer: ClassVar[bool] = False
    needs_baseline: ClassVar[bool] = False
    #: True when the map is the same for every input channel (layer methods, occlusion of all
    #: channels at once): the run folder then writes it once instead of summing channels.
    shared_channels: ClassVar[bool] = False

    def __init__(self, **values: Any) -> None:
        declared = {p.name: p for p in self.params}
        unknown = sorted(set(values) - set(declared))
        if unknown:
            known = ", ".join(declared) or "none"
            raise UserInputError(
                f"unknown parameter(s) {', '.join(unknown)} for method {self.name!r}; its parameters are: {known}"
            )
        self.config = {
            name: param.coerce(values[name], self.name) if name in values else param.default
            for name, param in declared.items()
        }

    def attribute(
        self,
        forward: torch.nn.Module,
        inputs: torch.Tensor,
        target: BoundTarget,
        context: Context,
    ) -> torch.Tensor:
        """Attribute ``target(forward(inputs))`` to ``inputs``; returns a tensor of ``inputs.shape``."""
        raise NotImplementedError

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "title": cls.title,
            "summary": cls.summary,
            "family": cls.family,
            "signed": cls.signed,
            "needs_layer": cls.needs_layer,
            "needs_baseline": cls.needs_baseline,
            "shared_channels": cls.shared_channels,
            "cost": cls.cost,
            "reference": cls.reference,
            "params": [p.to_dict() for p in cls.params],
        }


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if cls.family not in FAMILIES:
        raise ValueError(f"{cls.__name__}: unknown family {cls.family!r}")
    if cls.name in REGISTRY:
        raise ValueError(f"method name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """The class registered under ``name``, or a clear error with the closest names."""
    key = name.strip().lower().replace("-", "_")
    if key in REGISTRY:
        return REGISTRY[key]
    close = difflib.get_close_matches(key, REGISTRY, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UserInputError(f"unknown method {name!r}; {hint}run `torchesegeta methods` to list them")


def create_method(name: str, params: dict[str, Any] | None = None) -> Method:
    return get_method(name)(**(params or {}))


class ScoreModel:
    """``inputs -> target(forward(inputs))``: the scalar-per-example function methods explain."""

    def __init__(self, forward: torch.nn.Module, target: BoundTarget):
        self.forward = forward
        self.target = target

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.target(self.forward(inputs))


def input_gradients(score: ScoreModel, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (B,) and their gradient with respect to ``inputs`` (each example independently)."""
    import torch

    windowed = getattr(score.forward, "score_gradients", None)
    if windowed is not None:
        # Sliding-window models: window by window, memory bounded by the window batch.
        result = windowed(inputs, score.target)
        if result is not None:
            return result
    with torch.enable_grad():
        x = inputs.detach().requires_grad_(True)
        scores = score(x)
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return scores.detach(), grad.detach()
