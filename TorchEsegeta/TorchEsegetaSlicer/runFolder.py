"""Load an engine run folder (run.json, segmentation, one map per method) into the scene."""

from __future__ import annotations

import json
import numbers
from pathlib import Path

import numpy as np
import slicer

from TorchEsegetaLib.io import read_volume

from .display import styleAttributionNode
from .segmentations import segmentationNodeFromLabelmap
from .tables import tableNodeFromMetrics
from .volumeNodes import geometryFromVolumeNode, volumeNodeFromArray

GEOMETRY_TOLERANCE = 1e-4
SEGMENTATION_FILE = "segmentation.nii.gz"


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
        ``{"maps": {method name: volume node}, "segmentation": segmentation node or None,
        "folderItemId": subject hierarchy folder item, "table": metrics table node or None,
        "skipped": {method name: status}}`` (methods that did not finish have no map).

    Raises:
        ValueError: not a complete run folder, a missing file, or a file off the reference grid.
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
        if entry.get("status", "ok") != "ok":
            skipped[entry["name"]] = entry.get("status")
            continue
        fileName = entry.get("file", f"{entry['name']}.nii.gz")
        maps[entry["name"]] = (entry, _readOnGrid(runFolder / fileName, expected))
    segmentationPath = runFolder / SEGMENTATION_FILE
    segmentation = _readOnGrid(segmentationPath, expected) if segmentationPath.exists() else None

    nodes = {}
    for name, (entry, volume) in maps.items():
        node = volumeNodeFromArray(
            scene, volume.array[0], volume.geometry, f"{inputName} {entry.get('title', name)}"
        )
        styleAttributionNode(scene, node, signed=bool(entry.get("signed", False)))
        nodes[name] = node
    segmentationNode = None
    if segmentation is not None:
        classNames = run.get("card", {}).get("class_names", [])
        labels = np.rint(segmentation.array[0]).astype(np.int16)
        segmentationNode = segmentationNodeFromLabelmap(
            scene, labels, segmentation.geometry, classNames, f"{inputName} segmentation"
        )
    rows = _metricRows(run.get("metrics"))
    tableNode = tableNodeFromMetrics(scene, rows, f"{inputName} metrics") if rows else None

    spatialNodes = [node for node in [*nodes.values(), segmentationNode] if node is not None]
    if referenceVolumeNode is not None:
        for node in spatialNodes:
            node.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
    folderNodes = spatialNodes + ([tableNode] if tableNode is not None else [])
    folderItemId = _putInFolder(scene, runFolder.name, folderNodes, besideNode=referenceVolumeNode)
    return {
        "maps": nodes,
        "segmentation": segmentationNode,
        "folderItemId": folderItemId,
        "table": tableNode,
        "skipped": skipped,
    }


def _readRunJson(runFolder: Path) -> dict:
    path = runFolder / "run.json"
    if not path.is_file():
        raise ValueError(f"{runFolder} is not a TorchEsegeta run folder: it has no run.json")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} could not be read ({e}); the run folder may be damaged") from e
    if run.get("status") != "complete":
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


def _metricRows(metrics) -> list[dict]:
    """run.json metrics, ``{method: {metric: value}}`` or a list of rows, as table rows."""
    if not metrics:
        return []
    if isinstance(metrics, dict):
        metrics = [
            {"method": method, **(values if isinstance(values, dict) else {"value": values})}
            for method, values in metrics.items()
        ]
    # Curves and nested results do not fit in a cell; they belong in plots.
    return [
        {
            key: value
            for key, value in row.items()
            if isinstance(value, (str, numbers.Real)) or value is None
        }
        for row in metrics
        if isinstance(row, dict)
    ]


def _putInFolder(scene, folderName: str, nodes, besideNode=None) -> int:
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parentItemId = shNode.GetSceneItemID()
    if besideNode is not None and shNode.GetItemByDataNode(besideNode) != shNode.GetInvalidItemID():
        parentItemId = shNode.GetItemParent(shNode.GetItemByDataNode(besideNode))
    folderItemId = shNode.CreateFolderItem(parentItemId, folderName)
    for node in nodes:
        itemId = shNode.GetItemByDataNode(node)
        # Inside the app a plugin adds an item for each new node; without it, add it here.
        if itemId == shNode.GetInvalidItemID():
            shNode.CreateItem(folderItemId, node)
        else:
            shNode.SetItemParent(itemId, folderItemId)
    return folderItemId
