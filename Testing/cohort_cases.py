"""Small synthetic cohorts for the cohort tests and the cohort benchmark: 24^3 MRA-like volumes
the demo model segments in a fraction of a second, with their vessel labels as references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry
from TorchEsegetaLib.models.demo.synthetic import make_vessel_volume

SIZE = (24, 24, 24)
GEOMETRY = Geometry(SIZE, (0.8, 0.8, 0.8), (4.0, -2.0, 1.0))
#: Cheap: one gradient pass, two metrics of the map alone.
TEMPLATE = {
    "model": {"kind": "demo"},
    "target": {"kind": "class", "class": "vessel"},
    "methods": ["saliency", "input_x_gradient"],
    "metrics": ["mass_in_target", "relevance_rank_accuracy"],
    "device": "cpu",
    "figures": False,
}


def write_cases(folder: Path, count: int, seed: int = 100) -> list[str]:
    """``count`` cases ``c000``, ``c001``, ... (image and label files); returns the ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for index in range(count):
        case = f"c{index:03d}"
        image, label = make_vessel_volume(SIZE, seed=seed + index)
        write_volume(image, GEOMETRY, folder / f"{case}.nii.gz")
        write_volume(label, GEOMETRY, folder / f"{case}_label.nii.gz", dtype="uint8")
        ids.append(case)
    return ids


def write_cohort(
    folder: Path, ids: list[str], extra_rows: tuple[str, ...] = (), name: str = "cohort.csv"
) -> Path:
    """A cohort CSV listing the cases written by :func:`write_cases` (relative paths)."""
    rows = ["case_id,image,reference,target"]
    rows += [f"{case},{case}.nii.gz,{case}_label.nii.gz," for case in ids]
    path = folder / name
    path.write_text("\n".join([*rows, *extra_rows]) + "\n", encoding="utf-8")
    return path


def write_template(folder: Path, name: str = "template.json", **changes) -> Path:
    path = folder / name
    path.write_text(json.dumps({**TEMPLATE, **changes}), encoding="utf-8")
    return path


def write_faulty_cases(folder: Path) -> tuple[str, ...]:
    """A corrupt image and a case whose target mask is empty; returns their cohort rows."""
    (folder / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really a NIfTI file")
    write_volume(np.zeros(SIZE, np.uint8), GEOMETRY, folder / "empty_mask.nii.gz", dtype="uint8")
    return (
        "corrupt,corrupt.nii.gz,,",
        "empty_target,c000.nii.gz,,mask:empty_mask.nii.gz",
    )


def hidden_leftovers(out: Path) -> list[str]:
    """Hidden entries of an output folder other than the engine's own ``.cohort``."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".cohort")
