"""Engine results -> scene nodes: styled maps, uncertainty maps, segmentation and metrics in one
folder.

Shared by the run-folder loader (the panel and batch mode) and the in-process console API, so
results look the same however they were computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer

from .display import (
    LEGEND_TITLE_ATTRIBUTE,
    MAP_ATTRIBUTE,
    UNCERTAINTY_ATTRIBUTE,
    styleAttributionNode,
    styleUncertaintyNode,
)
from .evaluationData import evaluationTables, uncertaintyRows
from .segmentations import segmentationNodeFromLabelmap
from .tables import plotChartFromCurves, tableNodeFromMetrics
from .volumeNodes import volumeNodeFromArray


@dataclass
class MapResult:
    """One attribution map to add: (I, J, K) values, the title shown in node names, its sign."""

    array: np.ndarray
    title: str
    signed: bool


@dataclass
class UncertaintyMap:
    """One uncertainty map to add: (I, J, K) values, its title and the unit of its values."""

    array: np.ndarray
    title: str
    unit: str


def addResultNodes(
    scene,
    geometry,
    maps: dict,
    labelmap=None,
    classNames=(),
    evaluation=None,
    folderName: str = "TorchEsegeta",
    referenceVolumeNode=None,
    inputName: str | None = None,
    structures=None,
    uncertainty: dict | None = None,
    uncertaintySummaries=None,
) -> dict:
    """Add a run's maps, segmentation, metrics and structures tables to the scene, in one folder.

    Args:
        scene: the scene to add the nodes to.
        geometry: the grid of every array (the input's).
        maps: ``{label: MapResult}``, one per method that finished.
        labelmap: the model's (I, J, K) label map, or None.
        classNames: one name per label value, background first.
        evaluation: the engine's evaluation (an Evaluation or run.json's "metrics"): a table
            node with one row per method, and a plot chart per metric with curves.
        folderName: name of the subject hierarchy folder.
        referenceVolumeNode: the input volume: nodes are named after it, share its parent
            transform and their folder goes beside it in the subject hierarchy.
        inputName: the name prefix when there is no reference node.
        structures: the rows of the run's structures.csv (one per method and structure): a
            table node with one row per structure and method.
        uncertainty: ``{label: UncertaintyMap}``: volume nodes in the uncertainty colours,
            their legends titled with what they hold.
        uncertaintySummaries: run.json's "uncertainty_summary": a table node, one row per kind.

    Returns:
        ``{"maps": {label: volume node}, "uncertainty": {label: volume node}, "segmentation":
        node or None, "table": node or None, "structuresTable": node or None,
        "uncertaintyTable": node or None, "folderItemId": subject hierarchy folder item}``.
    """
    if inputName is None:
        inputName = referenceVolumeNode.GetName() if referenceVolumeNode is not None else folderName
    nodes = {}
    for label, result in maps.items():
        node = volumeNodeFromArray(scene, result.array, geometry, f"{inputName} {result.title}")
        node.SetAttribute(MAP_ATTRIBUTE, label)
        node.SetAttribute("TorchEsegeta.signed", str(bool(result.signed)).lower())
        styleAttributionNode(scene, node, signed=result.signed)
        nodes[label] = node
    uncertaintyNodes = {}
    for label, found in (uncertainty or {}).items():
        node = volumeNodeFromArray(scene, found.array, geometry, f"{inputName} {found.title}")
        node.SetAttribute(UNCERTAINTY_ATTRIBUTE, label)
        node.SetAttribute(LEGEND_TITLE_ATTRIBUTE, f"{found.title} ({found.unit})")
        styleUncertaintyNode(scene, node)
        uncertaintyNodes[label] = node
    summaryRows = uncertaintyRows(uncertaintySummaries)
    uncertaintyTable = (
        tableNodeFromMetrics(scene, summaryRows, f"{inputName} uncertainty")
        if summaryRows
        else None
    )
    segmentationNode = None
    if labelmap is not None:
        labels = np.rint(np.asarray(labelmap)).astype(np.int16)
        segmentationNode = segmentationNodeFromLabelmap(
            scene, labels, geometry, list(classNames), f"{inputName} segmentation"
        )
    rows, curveCharts = evaluationTables(evaluation)
    tableNode = tableNodeFromMetrics(scene, rows, f"{inputName} metrics") if rows else None
    structuresNode = (
        tableNodeFromMetrics(scene, structureRows(structures), f"{inputName} structures")
        if structures
        else None
    )
    charts = {
        title: plotChartFromCurves(scene, curves, f"{inputName} {title}", xTitle, yTitle)
        for title, (curves, xTitle, yTitle) in curveCharts.items()
    }
    spatialNodes = [
        node
        for node in [*nodes.values(), *uncertaintyNodes.values(), segmentationNode]
        if node is not None
    ]
    if referenceVolumeNode is not None:
        for node in spatialNodes:
            node.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
    folderNodes = spatialNodes + [
        n for n in (tableNode, structuresNode, uncertaintyTable) if n is not None
    ]
    for chartNode in charts.values():
        folderNodes += [chartNode, *_seriesAndTables(chartNode)]
    folderItemId = putInFolder(scene, folderName, folderNodes, besideNode=referenceVolumeNode)
    return {
        "maps": nodes,
        "uncertainty": uncertaintyNodes,
        "segmentation": segmentationNode,
        "table": tableNode,
        "structuresTable": structuresNode,
        "uncertaintyTable": uncertaintyTable,
        "charts": charts,
        "folderItemId": folderItemId,
    }


def structureRows(rows) -> list[dict]:
    """structures.csv's rows as table rows: the map by its title, shares in percent."""
    return [
        {
            "map": row["title"],
            "structure": row["structure"],
            "label": row["label"],
            "voxels": row["voxels"],
            "volume %": _percent(row["volume_share"]),
            "attribution %": _percent(row["abs_share"]),
            "positive attribution %": _percent(row["positive_share"]),
            "enrichment": row["enrichment"],
        }
        for row in rows
    ]


def _percent(value):
    return None if value is None else 100.0 * float(value)


def _seriesAndTables(chartNode) -> list:
    series = [
        chartNode.GetNthPlotSeriesNode(index)
        for index in range(chartNode.GetNumberOfPlotSeriesNodes())
    ]
    return [*series, *(s.GetTableNode() for s in series if s.GetTableNode() is not None)]


def putInFolder(scene, folderName: str, nodes, besideNode=None) -> int:
    """Create a subject hierarchy folder (beside ``besideNode`` if given) holding ``nodes``."""
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
