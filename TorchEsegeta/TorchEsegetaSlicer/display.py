"""How attribution maps look: colour maps, robust window/level, transparency, slice layers."""

from __future__ import annotations

import numpy as np
import slicer

# Distinct, colour-blind-friendly colours for segments and plot series (Tableau 10), used in label order.
DISTINCT_COLORS = (
    (0.122, 0.467, 0.706),
    (1.000, 0.498, 0.055),
    (0.173, 0.627, 0.173),
    (0.839, 0.153, 0.157),
    (0.580, 0.404, 0.741),
    (0.549, 0.337, 0.294),
    (0.890, 0.467, 0.761),
    (0.498, 0.498, 0.498),
    (0.737, 0.741, 0.133),
    (0.090, 0.745, 0.812),
)

SEQUENTIAL_COLOR_NAME = "TorchEsegetaSequential"
# Node attribute marking attribution maps (its value: the method label).
MAP_ATTRIBUTE = "TorchEsegeta.method"
DIVERGING_COLOR_NAME = "TorchEsegetaDiverging"

# Samples of matplotlib's "inferno" and "RdBu_r" at 0, 1/8, ..., 1: perceptually uniform, so
# equal steps in attribution look like equal steps in colour; the diverging map is white at 0.
_INFERNO = (
    (0.0015, 0.0005, 0.0139),
    (0.1293, 0.0473, 0.2908),
    (0.3415, 0.0623, 0.4294),
    (0.5409, 0.1347, 0.4151),
    (0.7357, 0.2159, 0.3302),
    (0.8943, 0.3534, 0.1936),
    (0.9784, 0.5579, 0.0349),
    (0.9746, 0.7977, 0.2063),
    (0.9884, 0.9984, 0.6449),
)
_BLUE_WHITE_RED = (
    (0.0196, 0.1882, 0.3804),
    (0.1634, 0.4450, 0.6975),
    (0.4207, 0.6764, 0.8187),
    (0.7615, 0.8685, 0.9246),
    (1.0, 1.0, 1.0),
    (0.9825, 0.8007, 0.7061),
    (0.8946, 0.5038, 0.3998),
    (0.7285, 0.1550, 0.1974),
    (0.4039, 0.0, 0.1216),
)


def styleAttributionNode(
    scene,
    node,
    signed: bool,
    robustPercentiles=(1.0, 99.5),
    transparentBelow: float = 0.05,
):
    """Colour an attribution map so that outliers do not wash it out.

    Unsigned maps get a sequential colour map windowed between the two percentiles, and
    voxels in the lowest ``transparentBelow`` fraction of that window are transparent so the
    image shows through. Signed maps get a blue-white-red map centred on zero (level 0),
    windowed symmetrically at the upper percentile of the absolute values.

    Args:
        scene: the scene holding ``node``; the colour nodes are created there once.
        node: scalar volume node holding the map.
        signed: whether negative values carry meaning (e.g. Integrated Gradients).
        robustPercentiles: (low, high) percentiles of the finite voxel values.
        transparentBelow: fraction of the window above its low end that is see-through.

    Returns:
        The volume's display node.
    """
    low, high = robustPercentiles
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(
            f"robust percentiles {robustPercentiles} must satisfy 0 <= low < high <= 100"
        )
    values = slicer.util.arrayFromVolume(node)
    values = values[np.isfinite(values)]
    if values.size == 0:
        values = np.zeros(1)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    displayNode = node.GetDisplayNode()
    displayNode.AutoWindowLevelOff()
    displayNode.AutoThresholdOff()
    if signed:
        bound = _positive(float(np.percentile(np.abs(values), high)))
        displayNode.SetAndObserveColorNodeID(divergingColorNode(scene).GetID())
        displayNode.SetWindowLevel(2.0 * bound, 0.0)
        displayNode.SetApplyThreshold(False)
    else:
        lower, upper = (float(v) for v in np.percentile(values, [low, high]))
        window = _positive(upper - lower, reference=upper)
        displayNode.SetAndObserveColorNodeID(sequentialColorNode(scene).GetID())
        displayNode.SetWindowLevel(window, lower + window / 2.0)
        displayNode.SetThreshold(lower + transparentBelow * window, max(float(values.max()), upper))
        displayNode.SetApplyThreshold(True)
    return displayNode


def sequentialColorNode(scene):
    """The scene's inferno-like colour node for unsigned maps (created on first use)."""
    return _proceduralColorNode(scene, SEQUENTIAL_COLOR_NAME, _INFERNO)


def divergingColorNode(scene):
    """The scene's blue-white-red colour node for signed maps (created on first use)."""
    return _proceduralColorNode(scene, DIVERGING_COLOR_NAME, _BLUE_WHITE_RED)


def showAsForeground(scene, volumeNode, opacity: float = 0.5, compositeNodes=None) -> list:
    """Overlay ``volumeNode`` on the slice views' background image.

    Args:
        scene: the scene of the slice views.
        volumeNode: the attribution map to show.
        opacity: foreground opacity in [0, 1].
        compositeNodes: slice composite nodes to change; by default every one in the scene
            (the application's layout creates one per slice view; without it there are none).

    Returns:
        The composite nodes that were changed.
    """
    if compositeNodes is None:
        compositeNodes = [
            scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
            for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
        ]
    for compositeNode in compositeNodes:
        compositeNode.SetForegroundVolumeID(volumeNode.GetID())
        compositeNode.SetForegroundOpacity(float(np.clip(opacity, 0.0, 1.0)))
    return list(compositeNodes)


def setMapOpacity(scene, opacity: float) -> int:
    """Set the foreground opacity of every slice view that shows an attribution map.

    Returns:
        How many views changed (views showing another foreground are left alone).
    """
    changed = 0
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        compositeNode = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        foreground = scene.GetNodeByID(compositeNode.GetForegroundVolumeID() or "")
        if foreground is not None and foreground.GetAttribute(MAP_ATTRIBUTE) is not None:
            compositeNode.SetForegroundOpacity(float(np.clip(opacity, 0.0, 1.0)))
            changed += 1
    return changed


def _proceduralColorNode(scene, name: str, colors):
    existing = scene.GetFirstNode(name, "vtkMRMLProceduralColorNode")
    if existing is not None:
        return existing
    colorNode = scene.AddNewNodeByClass("vtkMRMLProceduralColorNode", name)
    colorNode.SetAttribute("Category", "TorchEsegeta")
    transferFunction = colorNode.GetColorTransferFunction()
    for index, rgb in enumerate(colors):
        # The display node maps its window onto the function's whole range, so [0, 1] suffices.
        transferFunction.AddRGBPoint(index / (len(colors) - 1), *rgb)
    return colorNode


def _positive(width: float, reference: float = 0.0) -> float:
    """A usable window width: a constant map still needs a non-zero window."""
    if width > 0:
        return width
    return abs(reference) or 1.0


def showColorLegend(colorLogic, volumeNode, visible: bool = True):
    """Show (creating once) the colour legend of a map in the views.

    Args:
        colorLogic: the Colors module logic (``slicer.modules.colors.logic()`` in the app).
        volumeNode: the styled map.
        visible: show or hide the legend.

    Returns:
        The map's colour legend display node.
    """
    legend = colorLogic.GetColorLegendDisplayNode(volumeNode)
    if legend is None:
        legend = colorLogic.AddDefaultColorLegendDisplayNode(volumeNode)
    legend.SetVisibility(visible)
    return legend
