"""Anatomy-level summaries: how each map's attribution divides over the structures of a label
image (an atlas, a TotalSegmentator or Slicer segmentation) on the input grid.

Per method and structure, ``structures.csv`` holds the structure's share of the map's absolute
attribution (``abs_share``) and of its positive attribution (``positive_share``), the
structure's share of the image volume (``volume_share``), and their ratios (``enrichment``,
``positive_enrichment``): 1 is what a map spread evenly over the image would give, 3 means
three times more attribution than the structure's size alone would earn. Voxels with label 0
form the row "the rest of the image" (unless the names give label 0 a name), so the shares
of a map add up to 1.

The structures are an input, like the image: ``--structures LABELMAP[:NAMES]`` (or the job's
``structures``); the label image must lie on the input's grid, and the run's output folder
keeps apart from both files as from every input (``Job.input_paths``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserInputError
from ..io.atomic import atomic_write
from ..io.label_names import NAME_SUFFIXES
from ..io.paths import regular_file_inside

if TYPE_CHECKING:
    from ..io.volume import Geometry

STRUCTURES_FILE = "structures.csv"
STRUCTURES_FIGURE = "figures/structures.png"
OUTSIDE = "the rest of the image"
FIELDS = (
    "method",
    "title",
    "label",
    "structure",
    "voxels",
    "volume_share",
    "abs_share",
    "positive_share",
    "enrichment",
    "positive_enrichment",
)


@dataclass
class Structures:
    """A label image on the input grid and the name of each of its labels."""

    labels: np.ndarray
    names: dict[int, str]
    labelmap: str
    names_file: str | None = None


def parse_structures(text: str) -> dict[str, str | None]:
    """``LABELMAP[:NAMES]`` -> ``{"labelmap": ..., "names": ... or None}`` (the job's form).

    The split is at the colon after an image file's suffix and before a names file's (.ctbl,
    .txt, .csv, .json), so a path with a colon of its own (``C:\\atlas.nii.gz``) is read whole.
    """
    from ..io.images import SUPPORTED_SUFFIXES

    text = str(text).strip()
    for index, character in enumerate(text):
        head, tail = text[:index], text[index + 1 :]
        if (
            character == ":"
            and head.lower().endswith(SUPPORTED_SUFFIXES)
            and tail.lower().endswith(NAME_SUFFIXES)
        ):
            return {"labelmap": head, "names": tail}
    return {"labelmap": text, "names": None}


def load_structures(spec: Mapping[str, Any], geometry: Geometry) -> Structures:
    """Read the structures of a job (``{"labelmap", "names"}``) for the image grid ``geometry``.

    Raises:
        UserInputError: a missing file, a label image on another grid, or an unreadable names
            file (one line each, naming the fix).
    """
    from ..io.images import read_header, read_label
    from ..io.label_names import names_in_image_header, read_label_names

    labelmap = Path(str(spec["labelmap"])).expanduser()
    names_file = Path(str(spec["names"])).expanduser() if spec.get("names") else None
    for path, what in ((labelmap, "structure label image"), (names_file, "structure names file")):
        if path is None:
            continue
        if not path.exists():
            raise UserInputError(f"{what} {path} does not exist; check the --structures path")
    labels = read_label(labelmap, like=geometry)
    if names_file is not None:
        names = read_label_names(names_file)
    elif labelmap.suffix.lower() in (".nrrd", ".nhdr"):
        names = names_in_image_header(read_header(labelmap))
    else:
        names = {}
    return Structures(labels, names, str(labelmap.absolute()), _text(names_file))


def structure_rows(
    maps: Mapping[str, tuple[str, np.ndarray]], structures: Structures
) -> list[dict[str, Any]]:
    """One row per method and structure (see the module docstring), labels in ascending order.

    Args:
        maps: method label -> (method title, (I, J, K) map on the input grid).
        structures: the label image and names.
    """
    values, inverse = np.unique(structures.labels.ravel(), return_inverse=True)
    voxels = np.bincount(inverse, minlength=values.size)
    total_voxels = float(voxels.sum())
    rows = []
    for label, (title, array) in maps.items():
        flat = np.asarray(array, dtype=np.float64).ravel()
        absolute = np.bincount(inverse, weights=np.abs(flat), minlength=values.size)
        positive = np.bincount(inverse, weights=np.maximum(flat, 0.0), minlength=values.size)
        for index, value in enumerate(values):
            volume_share = voxels[index] / total_voxels
            abs_share = _share(absolute, index)
            positive_share = _share(positive, index)
            rows.append(
                {
                    "method": label,
                    "title": title,
                    "label": int(value),
                    "structure": structure_name(int(value), structures.names),
                    "voxels": int(voxels[index]),
                    "volume_share": float(volume_share),
                    "abs_share": abs_share,
                    "positive_share": positive_share,
                    "enrichment": None if abs_share is None else abs_share / volume_share,
                    "positive_enrichment": None
                    if positive_share is None
                    else positive_share / volume_share,
                }
            )
    return rows


def structure_name(label: int, names: Mapping[int, str]) -> str:
    if label in names and names[label]:
        return names[label]
    return OUTSIDE if label == 0 else f"label {label}"


def structures_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else _cell(row[k]) for k in FIELDS})
    return buffer.getvalue()


def read_structures_csv(folder: Path) -> list[dict[str, Any]]:
    """The rows of a run folder's structures.csv (numbers as numbers), or [] when it has none."""
    path = regular_file_inside(folder, STRUCTURES_FILE)  # a link out of the folder is not read
    if path is None:
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = dict(row)
            for key in FIELDS[4:]:
                parsed[key] = float(row[key]) if row.get(key) else None
            parsed["label"], parsed["voxels"] = int(row["label"]), int(row["voxels"])
            rows.append(parsed)
    return rows


def write_structures(
    folder: Path,
    maps: Mapping[str, tuple[str, np.ndarray]],
    structures: Structures,
    record: dict[str, Any],
    figures: bool = True,
) -> list[dict[str, Any]]:
    """Write structures.csv (and its figure) into a run folder; ``record`` (run.json's
    contents) notes them and is written again."""
    from .run_folder import json_default

    folder = Path(folder)
    rows = structure_rows(maps, structures)
    atomic_write(folder / STRUCTURES_FILE, structures_csv(rows))
    record["structures"] = {
        "labelmap": structures.labelmap,
        "names": structures.names_file,
        "file": STRUCTURES_FILE,
        "count": int(len({row["label"] for row in rows})),
    }
    if figures and rows:
        from ..figures.structures import write_structures_figure

        path = write_structures_figure(rows, folder / STRUCTURES_FIGURE)
        figure = str(path.relative_to(folder))
        record["figures"] = list(dict.fromkeys([*record.get("figures", []), figure]))
    atomic_write(folder / "run.json", json.dumps(record, indent=2, default=json_default))
    return rows


def _share(sums: np.ndarray, index: int) -> float | None:
    total = float(sums.sum())
    return float(sums[index] / total) if total > 0 else None


def _cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path.absolute())
