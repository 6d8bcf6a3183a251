"""MRML glue of the TorchEsegeta Slicer module: engine results <-> scene nodes.

Every function takes the scene (or a node) explicitly and uses only MRML classes and logics
that need no application, so the same code runs inside Slicer and, in CI, on the
``slicer-core`` wheel.
"""

from .display import divergingColorNode, sequentialColorNode, showAsForeground, styleAttributionNode
from .runFolder import loadRunFolder
from .sceneExport import loadSceneBundle, saveSceneBundle
from .segmentations import labelmapFromSegment, segmentationNodeFromLabelmap
from .tables import plotChartFromCurves, tableNodeFromMetrics
from .volumeNodes import (
    arrayAndGeometryFromVolumeNode,
    geometryFromVolumeNode,
    ijkToRasArray,
    volumeNodeFromArray,
)

__all__ = [
    "arrayAndGeometryFromVolumeNode",
    "divergingColorNode",
    "geometryFromVolumeNode",
    "ijkToRasArray",
    "labelmapFromSegment",
    "loadRunFolder",
    "loadSceneBundle",
    "plotChartFromCurves",
    "saveSceneBundle",
    "segmentationNodeFromLabelmap",
    "sequentialColorNode",
    "showAsForeground",
    "styleAttributionNode",
    "tableNodeFromMetrics",
    "volumeNodeFromArray",
]
