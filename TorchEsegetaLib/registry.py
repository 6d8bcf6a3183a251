"""What the method and metric registries share: declared parameters, their validation,
registration and lookup by name, and the check of a job's method or metric entries.

A declared :class:`Param` list drives the CLI flags, the Slicer panel's forms, validation and the
documentation of both methods and metrics, so they never drift apart.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import UserInputError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class Param:
    """One declared parameter of a method or metric.

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


def configure(
    params: tuple[Param, ...], values: dict[str, Any], what: str, owner: str
) -> dict[str, Any]:
    """Every declared parameter's value: ``values`` validated, defaults for the rest.

    Args:
        params: the declared parameters.
        values: the values given, by name.
        what: names the owner in the unknown-parameter error, e.g. ``"method 'saliency'"``.
        owner: names the owner in a bad-value error (see :meth:`Param.coerce`).
    """
    declared = {p.name: p for p in params}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        known = ", ".join(declared) or "none"
        raise UserInputError(
            f"unknown parameter(s) {', '.join(unknown)} for {what}; its parameters are: {known}"
        )
    return {
        name: param.coerce(values[name], owner) if name in values else param.default
        for name, param in declared.items()
    }


def add(registry: dict[str, T], cls: T, kind: str, families: tuple[str, ...]) -> T:
    """Add ``cls`` to ``registry`` under ``cls.name`` (``kind``: "method" or "metric")."""
    if cls.family not in families:
        raise ValueError(f"{cls.__name__}: unknown family {cls.family!r}")
    if cls.name in registry:
        raise ValueError(f"{kind} name {cls.name!r} registered twice")
    registry[cls.name] = cls
    return cls


def lookup(registry: dict[str, T], name: str, kind: str) -> T:
    """The class registered under ``name``, or a clear error with the closest names."""
    key = str(name).strip().lower().replace("-", "_")
    if key in registry:
        return registry[key]
    close = difflib.get_close_matches(key, registry, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UserInputError(f"unknown {kind} {name!r}; {hint}run `torchesegeta {kind}s` to list them")


def entry_fields(value: Any, kind: str, example: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """``value``, a job's ``kind`` entry given as a dict, once checked: it has a name (as in
    ``example``) and no field but ``fields``."""
    if not isinstance(value, dict) or "name" not in value:
        raise UserInputError(
            f'a {kind} entry needs a name, e.g. {{"name": "{example}"}}; got {value!r}'
        )
    unknown = sorted(set(value) - set(fields))
    if unknown:
        allowed = f"{', '.join(fields[:-1])} and {fields[-1]}"
        raise UserInputError(f"unknown {kind} entry field(s) {unknown}; use {allowed}")
    return value
