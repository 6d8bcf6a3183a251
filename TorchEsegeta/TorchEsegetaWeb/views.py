"""The viewer's view layouts and what happens in them: the three slice views and the 3D view,
the compare layout of the Slicer module (up to four maps side by side, linked), the linked
crosshair and the value under the mouse."""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from TorchEsegetaSlicer.layouts import VIEW_NAME_PREFIX, compareLayoutXml, compareViewNames
from trame_slicer.views import (
    Layout,
    LayoutDirection,
    ViewLayoutDefinition,
    slicer_layout_to_vue,
)

VIEWS_LAYOUT_ID = "views"
COMPARE_LAYOUT_ID = "compare"
MAIN_SLICE_VIEWS = ("Red", "Green", "Yellow")


def viewsLayout() -> Layout:
    """Axial and 3D above, coronal and sagittal below (one view group: linked crosshair)."""
    return Layout(
        LayoutDirection.Vertical,
        [
            Layout(
                LayoutDirection.Horizontal,
                [ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.threed_view()],
            ),
            Layout(
                LayoutDirection.Horizontal,
                [ViewLayoutDefinition.coronal_view(), ViewLayoutDefinition.sagittal_view()],
            ),
        ],
    )


def compareLayout(count: int, orientation: str = "Axial") -> Layout:
    """The Slicer module's compare layout (the same XML description), for trame-slicer."""
    return slicer_layout_to_vue(compareLayoutXml(count, orientation))


def isCompareView(viewName: str) -> bool:
    return viewName.startswith(VIEW_NAME_PREFIX)


def compareIndex(viewName: str) -> int:
    """0-based position of a compare view (its name ends with its 1-based number)."""
    return int(viewName[len(VIEW_NAME_PREFIX) :]) - 1


def compositeNodesOf(scene, viewNames) -> list:
    """The slice composite nodes of the named views that exist, in the given order."""
    byName = {}
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        byName[node.GetLayoutName()] = node
    return [byName[name] for name in viewNames if name in byName]


def allCompareViewNames() -> list[str]:
    from TorchEsegetaSlicer.layouts import MAX_COMPARED

    return compareViewNames(MAX_COMPARED)


def linkCrosshair(scene, onCursorMoved) -> object:
    """Show a crosshair in every view that moves with Shift + mouse and makes the other views
    jump to it (Slicer's linked cursor), and call ``onCursorMoved(ras or None)`` whenever the
    mouse moves over a slice view.

    Returns:
        The crosshair node.
    """
    crosshair = scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    crosshair.SetCrosshairMode(slicer.vtkMRMLCrosshairNode.ShowBasic)
    crosshair.SetCrosshairBehavior(slicer.vtkMRMLCrosshairNode.OffsetJumpSlice)

    def cursorMoved(node, _event):
        ras = [0.0, 0.0, 0.0]
        onCursorMoved(tuple(ras) if node.GetCursorPositionRAS(ras) else None)

    crosshair.AddObserver(slicer.vtkMRMLCrosshairNode.CursorPositionModifiedEvent, cursorMoved)
    return crosshair


def fitOnResize(sliceView) -> None:
    """Fit the slice view to its image whenever the browser resizes it: a view is created at
    a default size and gets its real one only when the page lays it out."""

    def fit(*_):
        sliceView.fit_view_to_content()

    # trame-slicer's own resize handler (which resizes the slice node) observes first.
    sliceView.interactor().AddObserver(vtk.vtkCommand.WindowResizeEvent, fit, -1.0)


def centreCrosshair(crosshair, volumeNode) -> None:
    """Put the crosshair at the centre of the volume (it starts at the RAS origin, which may
    lie far outside it and would pull the 3D view's camera there)."""
    bounds = [0.0] * 6
    volumeNode.GetRASBounds(bounds)
    crosshair.SetCrosshairRAS(*((bounds[2 * axis] + bounds[2 * axis + 1]) / 2 for axis in range(3)))


def valueAt(volumeNode, ras) -> float | None:
    """The voxel value of ``volumeNode`` nearest to the RAS point, or None outside the volume."""
    rasToIjk = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(rasToIjk)
    ijk = rasToIjk.MultiplyPoint((*ras, 1.0))[:3]
    index = np.rint(ijk).astype(int)
    array = slicer.util.arrayFromVolume(volumeNode)
    dims = array.shape[::-1]
    if np.any(index < 0) or np.any(index >= dims):
        return None
    return float(array[index[2], index[1], index[0]])
