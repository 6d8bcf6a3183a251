"""How results are shown: the first map over its input, and the compare layout (up to four
attribution maps side by side over the same image, views linked)."""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from TorchEsegetaLib.figures.display import MAP_OPACITY

MAX_COMPARED = 4
# A custom layout needs an id of its own; Slicer's built-in layouts stay far below this one.
COMPARE_LAYOUT_ID = 18340
VIEW_NAME_PREFIX = "TorchEsegeta"
_VIEW_COLORS = ("#E17012", "#3D8EBF", "#6FB04E", "#A05FB0")


def compareViewNames(count: int) -> list[str]:
    """Names of the compare layout's slice views (also their singleton tags)."""
    return [f"{VIEW_NAME_PREFIX}{index + 1}" for index in range(_checkedCount(count))]


def compareLayoutXml(count: int, orientation: str = "Axial") -> str:
    """Layout description: ``count`` slice views in a row, all in one view group."""
    items = []
    for index, name in enumerate(compareViewNames(count)):
        properties = {
            "orientation": orientation,
            "viewlabel": str(index + 1),
            "viewcolor": _VIEW_COLORS[index],
            # One view group: linked controls move every view of the group together.
            "viewgroup": "0",
        }
        propertyXml = "".join(
            f'<property name="{key}" action="default">{value}</property>'
            for key, value in properties.items()
        )
        items.append(
            f'<item><view class="vtkMRMLSliceNode" singletontag={quoteattr(name)}>'
            f"{propertyXml}</view></item>"
        )
    return f'<layout type="horizontal" split="true">{"".join(items)}</layout>'


def linkCompareViews(
    scene, viewNames, backgroundNode, mapNodes, opacity: float = MAP_OPACITY
) -> list:
    """Show one map per view over ``backgroundNode``, with linked slice controls.

    The slice and composite nodes of the views must exist (Slicer creates them when the layout
    is shown). Returns the composite nodes, in view order.

    Raises:
        ValueError: more maps than views, or a view that the scene does not have.
    """
    viewNames, mapNodes = list(viewNames), list(mapNodes)
    if len(mapNodes) > len(viewNames):
        raise ValueError(f"{len(mapNodes)} maps do not fit in {len(viewNames)} compare views")
    compositeNodes = []
    for name, mapNode in zip(viewNames, mapNodes):
        compositeNode = _nodeOfView(scene, "vtkMRMLSliceCompositeNode", name)
        compositeNode.SetBackgroundVolumeID(backgroundNode.GetID() if backgroundNode else None)
        compositeNode.SetForegroundVolumeID(mapNode.GetID())
        compositeNode.SetForegroundOpacity(min(1.0, max(0.0, float(opacity))))
        compositeNode.SetLinkedControl(True)
        compositeNode.SetHotLinkedControl(True)
        compositeNodes.append(compositeNode)
    return compositeNodes


def showResults(scene, nodes, backgroundNode, opacity: float = MAP_OPACITY, compare: bool = True):
    """Overlay the first map with its colour legend; compare up to four maps side by side, the
    first uncertainty map (the entropy) among them when the run has uncertainty maps.

    ``nodes`` as returned by :func:`consoleApi.explainNodes`; nothing happens without views.
    """
    import slicer

    from .display import showAsForeground, showColorLegend

    maps = list(nodes["maps"].values())
    uncertainty = list(nodes.get("uncertainty", {}).values())
    if not maps or not slicer.app.layoutManager():
        return
    colorLogic = slicer.modules.colors.logic()
    for node in uncertainty:  # titled legends, ready when the user shows these maps
        showColorLegend(colorLogic, node, False)
    slicer.util.setSliceViewerLayers(background=backgroundNode, fit=True)
    showAsForeground(scene, maps[0], opacity)
    showColorLegend(colorLogic, maps[0])
    compared = maps[: MAX_COMPARED - 1] + uncertainty[:1] if uncertainty else maps
    if compare and len(compared) > 1:
        showCompareLayout(compared, backgroundNode, opacity)


def showCompareLayout(mapNodes, backgroundNode, opacity: float = MAP_OPACITY) -> list:
    """Switch the application to the compare layout for the first four maps (Slicer only)."""
    import slicer

    mapNodes = list(mapNodes)[:MAX_COMPARED]
    if not mapNodes:
        return []
    layoutManager = slicer.app.layoutManager()
    layoutNode = layoutManager.layoutLogic().GetLayoutNode()
    xml = compareLayoutXml(len(mapNodes))
    if layoutNode.IsLayoutDescription(COMPARE_LAYOUT_ID):
        layoutNode.SetLayoutDescription(COMPARE_LAYOUT_ID, xml)
    else:
        layoutNode.AddLayoutDescription(COMPARE_LAYOUT_ID, xml)
    layoutManager.setLayout(COMPARE_LAYOUT_ID)
    names = compareViewNames(len(mapNodes))
    compositeNodes = linkCompareViews(slicer.mrmlScene, names, backgroundNode, mapNodes, opacity)
    for name in names:
        layoutManager.sliceWidget(name).sliceLogic().FitSliceToAll()
    return compositeNodes


def _nodeOfView(scene, className: str, viewName: str):
    for index in range(scene.GetNumberOfNodesByClass(className)):
        node = scene.GetNthNodeByClass(index, className)
        if node.GetLayoutName() == viewName:
            return node
    raise ValueError(
        f"the scene has no {className} for the view {viewName!r}; show the layout first"
    )


def _checkedCount(count: int) -> int:
    if not 1 <= int(count) <= MAX_COMPARED:
        raise ValueError(f"the compare layout shows 1 to {MAX_COMPARED} maps, not {count}")
    return int(count)


#: the patient direction of each RAS axis, positive then negative
_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("S", "I"))


def orientationLetters(sliceNode) -> dict[str, str]:
    """The patient directions at the edges of a slice view: ``{"left", "right", "top",
    "bottom"}`` as letters (R/L, A/P, S/I), read from the view's slice-to-RAS matrix (so an
    axial view in Slicer's radiological convention shows R on the left and A on top). A
    direction off the patient axes gets the letters of its two largest components ("LA")."""
    matrix = sliceNode.GetSliceToRAS()
    screenX = [matrix.GetElement(row, 0) for row in range(3)]
    screenY = [matrix.GetElement(row, 1) for row in range(3)]
    return {
        "right": _letters(screenX),
        "left": _letters([-v for v in screenX]),
        "top": _letters(screenY),
        "bottom": _letters([-v for v in screenY]),
    }


def _letters(direction) -> str:
    order = sorted(range(3), key=lambda axis: -abs(direction[axis]))
    strongest = abs(direction[order[0]])
    # a second axis counts when the direction leans towards it by more than ~20 degrees
    kept = [axis for axis in order[:2] if abs(direction[axis]) >= 0.36 * strongest]
    return "".join(_AXIS_LETTERS[axis][0 if direction[axis] > 0 else 1] for axis in kept)
