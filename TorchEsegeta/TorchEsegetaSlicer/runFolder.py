"""Load an engine run folder (run.json, segmentation, one map per method, uncertainty maps) into
the scene."""

from __future__ import annotations

import json
from pathlib import Path

from TorchEsegetaLib.io.images import read_volume
from TorchEsegetaLib.runs.structures import read_structures_csv
from TorchEsegetaLib.runs.summary_text import describe_run_folder, plain_text

from .resultNodes import MapResult, UncertaintyMap, addResultNodes
from .volumeNodes import geometryFromVolumeNode

GEOMETRY_TOLERANCE = 1e-4
SEGMENTATION_FILE = "segmentation.nii.gz"
# "partial": some method ran out of its time budget; the others are complete and worth showing.
LOADABLE_STATUSES = ("complete", "partial")


def loadRunFolder(scene, runFolder, referenceVolumeNode=None) -> dict:
    """Add a run's attribution maps, segmentation and metrics to the scene, in one folder.

    Every file is read and checked before any node is added, so a bad run folder leaves
    the scene unchanged.

    Args:
        scene: the scene to add the nodes to.
        runFolder: folder written by the engine (holds run.json).
        referenceVolumeNode: the input volume the run explained; when given, every file must
            lie on its grid, and the nodes are named after it, share its parent transform and
            go into a folder beside it in the subject hierarchy.

    Returns:
        ``{"maps": {method label: volume node}, "segmentation": segmentation node or None,
        "folderItemId": subject hierarchy folder item, "table": metrics table node or None,
        "structuresTable": structures table node or None, "charts": {metric title: plot chart
        node}, "skipped": {method label: status}, "uncertainty": {map label: volume node},
        "uncertaintyTable": table node or None, "run": the run.json contents, "summaryText":
        the run in plain words}`` (methods that did not finish have no map).

    Raises:
        ValueError: not a finished run folder, a missing file, or a file off the reference grid.
        UserInputError: a file that SimpleITK cannot read.
    """
    runFolder = Path(runFolder)
    run = _readRunJson(runFolder)
    inputName = referenceVolumeNode.GetName() if referenceVolumeNode is not None else runFolder.name
    expected = (
        geometryFromVolumeNode(referenceVolumeNode) if referenceVolumeNode is not None else None
    )

    maps, skipped = {}, {}
    for entry in run.get("methods", []):
        # Labels tell apart two runs of one method with different parameters.
        label = entry.get("label", entry["name"])
        if entry.get("status", "ok") != "ok":
            skipped[label] = entry.get("status")
            continue
        fileName = entry.get("file", f"{label}.nii.gz")
        maps[label] = (entry, _readOnGrid(runFolder / fileName, expected))
    uncertainty = {
        entry.get("label", Path(entry["file"]).name.split(".")[0]): (
            entry,
            _readOnGrid(runFolder / entry["file"], expected),
        )
        for entry in run.get("uncertainty", [])
    }
    segmentationPath = runFolder / SEGMENTATION_FILE
    segmentation = _readOnGrid(segmentationPath, expected) if segmentationPath.exists() else None

    added = addResultNodes(
        scene,
        expected if expected is not None else _firstGeometry(maps, segmentation),
        {
            label: MapResult(volume.array[0], entry.get("title", label), bool(entry.get("signed")))
            for label, (entry, volume) in maps.items()
        },
        labelmap=segmentation.array[0] if segmentation is not None else None,
        classNames=labelNames(run),
        evaluation=run.get("metrics"),
        folderName=runFolder.name,
        referenceVolumeNode=referenceVolumeNode,
        inputName=inputName,
        structures=read_structures_csv(runFolder),
        uncertainty={
            label: UncertaintyMap(volume.array[0], entry.get("title", label), entry.get("unit", ""))
            for label, (entry, volume) in uncertainty.items()
        },
        uncertaintySummaries=run.get("uncertainty_summary"),
    )
    summaryText = plain_text(describe_run_folder(runFolder))
    return {**added, "skipped": skipped, "run": run, "summaryText": summaryText}


def runCard(run: dict) -> dict:
    """The model card of a run: run.json keeps it under "model" (older files at the top)."""
    return run.get("card") or (run.get("model") or {}).get("card") or {}


def labelNames(run: dict) -> list:
    """One name per value of the run's segmentation, 0 first (run.json's label_names; a run
    written before them has its card's class names, which are those of argmax labels)."""
    names = (run.get("segmentation") or {}).get("label_names")
    return list(names) if names else list(runCard(run).get("class_names", []))


def _firstGeometry(maps: dict, segmentation):
    for _, volume in maps.values():
        return volume.geometry
    if segmentation is not None:
        return segmentation.geometry
    raise ValueError("the run folder holds no map and no segmentation; nothing to load")


def _readRunJson(runFolder: Path) -> dict:
    path = runFolder / "run.json"
    if not path.is_file():
        raise ValueError(f"{runFolder} is not a TorchEsegeta run folder: it has no run.json")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} could not be read ({e}); the run folder may be damaged") from e
    if run.get("status") not in LOADABLE_STATUSES:
        raise ValueError(
            f"run {runFolder} has status {run.get('status')!r}, not 'complete'; load a finished run"
        )
    return run


def _readOnGrid(path: Path, expected):
    if not path.is_file():
        raise ValueError(f"{path} is listed in the run but missing; the run folder is incomplete")
    volume = read_volume(path)
    if volume.channels != 1:
        raise ValueError(f"{path} has {volume.channels} channels; an attribution map has one")
    if expected is not None:
        difference = expected.mismatch(volume.geometry, GEOMETRY_TOLERANCE)
        if difference is not None:
            raise ValueError(
                f"{path.name} is not on the grid of the reference volume: {difference}; "
                "load the run with the volume it was computed on"
            )
    return volume
