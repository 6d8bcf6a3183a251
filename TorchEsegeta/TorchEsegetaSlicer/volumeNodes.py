"""Engine arrays and geometry <-> MRML volume nodes.

The engine indexes arrays (i, j, k) with LPS geometry (see TorchEsegetaLib.io.volume); Slicer
stores voxels (k, j, i) and places them in RAS. Both conversions happen here only.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from TorchEsegetaLib.io.volume import Geometry

# Slicer's world is RAS, the engine's (like DICOM and ITK) is LPS: the two differ by the sign
# of their first two axes. Flipping the rows of the direction cosines and the origin is the
# whole conversion, and it is its own inverse, so both directions use this one matrix.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# VTK image data cannot hold these; Slicer refuses int64 ("long long") and has no bool scalars.
_SMALLER_INTEGER = {np.dtype(np.int64): np.int32, np.dtype(np.uint64): np.uint32}


def volumeNodeFromArray(
    scene,
    array_ijk,
    geometry: Geometry,
    name: str,
    nodeClass="vtkMRMLScalarVolumeNode",
    createDisplayNodes: bool = True,
):
    """Add a volume node holding an (i, j, k) engine array on ``geometry``.

    Args:
        scene: the MRML scene to add the node to.
        array_ijk: voxel values indexed (i, j, k), shaped ``geometry.size``.
        geometry: grid of the array (LPS, as the engine holds it).
        name: node name.
        nodeClass: e.g. ``vtkMRMLLabelMapVolumeNode`` for label maps.
        createDisplayNodes: add the default display nodes (not wanted for temporary nodes).

    Returns:
        The new volume node.

    Raises:
        ValueError: the array does not fit the geometry.
    """
    array_ijk = np.asarray(array_ijk)
    if array_ijk.shape != geometry.size:
        raise ValueError(
            f"array of shape {array_ijk.shape} does not fit the grid of size {geometry.size}; "
            "pass an (i, j, k) array on that grid"
        )
    node = scene.AddNewNodeByClass(nodeClass, name)
    setNodeGeometry(node, geometry)
    slicer.util.updateVolumeFromArray(node, _supportedArray(array_ijk).transpose(2, 1, 0))
    if createDisplayNodes:
        node.CreateDefaultDisplayNodes()
    return node


def arrayAndGeometryFromVolumeNode(node):
    """The voxels of a volume node as an (i, j, k) array (a copy) and its grid.

    Parent transforms are not applied: the grid is the node's own IJK-to-RAS.
    """
    voxels = slicer.util.arrayFromVolume(node)
    if voxels.ndim != 3:
        raise ValueError(
            f"volume {node.GetName()!r} has {voxels.shape[-1]} components per voxel; "
            "pass a scalar volume"
        )
    return np.ascontiguousarray(voxels.transpose(2, 1, 0)), geometryFromVolumeNode(node)


def geometryFromVolumeNode(node) -> Geometry:
    """The grid of a volume node, in the engine's LPS convention."""
    imageData = node.GetImageData()
    if imageData is None:
        raise ValueError(f"volume {node.GetName()!r} holds no image data")
    directionsRas = np.zeros((3, 3))
    node.GetIJKToRASDirections(directionsRas)
    return Geometry(
        size=imageData.GetDimensions(),
        spacing=node.GetSpacing(),
        origin=_LPS_TO_RAS @ np.asarray(node.GetOrigin()),
        direction=_LPS_TO_RAS @ directionsRas,
    )


def setNodeGeometry(node, geometry: Geometry) -> None:
    """Place a volume node on ``geometry`` (spacing, origin, axis directions)."""
    node.SetSpacing(*geometry.spacing)
    node.SetOrigin(*(_LPS_TO_RAS @ np.asarray(geometry.origin)))
    node.SetIJKToRASDirections(_LPS_TO_RAS @ geometry.direction_matrix)


def ijkToRasArray(node) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix as a numpy array."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _supportedArray(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    smaller = _SMALLER_INTEGER.get(array.dtype)
    if smaller is None:
        return array
    limits = np.iinfo(smaller)
    if array.size and (array.min() < limits.min or array.max() > limits.max):
        return array.astype(np.float64)
    return array.astype(smaller)
