"""One run (a case) in the viewer's scene, through the Slicer module's own loader and styling.

The maps, their colour tables, window/level, transparency and signed/unsigned styling, the
segmentation and the metrics table come from ``TorchEsegetaSlicer`` (``loadRunFolder`` and the
helpers it calls), so a map looks in the browser exactly as it does in Slicer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import slicer
from TorchEsegetaSlicer.display import showColorLegend
from TorchEsegetaSlicer.runFolder import loadRunFolder
from TorchEsegetaSlicer.volumeNodes import volumeNodeFromArray

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.images import read_channels

from .runSource import ViewerRun


@dataclass
class CaseNodes:
    """The nodes one case added to the scene, to show it and to remove it again."""

    run: ViewerRun
    channels: list  # input volume nodes, one per channel
    maps: dict  # method or uncertainty map label -> volume node
    segmentation: object | None
    legends: dict = field(default_factory=dict)  # method label -> colour legend display node
    nodeIds: list = field(default_factory=list)


def loadCase(scene, colorLogic, run: ViewerRun) -> CaseNodes:
    """Add the run's input image, maps (styled as in Slicer) and segmentation to ``scene``.

    Args:
        scene: the viewer's scene.
        colorLogic: a ``vtkSlicerColorLogic`` (it creates the colour legends).
        run: the checked run folder.

    Raises:
        UserInputError: an input image that cannot be read, or a file of the run that is not on
            the input image's grid.
    """
    before = _nodeIds(scene)
    try:
        volume = read_channels(run.images)
        channels = [
            volumeNodeFromArray(
                scene, volume.array[index], volume.geometry, _channelName(run, index)
            )
            for index in range(volume.channels)
        ]
        loaded = loadRunFolder(scene, run.folder, referenceVolumeNode=channels[0])
    except (ValueError, UserInputError) as e:
        _removeNodes(scene, _nodeIds(scene) - before)
        raise UserInputError(str(e)) from e
    segmentation = loaded["segmentation"]
    if segmentation is not None:
        _showAsOutline(segmentation)
    # uncertainty maps are switched and compared like the attributions, in their own colours
    maps = {**loaded["maps"], **loaded["uncertainty"]}
    legends = {label: showColorLegend(colorLogic, node, False) for label, node in maps.items()}
    added = [nodeId for nodeId in _orderedIds(scene) if nodeId not in before]
    return CaseNodes(run, channels, maps, segmentation, legends, added)


def unloadCase(scene, case: CaseNodes) -> None:
    """Remove every node ``case`` added (the scene is as before :func:`loadCase`)."""
    _removeNodes(scene, set(case.nodeIds))


def _showAsOutline(segmentationNode) -> None:
    # The outline leaves the image and the map under the segmentation readable.
    displayNode = segmentationNode.GetDisplayNode()
    displayNode.SetVisibility2DFill(False)
    displayNode.SetVisibility2DOutline(True)
    displayNode.SetSliceIntersectionThickness(2)
    segmentationNode.CreateClosedSurfaceRepresentation()
    displayNode.SetPreferredDisplayRepresentationName3D("Closed surface")
    # Opaque: a translucent surface came out invisible with software OpenGL (llvmpipe, what
    # renders offscreen on a server without a GPU).
    displayNode.SetOpacity3D(1.0)


def _channelName(run: ViewerRun, index: int) -> str:
    if len(run.images) == 1:
        return run.images[0].name.split(".")[0]
    return f"{run.folder.name} input {index + 1}"


def _orderedIds(scene) -> list[str]:
    return [scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())]


def _nodeIds(scene) -> set[str]:
    return set(_orderedIds(scene))


def _removeNodes(scene, nodeIds) -> None:
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for nodeId in nodeIds:
        node = scene.GetNodeByID(nodeId)
        if node is not None and node is not shNode:
            scene.RemoveNode(node)
