"""The cases of a cohort: read from a cohort file (CSV) or discovered in a folder.

A cohort file has a header and one row per case::

    case_id,image_t1,image_t2,reference,target
    sub-01,sub-01/t1.nii.gz,sub-01/t2.nii.gz,sub-01/lesion.nii.gz,
    sub-02,sub-02/t1.nii.gz,sub-02/t2.nii.gz,,roi:10,10,10:20,20,20

``case_id`` names the case's run folder; every column whose name starts with ``image`` is an
input channel, in the header's order; ``reference`` (optional) is a reference mask on the
image grid, given to the metrics that take one; ``target`` (optional) replaces the template's
target for that case, in the command line's form. Relative paths resolve against the cohort
file's folder. Any other column is an error, so a misspelt ``refrence`` is not silently ignored.

A folder is read with nnU-Net's naming: ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ... are
the channels of case ``CASE``; a file without a 4-digit channel suffix is a one-channel case
named by its stem; ``labels/CASE.nii.gz``, when present, is the case's reference mask.

Everything is checked before any case runs: missing columns, empty or duplicate case ids,
missing files and channel counts all raise one :class:`UserInputError` naming the problem.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserInputError
from ..io.paths import refuse_special
from .summary import COHORT_FILES

ID_COLUMNS = ("case_id", "case")
OPTIONAL_COLUMNS = ("reference", "target")
#: A case id names a folder: no separators, no leading dot (hidden names are the engine's own).
_CASE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
REFERENCE_FOLDER = "labels"


@dataclass(frozen=True)
class Case:
    """One case of a cohort.

    Attributes:
        case_id: names the run folder ``<out>/<case_id>``.
        images: absolute paths, one per model input channel, in order.
        reference: absolute path of a reference mask on the image grid, or None.
        target: a target in the command line's form replacing the template's, or None.
    """

    case_id: str
    images: tuple[str, ...]
    reference: str | None = None
    target: str | None = None


def read_cohort(source: str | Path) -> list[Case]:
    """The cases of a cohort file (``.csv``) or of a folder (nnU-Net naming), checked."""
    path = Path(source).expanduser()
    refuse_special(path, "cohort file")
    if path.is_dir():
        cases = discover_cases(path)
    elif path.is_file():
        cases = read_cohort_file(path)
    else:
        raise UserInputError(
            f"cohort {path} does not exist; give a cohort CSV file or a folder of images"
        )
    check_cases(cases, str(path))
    return cases


def read_cohort_file(path: Path) -> list[Case]:
    """Parse a cohort CSV (see the module's documentation); paths resolve against its folder."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserInputError(f"cohort file {path} could not be read as CSV: {e}") from e
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise UserInputError(
            f"cohort file {path} is empty; write a header line and one row per case"
        )
    header = [cell.strip() for cell in rows[0]]
    id_column = next((name for name in ID_COLUMNS if name in header), None)
    image_columns = [name for name in header if name.startswith("image")]
    if id_column is None or not image_columns:
        missing = "a case_id column" if id_column is None else "an image column"
        raise UserInputError(
            f"cohort file {path} has no {missing}; its header must hold case_id, one image "
            "column per channel (image, or image_t1,image_t2,...) and optionally reference, target"
        )
    known = {id_column, *image_columns, *OPTIONAL_COLUMNS}
    unknown = [name for name in header if name not in known]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if unknown or repeated:
        what = f"unknown column(s) {unknown}" if unknown else f"repeated column(s) {repeated}"
        raise UserInputError(
            f"cohort file {path} has {what}; the columns are case_id, image..., reference, target"
        )
    base = path.parent
    cases = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) > len(header):
            raise UserInputError(
                f"cohort file {path}, line {line}: {len(row)} cells for {len(header)} columns; "
                'quote cells holding commas (e.g. "roi:1,2,3:4,5,6")'
            )
        cells = dict(zip(header, (cell.strip() for cell in row)))
        case_id = cells.get(id_column, "")
        images = [cells.get(name, "") for name in image_columns]
        empty = [name for name, value in zip(image_columns, images) if not value]
        if not case_id or empty:
            what = "no case_id" if not case_id else f"no value in column(s) {empty}"
            raise UserInputError(
                f"cohort file {path}, line {line}: {what}; fill in every case's row"
            )
        target = _resolve_target(cells["target"], base) if cells.get("target") else None
        if target is not None:
            _check_target(target, f"cohort file {path}, line {line} (case {case_id})")
        cases.append(
            Case(
                case_id,
                tuple(_resolve(value, base) for value in images),
                _resolve(cells["reference"], base) if cells.get("reference") else None,
                target,
            )
        )
    return cases


def _check_target(text: str, where: str) -> None:
    """A case's target must parse now, with its line named, not when its case runs."""
    from ..targets.spec import TargetSpec

    try:
        TargetSpec.parse(text)
    except UserInputError as error:
        raise UserInputError(f"{where}: target {text!r}: {error}") from error


def discover_cases(folder: Path) -> list[Case]:
    """The cases of a folder by nnU-Net's naming (see the module's documentation)."""
    channels: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        suffix = _image_suffix(path) if path.is_file() else None
        if suffix is None:
            continue
        stem = path.name[: -len(suffix)]
        match = _CHANNEL_SUFFIX.match(stem)
        case_id, channel = (match["case"], int(match["channel"])) if match else (stem, -1)
        found = channels.setdefault(case_id, {})
        if channel in found or (found and (channel < 0) != (min(found) < 0)):
            raise UserInputError(
                f"case {case_id!r} in {folder} has both {path.name} and another file for the same "
                "channel; name channels CASE_0000, CASE_0001, ... or give one file CASE.nii.gz"
            )
        found[channel] = path
    if not channels:
        raise UserInputError(
            f"no image file found in {folder}; name them CASE_0000.nii.gz (channel 0000 of CASE) "
            "or CASE.nii.gz, or give a cohort CSV file"
        )
    references = _references(folder / REFERENCE_FOLDER)
    cases = []
    for case_id, found in channels.items():
        order = sorted(found)
        if order[0] >= 0 and order != list(range(len(order))):
            raise UserInputError(
                f"case {case_id!r} in {folder} has channels {[f'{c:04d}' for c in order]}; channels "
                "must be numbered 0000, 0001, ... without gaps"
            )
        reference = references.get(case_id)
        cases.append(
            Case(
                case_id,
                tuple(str(found[c].absolute()) for c in order),
                None if reference is None else str(reference),
            )
        )
    return cases


def check_cases(cases: list[Case], source: str, in_channels: int | None = None) -> None:
    """Case ids usable as folder names and unique, every listed file present, channel counts
    matching the model (when ``in_channels`` is given)."""
    if not cases:
        raise UserInputError(f"cohort {source} lists no case; add one row per case")
    bad = [c.case_id for c in cases if not _CASE_ID.match(c.case_id)]
    if bad:
        raise UserInputError(
            f"case id(s) {bad[:3]} in {source} cannot name a folder; use letters, digits, '_', '-' "
            "and '.' (not first)"
        )
    reserved = {name.casefold() for name in COHORT_FILES}
    taken = [c.case_id for c in cases if c.case_id.casefold() in reserved]
    if taken:
        raise UserInputError(
            f"case id(s) {taken[:3]} in {source} are the names of the cohort's own files "
            f"({', '.join(COHORT_FILES)}); rename the case(s)"
        )
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UserInputError(
            f"case id(s) {duplicates[:5]} appear twice in {source}; make them unique"
        )
    missing = [
        (c.case_id, path)
        for c in cases
        for path in (*c.images, *([c.reference] if c.reference else []))
        if not Path(path).exists()
    ]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserInputError(
            f"case {missing[0][0]}: {missing[0][1]} does not exist{more}; fix the paths in {source}"
        )
    if in_channels is not None:
        wrong = [c for c in cases if len(c.images) != in_channels]
        if wrong:
            raise UserInputError(
                f"case {wrong[0].case_id} has {len(wrong[0].images)} image(s) but the model takes "
                f"{in_channels} channel(s) ({len(wrong)} case(s) differ); list one image per channel"
            )


def _references(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.iterdir()):
        suffix = _image_suffix(path) if path.is_file() else None
        if suffix:
            found[path.name[: -len(suffix)]] = path.absolute()
    return found


def _image_suffix(path: Path) -> str | None:
    from ..io.images import SUPPORTED_SUFFIXES

    name = path.name.lower()
    return next((suffix for suffix in SUPPORTED_SUFFIXES if name.endswith(suffix)), None)


def _resolve(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).absolute())


def _resolve_target(text: str, base: Path) -> str:
    # A mask target names a file: resolve it like the other paths of the row.
    kind, sep, rest = text.partition(":")
    if kind.strip().lower() != "mask" or not rest:
        return text
    path, colon, label = rest.rpartition(":")
    if not (colon and label.isdigit()):
        path, label = rest, ""
    return f"mask:{_resolve(path, base)}" + (f":{label}" if label else "")
