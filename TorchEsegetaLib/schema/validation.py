"""One validator for what users give, whichever front end it comes through (job file, CLI,
Python API, Slicer panel or console): a value is checked against a JSON schema fragment, and a
mismatch is one line naming the field, what it must be and what it got.

The job's fragments are the shipped ``schema/job.schema.json``; a method's or metric's are
generated from its declared :class:`~TorchEsegetaLib.schema.registry.Param` list. The checker covers
the part of JSON Schema those use (listed in :data:`KEYWORDS`), and for them it agrees with the
reference ``jsonschema`` package (a test holds the two against each other); ``title`` is the
phrase that says what a value must be when the types alone would say it badly.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import UserInputError

#: The JSON Schema keywords this checker understands (annotations included).
KEYWORDS = frozenset(
    {
        "$schema",
        "$id",
        "title",
        "description",
        "default",
        "type",
        "enum",
        "oneOf",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "pattern",
    }
)

_TYPE_PHRASES = {
    "string": "text",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "an object",
    "array": "a list",
    "null": "null",
}

Path_ = tuple[str | int, ...]


def schema_path() -> Path:
    return Path(__file__).parent / "job.schema.json"


@cache
def job_schema() -> dict[str, Any]:
    """The shipped job schema (read once)."""
    return json.loads(schema_path().read_text(encoding="utf-8"))


def job_field_schema(name: str) -> dict[str, Any]:
    """The schema of one top-level job field (for the CLI's choices and help)."""
    return job_schema()["properties"][name]


def check_job(data: dict[str, Any]) -> None:
    """Raise :class:`UserInputError` unless ``data`` (a job in its dict form) fits the schema."""
    check(data, job_schema(), "job field", root="the job")


def check(value: Any, schema: dict[str, Any], where: str, root: str | None = None) -> None:
    """Raise :class:`UserInputError` unless ``value`` fits ``schema``.

    Args:
        value: the value, as JSON would hold it (dicts, lists, text, numbers, booleans, None).
        schema: a JSON schema fragment using :data:`KEYWORDS` only.
        where: names the value in messages: ``'job field'`` gives ``job field "seed"`` for the
            field ``seed``; at the top (and for a plain value) it is used as it is.
        root: what to call the value itself when it is a container (default ``where``).
    """
    _check(value, schema, _Where(where, root or where), ())


class _Where:
    def __init__(self, prefix: str, root: str):
        self.prefix, self.root = prefix, root

    def label(self, path: Path_) -> str:
        if not path:
            return self.root
        return f'{self.prefix} "{_dotted(path)}"'

    @property
    def noun(self) -> str:
        """What the fields are of: 'job' for 'job field'."""
        return self.prefix.split()[0]


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _check(value: Any, schema: dict[str, Any], where: _Where, path: Path_) -> None:
    if "oneOf" in schema:
        fitting = [alt for alt in schema["oneOf"] if _type_fits(value, alt)]
        if not fitting:
            _fail(where, path, _expected(schema), value)
        _check(value, fitting[0], where, path)  # the alternatives differ in type
        return
    if not _type_fits(value, schema):
        _fail(where, path, _expected(schema), value)
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(str(c) for c in schema["enum"])
        raise UserInputError(f"{where.label(path)} must be one of {choices}; got {value!r}")
    if isinstance(value, list):
        _check_items(value, schema, where, path)
    elif isinstance(value, dict):
        _check_object(value, schema, where, path)
    else:
        _check_scalar(value, schema, where.label(path))


def _check_scalar(value: Any, schema: dict[str, Any], label: str) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_range(value, schema, label)
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        what = schema.get("title") or f"text matching {schema['pattern']}"
        raise UserInputError(f"{label} must be {what}; got {value!r}")


def _check_range(value: float, schema: dict[str, Any], label: str) -> None:
    bounds = (
        ("minimum", lambda v, b: v >= b, "at least"),
        ("maximum", lambda v, b: v <= b, "at most"),
        ("exclusiveMinimum", lambda v, b: v > b, "more than"),
        ("exclusiveMaximum", lambda v, b: v < b, "less than"),
    )
    for keyword, holds, phrase in bounds:
        if keyword in schema and not holds(value, schema[keyword]):
            bound = schema[keyword]
            shown = bound if isinstance(bound, int) else f"{bound:g}"  # 4294967295, not 4.29e+09
            raise UserInputError(f"{label} must be {phrase} {shown}; got {value!r}")


def _check_items(value: list[Any], schema: dict[str, Any], where: _Where, path: Path_) -> None:
    _check_count(len(value), schema.get("minItems"), schema.get("maxItems"), where.label(path))
    if "items" in schema:
        for index, item in enumerate(value):
            _check(item, schema["items"], where, (*path, index))


def _check_count(count: int, low: int | None, high: int | None, label: str) -> None:
    if low is not None and low == high and count != low:
        raise UserInputError(f"{label} needs {low} values; got {count}")
    if low is not None and count < low:
        if not count:
            raise UserInputError(f"{label} is empty; give at least {'one' if low == 1 else low}")
        raise UserInputError(f"{label} needs at least {low} items; got {count}")
    if high is not None and count > high:
        raise UserInputError(f"{label} takes at most {high} items; got {count}")


def _check_object(
    value: dict[str, Any], schema: dict[str, Any], where: _Where, path: Path_
) -> None:
    properties = schema.get("properties", {})
    if schema.get("additionalProperties") is False:
        unknown = sorted(set(value) - set(properties))
        if unknown:
            what = (
                f"unknown {where.noun} field(s)"
                if not path
                else f"{where.label(path)} has unknown field(s)"
            )
            raise UserInputError(f"{what} {unknown}; known fields are {', '.join(properties)}")
    for name in schema.get("required", ()):
        if name not in value:
            raise UserInputError(f'{where.label(path)} needs the field "{name}"')
    for name, item in value.items():
        if name in properties:
            _check(item, properties[name], where, (*path, name))


def _type_fits(value: Any, schema: dict[str, Any]) -> bool:
    if "oneOf" in schema:
        return any(_type_fits(value, alt) for alt in schema["oneOf"])
    if "type" not in schema:
        return "enum" not in schema or value in schema["enum"] or _scalar(value)
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return any(_is(value, t) for t in types)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(
        value,
        {"string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)}[kind],
    )


def _expected(schema: dict[str, Any]) -> str:
    if "title" in schema:
        return schema["title"]
    if "oneOf" in schema:
        return " or ".join(_expected(alt) for alt in schema["oneOf"])
    if "enum" in schema:
        return "one of " + ", ".join(str(c) for c in schema["enum"])
    types = schema.get("type", [])
    types = types if isinstance(types, list) else [types]
    return " or ".join(_TYPE_PHRASES[t] for t in types)


def _fail(where: _Where, path: Path_, expected: str, value: Any) -> None:
    hint = ""
    if expected.startswith("a list") and _scalar(value) and value is not None:
        hint = f"; write [{json.dumps(value)}]"
    raise UserInputError(f"{where.label(path)} must be {expected}, got {_described(value)}{hint}")


def _described(value: Any) -> str:
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def plain(value: Any) -> Any:
    """``value`` as JSON holds it: tuples and arrays as lists, NumPy scalars as numbers, paths
    as text, specs as their dicts."""
    if hasattr(value, "ndim") and hasattr(value, "tolist"):
        return value.tolist()  # a NumPy array or scalar
    if hasattr(value, "to_dict"):
        return plain(value.to_dict())
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
