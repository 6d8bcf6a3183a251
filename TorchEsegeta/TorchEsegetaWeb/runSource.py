"""What the viewer shows, read from a run folder (or a cohort's results folder) without writing.

Pure Python on the engine (no slicer, no vtk): every check a user can fail happens here, before
the server or a scene exists, so a bad folder costs one line and no start-up time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.paths import inside_folder

RUN_FILE = "run.json"
SEGMENTATION_FILE = "segmentation.nii.gz"
# "partial": some method ran out of its time budget; the others are complete and worth showing.
VIEWABLE_STATUSES = ("complete", "partial")


@dataclass
class MapEntry:
    """One attribution map of the run: the label names its file and the method switcher."""

    label: str
    title: str
    signed: bool
    file: Path


@dataclass
class ViewerRun:
    """A finished run folder checked for viewing: its record, its input images and maps."""

    folder: Path
    record: dict[str, Any]
    images: list[Path]
    maps: list[MapEntry]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return str(self.record.get("title") or self.folder.name)

    @property
    def evaluation(self) -> dict[str, Any] | None:
        return self.record.get("metrics") or None


def openRun(folder, images=None) -> ViewerRun:
    """Check a run folder for the viewer and say what is wrong in one line.

    Args:
        folder: a run folder written by ``torchesegeta explain``/``run``/``demo``.
        images: the input image files to show the maps over, in channel order; by default
            the run's own inputs (run.json "inputs"), which must still exist.

    Raises:
        UserInputError: not a run folder, an unfinished run, a map listed but missing, no map
            at all, or an input image that is gone (with the option that fixes it).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserInputError(f"{folder} is not a folder; give a run folder (it holds run.json)")
    record = _readRecord(folder)
    status = record.get("status")
    if status not in VIEWABLE_STATUSES:
        raise UserInputError(
            f"run {folder} has status {status!r}; only a complete run can be viewed "
            "(run it again, or view another run)"
        )
    maps, skipped = [], {}
    for entry in record.get("methods") or []:
        label = str(entry.get("label") or entry.get("name"))
        if entry.get("status", "ok") != "ok":
            skipped[label] = str(entry.get("status"))
            continue
        path = insideFolder(folder, entry.get("file") or f"{label}.nii.gz")
        if path is None or not path.is_file():
            raise UserInputError(
                f"the map of {label!r} ({entry.get('file')}) is missing from {folder}; "
                "the run folder is incomplete: run the explanation again"
            )
        title = str(entry.get("title") or label)
        maps.append(MapEntry(label, title, bool(entry.get("signed")), path))
    if not maps:
        raise UserInputError(f"run {folder} holds no attribution map to view")
    return ViewerRun(folder, record, _inputImages(folder, record, images), maps, skipped)


def insideFolder(folder: Path, relative: str) -> Path | None:
    """``folder / relative`` when it stays inside ``folder`` once links are resolved, else None.

    Run records and URLs are data: a name such as ``../../etc/passwd``, a symbolic link out of
    the folder or a name the system cannot take (a NUL byte) must never reach a file elsewhere
    nor fail the server.
    """
    return inside_folder(folder, relative)


def cohortCases(resultsFolder) -> dict[str, Path]:
    """The viewable cases of a cohort's results folder (``torchesegeta batch``): one run folder
    per case, by case name. Cases that failed have no run folder and are not listed.

    Raises:
        UserInputError: not a folder, or no viewable run folder in it.
    """
    resultsFolder = Path(resultsFolder).expanduser()
    if not resultsFolder.is_dir():
        raise UserInputError(
            f"{resultsFolder} is not a folder; give the results folder of `torchesegeta batch`"
        )
    cases = {}
    for child in sorted(resultsFolder.iterdir()):
        if child.name.startswith(".") or not (child / RUN_FILE).is_file():
            continue
        try:
            status = json.loads((child / RUN_FILE).read_text(encoding="utf-8")).get("status")
        except (OSError, json.JSONDecodeError):
            continue
        if status in VIEWABLE_STATUSES:
            cases[child.name] = child
    if not cases:
        raise UserInputError(
            f"{resultsFolder} holds no finished run folder (a sub-folder with run.json); "
            "give the results folder of `torchesegeta batch`"
        )
    return cases


def _readRecord(folder: Path) -> dict[str, Any]:
    path = folder / RUN_FILE
    if not path.is_file():
        raise UserInputError(
            f"{folder} is not a TorchEsegeta run folder (no {RUN_FILE}); give a folder written "
            "by `torchesegeta explain`, `run` or `demo`"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserInputError(f"{path} cannot be read ({e}); the run folder is damaged") from e
    if not isinstance(record, dict):
        raise UserInputError(f"{path} is not a run record; the run folder is damaged")
    return record


def _inputImages(folder: Path, record: dict[str, Any], images) -> list[Path]:
    if images:
        paths = [Path(p).expanduser() for p in images]
        option = "--image"
    else:
        paths = [
            Path(p) for p in record.get("inputs") or (record.get("job") or {}).get("images") or []
        ]
        option = None
        if not paths:
            raise UserInputError(
                f"run {folder} does not name its input image; pass it with --image FILE"
            )
    for path in paths:
        if not path.exists():
            where = f"given with {option}" if option else 'the run\'s input (run.json "inputs")'
            raise UserInputError(
                f"input image {path} ({where}) does not exist; "
                "pass the image the run explained with --image FILE"
            )
    return paths
