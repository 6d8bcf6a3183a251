"""Names of the labels of a label image, from the files atlases and segmentation tools come with.

* a Slicer colour table (``.ctbl`` or ``.txt``): ``value name r g b a`` per line, ``#``
  comments; Slicer writes a space in a name as ``_`` and reads it back as a space, and so do we;
* a CSV file: Slicer's colour-table CSV (``LabelValue``, ``Name``, ...), or any table with a
  ``label`` (or ``value``, ``index``, ``id``) and a ``name`` column, or two columns without a
  header;
* a JSON file: ``{"1": "liver", ...}``, a list of names (index = label), or a list of
  ``{"label": 1, "name": "liver"}`` objects (TotalSegmentator's class map is the first form);
* a Slicer segmentation (``.seg.nrrd``) names its own segments in its header
  (``SegmentN_Name``, ``SegmentN_LabelValue``): :func:`names_in_image_header`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import UserInputError

NAME_SUFFIXES = (".ctbl", ".txt", ".csv", ".json")
_LABEL_COLUMNS = ("labelvalue", "label", "value", "index", "id")
_NAME_COLUMNS = ("name", "structure", "label_name")


def read_label_names(path: str | Path) -> dict[int, str]:
    """``{label value: name}`` from a colour table, CSV or JSON file (see the module docstring).

    Raises:
        UserInputError: a missing or unreadable file, an unknown format, a label that is not an
            integer, or a label named twice.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"structure names file {path} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix not in NAME_SUFFIXES:
        raise UserInputError(
            f"structure names file {path} has an unknown format; give a Slicer colour table "
            '(.ctbl, .txt), a CSV (label,name) or a JSON file ({"1": "name"})'
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"structure names file {path} cannot be read: {e}") from e
    if suffix == ".json":
        pairs = _json_pairs(text, path)
    elif suffix == ".csv":
        pairs = _csv_pairs(text, path)
    else:
        pairs = _colour_table_pairs(text, path)
    names: dict[int, str] = {}
    for value, name in pairs:
        label = _label(value, path)
        if label in names:
            raise UserInputError(f"structure names file {path} names label {label} twice")
        names[label] = str(name).strip()
    if not names:
        raise UserInputError(f"structure names file {path} names no label")
    return names


def names_in_image_header(metadata: dict[str, str]) -> dict[int, str]:
    """``{label value: name}`` from a Slicer segmentation's NRRD header (empty when none)."""
    names = {}
    for key, name in metadata.items():
        if key.startswith("Segment") and key.endswith("_Name"):
            prefix = key[: -len("_Name")]
            value = metadata.get(f"{prefix}_LabelValue")
            if value is not None and str(value).strip().lstrip("-").isdigit():
                names[int(value)] = name
    return names


def _colour_table_pairs(text: str, path: Path) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise UserInputError(
                f"structure names file {path}, line {number}: expected 'value name r g b a', "
                f"got {line!r}"
            )
        pairs.append((parts[0], parts[1].replace("_", " ")))
    return pairs


def _csv_pairs(text: str, path: Path) -> list[tuple[str, str]]:
    rows = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    label_column = next((header.index(c) for c in _LABEL_COLUMNS if c in header), None)
    name_column = next((header.index(c) for c in _NAME_COLUMNS if c in header), None)
    if label_column is None or name_column is None:
        if header and header[0].lstrip("-").isdigit() and len(header) >= 2:
            label_column, name_column = 0, 1  # no header: value, name
        else:
            raise UserInputError(
                f"structure names file {path} needs a 'label' and a 'name' column (or two "
                f"columns without a header); its header is {rows[0]}"
            )
        body = rows
    else:
        body = rows[1:]
    return [(row[label_column], row[name_column]) for row in body]


def _json_pairs(text: str, path: Path) -> list[tuple[str, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserInputError(f"structure names file {path} is not valid JSON: {e}") from e
    if isinstance(data, dict):
        return [(key, value) for key, value in data.items()]
    if isinstance(data, list) and all(isinstance(item, str) for item in data):
        return [(str(index), name) for index, name in enumerate(data)]
    if isinstance(data, list) and all(isinstance(item, dict) for item in data):
        try:
            return [(str(item["label"]), item["name"]) for item in data]
        except KeyError as e:
            raise UserInputError(
                f"structure names file {path}: every entry needs 'label' and 'name' ({e} missing)"
            ) from e
    raise UserInputError(
        f'structure names file {path} must hold {{"1": "name", ...}}, a list of names, or a '
        'list of {"label", "name"} objects'
    )


def _label(value: object, path: Path) -> int:
    text = str(value).strip()
    if not text.lstrip("-").isdigit():
        raise UserInputError(
            f"structure names file {path}: label {text!r} is not an integer label value"
        )
    return int(text)


def write_colour_table(
    names: dict[int, str], path: str | Path, colours: dict[int, tuple[int, int, int]] | None = None
) -> Path:
    """Write ``names`` as a Slicer colour table (``.ctbl``): what Slicer itself writes, spaces
    in names as ``_``; label 0 is transparent."""
    path = Path(path)
    lines = [f"# Color table file {path.name}", f"# {len(names)} values"]
    for label in sorted(names):
        red, green, blue = (colours or {}).get(
            label, _DEFAULT_COLOURS[label % len(_DEFAULT_COLOURS)]
        )
        alpha = 0 if label == 0 else 255
        lines.append(f"{label} {names[label].replace(' ', '_')} {red} {green} {blue} {alpha}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


_DEFAULT_COLOURS = (
    (0, 0, 0),
    (214, 39, 40),
    (31, 119, 180),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
