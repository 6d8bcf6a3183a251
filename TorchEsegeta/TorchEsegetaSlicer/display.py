"""How attribution and uncertainty maps look: colour maps, robust window/level, transparency,
legends, slice layers."""

from __future__ import annotations

import numpy as np
import slicer

from TorchEsegetaLib.figures import display as engineDisplay

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
UNCERTAINTY_COLOR_NAME = "TorchEsegetaUncertainty"
# Node attribute marking uncertainty maps (its value: the map's label, e.g. uncertainty_tta_entropy).
UNCERTAINTY_ATTRIBUTE = "TorchEsegeta.uncertainty"
LEGEND_LABEL_FORMAT = "%.3g"
# Node attribute holding a map's colour legend title (uncertainty maps: "entropy (nats)").
LEGEND_TITLE_ATTRIBUTE = "TorchEsegeta.legendTitle"


def styleAttributionNode(
    scene,
    node,
    signed: bool,
    robustPercentiles=engineDisplay.ROBUST_PERCENTILES,
    transparentBelow: float = engineDisplay.TRANSPARENT_BELOW,
):
    """Colour an attribution map as the run folder's figures do (``TorchEsegetaLib.figures.display``),
    so that outliers do not wash it out.

    Unsigned maps get a sequential colour map windowed between the two percentiles of their
    non-zero values, and voxels in the lowest ``transparentBelow`` fraction of that window are
    transparent so the image shows through. Signed maps get a blue-white-red map centred on
    zero (level 0), windowed symmetrically at the upper percentile of the absolute values.

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
    lower, upper = engineDisplay.map_window(values, signed, (low, high))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    displayNode = node.GetDisplayNode()
    displayNode.AutoWindowLevelOff()
    displayNode.AutoThresholdOff()
    if signed:
        displayNode.SetAndObserveColorNodeID(divergingColorNode(scene).GetID())
        displayNode.SetWindowLevel(upper - lower, 0.0)
        displayNode.SetApplyThreshold(False)
    else:
        window = upper - lower
        finite = values[np.isfinite(values)]
        top = max(float(finite.max()) if finite.size else upper, upper)
        displayNode.SetAndObserveColorNodeID(sequentialColorNode(scene).GetID())
        displayNode.SetWindowLevel(window, lower + window / 2.0)
        displayNode.SetThreshold(lower + transparentBelow * window, top)
        displayNode.SetApplyThreshold(True)
    return displayNode


def styleUncertaintyNode(scene, node, transparentBelow: float = engineDisplay.TRANSPARENT_BELOW):
    """Colour an uncertainty map as the run folder's uncertainty figure does: its own colour
    table (:func:`uncertaintyColorNode`), windowed from zero (sure) to the 99.5th percentile of
    its non-zero values, transparent in the lowest ``transparentBelow`` of that window.

    Returns:
        The volume's display node.
    """
    values = slicer.util.arrayFromVolume(node)
    lower, upper = engineDisplay.uncertainty_window(values)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    displayNode = node.GetDisplayNode()
    displayNode.AutoWindowLevelOff()
    displayNode.AutoThresholdOff()
    displayNode.SetAndObserveColorNodeID(uncertaintyColorNode(scene).GetID())
    window = upper - lower
    finite = values[np.isfinite(values)]
    top = max(float(finite.max()) if finite.size else upper, upper)
    displayNode.SetWindowLevel(window, lower + window / 2.0)
    displayNode.SetThreshold(lower + transparentBelow * window, top)
    displayNode.SetApplyThreshold(True)
    return displayNode


def uncertaintyColorNode(scene):
    """The scene's viridis-like colour node for uncertainty maps (created on first use)."""
    return _proceduralColorNode(scene, UNCERTAINTY_COLOR_NAME, engineDisplay.UNCERTAINTY_COLOURS)


def sequentialColorNode(scene):
    """The scene's inferno-like colour node for unsigned maps (created on first use)."""
    return _proceduralColorNode(scene, SEQUENTIAL_COLOR_NAME, engineDisplay.SEQUENTIAL_COLOURS)


def divergingColorNode(scene):
    """The scene's blue-white-red colour node for signed maps (created on first use)."""
    return _proceduralColorNode(scene, DIVERGING_COLOR_NAME, engineDisplay.DIVERGING_COLOURS)


def showAsForeground(
    scene, volumeNode, opacity: float = engineDisplay.MAP_OPACITY, compositeNodes=None
) -> list:
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
        if foreground is not None and (
            foreground.GetAttribute(MAP_ATTRIBUTE) is not None
            or foreground.GetAttribute(UNCERTAINTY_ATTRIBUTE) is not None
        ):
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


def showColorLegend(colorLogic, volumeNode, visible: bool = True):
    """Show (creating once) the colour legend of a map in the views.

    Args:
        colorLogic: the Colors module logic (``slicer.modules.colors.logic()`` in the app).
        volumeNode: the styled map; an uncertainty map's legend is titled with what it holds
            and its unit (the node's ``TorchEsegeta.legendTitle`` attribute).
        visible: show or hide the legend.

    Returns:
        The map's colour legend display node.
    """
    legend = colorLogic.GetColorLegendDisplayNode(volumeNode)
    if legend is None:
        legend = colorLogic.AddDefaultColorLegendDisplayNode(volumeNode)
        # Attributions are often far below 1 (a gradient is ~1e-3): Slicer's default "%.1f"
        # would label every tick 0.0.
        legend.SetLabelFormat(LEGEND_LABEL_FORMAT)
        title = volumeNode.GetAttribute(LEGEND_TITLE_ATTRIBUTE)
        if title:
            legend.SetTitleText(title)
    legend.SetVisibility(visible)
    return legend
