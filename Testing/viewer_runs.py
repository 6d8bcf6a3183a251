"""Run folders for the web viewer's tests: a synthetic image and maps whose colours are known.

The maps are piecewise constant on 12 x 12 voxel blocks of the axial plane (the same on every
slice), with values chosen so that the Slicer module's robust window is exactly [0, 1] for the
unsigned map and [-1, 1] for the signed one: the colour at a block's centre is then a sample of
the colour table itself (``_INFERNO[2 * 4 v]``, ``_BLUE_WHITE_RED[4 (v + 1)]``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from helpers import TTA_ENTROPY_ENTRY

from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry
from TorchEsegetaLib.metrics.results import Evaluation
from TorchEsegetaLib.runs.structures import Structures, structure_rows, structures_csv
from TorchEsegetaLib.runs.summary import write_summary

BLOCK = 12
SIZE = (48, 48, 6)
GEOMETRY = Geometry(
    size=SIZE, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3).ravel()
)
# Block values (row = block along j, column = block along i); zeros on the diagonal are
# transparent in the unsigned map (below the Slicer module's threshold).
UNSIGNED_BLOCKS = np.array(
    [[0.0, 0.25, 0.5, 0.75], [1.0, 0.0, 0.25, 0.5], [0.75, 1.0, 0.0, 0.25], [0.5, 0.75, 1.0, 0.0]]
)
SIGNED_BLOCKS = np.array(
    [[-1.0, -0.5, 0.0, 0.5], [1.0, -1.0, -0.5, 0.0], [0.5, 1.0, -1.0, -0.5], [0.0, 0.5, 1.0, -1.0]]
)
# The segmentation: one block, (bi, bj) = (0, 2), i.e. voxels i in [0, 12), j in [24, 36).
SEGMENT_BLOCK = (0, 2)
SCORES = {
    "blocks": {"deletion": 0.456, "insertion": 0.321},
    "signed": {"deletion": 0.123, "insertion": 0.789},
}


def blockArray(blocks: np.ndarray) -> np.ndarray:
    """(i, j, k) array holding ``blocks[bj, bi]`` on each block of the axial plane."""
    plane = np.kron(blocks, np.ones((BLOCK, BLOCK))).T  # indexed (i, j)
    return np.repeat(plane[:, :, None], SIZE[2], axis=2).astype(np.float32)


def makeViewerRun(folder: Path, imageFolder: Path | None = None) -> Path:
    """Write a complete run folder (two maps, a segmentation, an evaluation) and its input image."""
    folder = Path(folder)
    imageFolder = Path(imageFolder or folder.parent / f"{folder.name}-input")
    i, j, _ = np.meshgrid(*(np.arange(n) for n in SIZE), indexing="ij")
    image = write_volume((100.0 + i + j).astype(np.float32), GEOMETRY, imageFolder / "image.nii.gz")
    write_volume(blockArray(UNSIGNED_BLOCKS), GEOMETRY, folder / "blocks.nii.gz")
    write_volume(blockArray(SIGNED_BLOCKS), GEOMETRY, folder / "signed.nii.gz")
    labels = np.zeros(SIZE, np.uint8)
    bi, bj = SEGMENT_BLOCK
    labels[bi * BLOCK : (bi + 1) * BLOCK, bj * BLOCK : (bj + 1) * BLOCK, :] = 1
    write_volume(labels, GEOMETRY, folder / "segmentation.nii.gz", dtype=np.uint8)
    (folder / "figures").mkdir()
    (folder / "figures" / "note.png").write_bytes(b"\x89PNG not really")
    record = {
        "tool": "torchesegeta",  # a run folder of ours: the report is written into it
        "format_version": 1,
        "status": "complete",
        "title": "synthetic blocks: vessel (class)",
        "inputs": [str(image.absolute())],
        "model": {"kind": "demo", "card": {"class_names": ["background", "vessel"]}},
        "target": {"kind": "class", "class": "vessel"},
        "methods": [
            _method("blocks", "Blocks", False),
            _method("signed", "Signed blocks", True),
            {"label": "slow", "name": "occlusion", "status": "timed out", "signed": False},
        ],
        "metrics": _evaluation().to_json(),
        "warnings": [],
    }
    (folder / "run.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    write_summary(folder, _evaluation(), record)
    rows = structure_rows(
        {
            "blocks": ("Blocks", blockArray(UNSIGNED_BLOCKS)),
            "signed": ("Signed blocks", blockArray(SIGNED_BLOCKS)),
        },
        Structures(labels.astype(np.int32), {1: "segment block"}, "structures.nii.gz"),
    )
    (folder / "structures.csv").write_text(structures_csv(rows), encoding="utf-8")
    return folder


def folderSnapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (ns)."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(Path(folder).rglob("*"))
    }


def _method(label: str, title: str, signed: bool) -> dict:
    return {
        "label": label,
        "name": "saliency",
        "title": title,
        "params": {},
        "status": "ok",
        "signed": signed,
        "file": f"{label}.nii.gz",
    }


#: Random block orders' areas: "signed" beats them by far (the recommended map), "blocks" not.
RANDOM_AUCS = {"deletion": [0.5, 0.52, 0.48], "insertion": [0.5, 0.52, 0.48]}


def _evaluation() -> Evaluation:
    x = list(np.linspace(0.0, 1.0, 6))
    info = {
        "deletion": {"title": "Deletion AUC", "direction": "lower"},
        "insertion": {"title": "Insertion AUC", "direction": "higher"},
        "model_randomisation": {"title": "Model randomisation check", "direction": "lower"},
    }
    details: dict = {name: {} for name in info}
    for label, scores in SCORES.items():
        for name, sign in (("deletion", -1.0), ("insertion", 1.0)):
            randoms = RANDOM_AUCS[name]
            details[name][label] = {
                "aucs": [scores[name]],
                "random_aucs": randoms,
                "span": 1.0,
                "gain": sign * (scores[name] - float(np.mean(randoms))),
            }
        details["model_randomisation"][label] = {"passed": True, "threshold": 0.5}
    return Evaluation(
        metrics=info,
        scores={label: {**scores, "model_randomisation": 0.2} for label, scores in SCORES.items()},
        curves={
            "deletion": {"blocks": (x, [1 - v for v in x]), "signed": (x, [1 - v * v for v in x])},
            "insertion": {"blocks": (x, x), "signed": (x, [v * v for v in x])},
        },
        details=details,
        method_info={
            "blocks": {"seconds": 1.5, "peak_memory_mb": 10.0, "title": "Blocks"},
            "signed": {"seconds": 2.5, "peak_memory_mb": 20.0, "title": "Signed blocks"},
        },
    )


def expectedColour(blocks: np.ndarray, signed: bool, bi: int, bj: int) -> np.ndarray | None:
    """The 8-bit RGB the Slicer module's styling gives block (bi, bj) of a map, or None where the
    map is transparent: the module's window (``map_window``) placed on its colour table, whose
    points are evenly spaced and linearly interpolated (a VTK colour transfer function)."""
    from TorchEsegetaLib.figures import display

    lower, upper = display.map_window(blockArray(blocks), signed)
    value = blocks[bj, bi]
    if not signed and value < lower + display.TRANSPARENT_BELOW * (upper - lower):
        return None
    table = np.array(display.DIVERGING_COLOURS if signed else display.SEQUENTIAL_COLOURS)
    position = np.clip((value - lower) / (upper - lower), 0.0, 1.0)
    points = np.linspace(0.0, 1.0, len(table))
    return np.array([np.interp(position, points, table[:, c]) for c in range(3)]) * 255.0


def addUncertainty(folder: Path) -> Path:
    """Add a tta entropy map (the unsigned blocks) and its summary to a run folder of
    :func:`makeViewerRun`."""
    folder = Path(folder)
    write_volume(blockArray(UNSIGNED_BLOCKS), GEOMETRY, folder / "uncertainty_tta_entropy.nii.gz")
    record = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    record["uncertainty"] = [dict(TTA_ENTROPY_ENTRY)]
    record["uncertainty_summary"] = [UNCERTAINTY_SUMMARY]
    (folder / "run.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return folder


UNCERTAINTY_SUMMARY = {
    "kind": "tta",
    "members": 8,
    "class": "vessel",
    "mean_entropy_in_target": 0.4321,
    "mean_mutual_information_in_target": 0.0123,
    "class_flip_share": 0.25,
    "class_volume_ml": {"min": 0.5, "max": 0.75, "range": 0.25},
}
