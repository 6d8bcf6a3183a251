"""What the method and metric registries share: declared parameters, their validation (by the
one validator, :mod:`.validation`), registration and lookup by name.

A declared :class:`Param` list drives the CLI flags, the Slicer panel's forms, validation and the
documentation of both methods and metrics, so they never drift apart.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, cast

from ..errors import UserInputError
from .validation import check, job_field_schema, plain

_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


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
        file: the value names a file the run reads (an output folder keeps apart from it).
    """

    name: str
    kind: str
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    file: bool = False

    def coerce(self, value: Any, owner: str) -> Any:
        """Validate ``value`` (also accepting its text form, as typed on a command line)."""
        value = self._from_text(value)
        check(value, self.schema(), f"parameter {self.name!r} of {owner}")
        return value

    def _from_text(self, value: Any) -> Any:
        """``value`` in the parameter's type when it is that type's text ("3", "true") or an
        integer given as a whole float; anything else as it is, for :func:`check` to judge."""
        if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
            value = value.item()  # a NumPy scalar
        if self.kind in ("str", "choice"):
            return value if isinstance(value, (dict, list)) else str(value)
        if isinstance(value, str):
            return _parsed(value, self.kind)
        if self.kind == "int" and isinstance(value, float) and value.is_integer():
            return int(value)
        if self.kind == "float" and type(value) is int:
            return float(value)
        return value

    def schema(self) -> dict[str, Any]:
        """The parameter as a JSON schema fragment (what :meth:`coerce` checks)."""
        if self.kind == "choice":
            return {"enum": list(self.choices or ())}
        fragment: dict[str, Any] = {"type": _JSON_TYPES[self.kind]}
        for key in ("minimum", "maximum"):
            if getattr(self, key) is not None:
                fragment[key] = getattr(self, key)
        return fragment

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "type": self.kind, "default": self.default, "help": self.help}
        for key in ("minimum", "maximum", "choices"):
            if getattr(self, key) is not None:
                value = getattr(self, key)
                data[key] = list(value) if key == "choices" else value
        return data


def _parsed(text: str, kind: str) -> Any:
    """``text`` as a bool, int or float (``kind``), or unchanged when it is not one."""
    word = text.strip().lower()
    if kind == "bool":
        return word in _TRUE if word in _TRUE | _FALSE else text
    try:
        return int(word) if kind == "int" else float(word)
    except ValueError:
        return text


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


class Registered:
    """What a method and a metric class share: its declared description and parameters.

    Subclasses set the class attributes; an instance holds its validated parameters in
    ``config``. :meth:`describe` is what the CLI, the Slicer panel and the docs read.
    """

    #: "method" or "metric": names the registry in messages
    kind: ClassVar[str]
    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]
    family: ClassVar[str]
    cost: ClassVar[str]
    reference: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    #: the class attributes of this kind that :meth:`describe` lists after ``family``
    described: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **values: Any) -> None:
        owner = f"{self.kind} {self.name}"
        self.config = configure(self.params, values, f"{self.kind} {self.name!r}", owner)

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "title": cls.title,
            "summary": cls.summary,
            "family": cls.family,
            **{attribute: getattr(cls, attribute) for attribute in cls.described},
            "cost": cls.cost,
            "reference": cls.reference,
            "params": [p.to_dict() for p in cls.params],
        }


R = TypeVar("R", bound=Registered)


class Registry(dict[str, type[R]]):
    """Classes by name, for one kind: "method" or "metric"."""

    def __init__(self, kind: str, families: tuple[str, ...]):
        super().__init__()
        self.kind, self.families = kind, families

    def register(self, cls: type[R]) -> type[R]:
        """Class decorator adding ``cls`` under ``cls.name``."""
        if cls.family not in self.families:
            raise ValueError(f"{cls.__name__}: unknown family {cls.family!r}")
        if cls.name in self:
            raise ValueError(f"{self.kind} name {cls.name!r} registered twice")
        self[cls.name] = cls
        return cls

    def lookup(self, name: str) -> type[R]:
        """The class registered under ``name``, or a clear error with the closest names."""
        key = str(name).strip().lower().replace("-", "_")
        if key in self:
            return self[key]
        close = difflib.get_close_matches(key, self, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserInputError(
            f"unknown {self.kind} {name!r}; {hint}run `torchesegeta {self.kind}s` to list them"
        )

    def create(self, name: str, params: dict[str, Any] | None = None) -> R:
        return self.lookup(name)(**(params or {}))


S = TypeVar("S", bound="Spec")


@dataclass
class Spec:
    """One method or metric of a job: its registry name and parameters, validated when made
    (the entry's shape against the job schema, the parameters against the declared Params)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    #: the job field that lists these entries ("methods" or "metrics")
    job_field: ClassVar[str]

    @classmethod
    def registry(cls) -> Registry:
        raise NotImplementedError

    @classmethod
    def _check_entry(cls, entry: Any) -> None:
        check(
            plain(entry), job_field_schema(cls.job_field)["items"], f"{cls.registry().kind} entry"
        )

    def __post_init__(self) -> None:
        self._check_entry(self)
        created = self.create()
        self.name = created.name
        # the parameters as the class reads them ("3" from a command line becomes 3)
        self.params = {k: created.config.get(k, v) for k, v in self.params.items()}

    def create(self) -> Any:
        return self.registry().create(self.name, self.params)

    def input_files(self) -> list[tuple[str, str]]:
        """(what, path) of each parameter naming a file the run reads (declared ``file``)."""
        declared = self.registry().lookup(self.name).params
        return [
            (f"{p.name} file of {self.registry().kind} {self.name}", str(self.params[p.name]))
            for p in declared
            if p.file and self.params.get(p.name)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}

    @classmethod
    def from_any(cls: type[S], value: str | dict[str, Any] | S) -> S:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(value)
        cls._check_entry(value)
        return cls(**cast("dict[str, Any]", value))
