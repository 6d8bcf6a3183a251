"""What to explain, from scene nodes: a segment, a markups ROI or a markups point (its voxel, or
the object of the segmentation under it) -> engine target.

Positions are taken in world coordinates and brought into the input volume's own RAS frame
(undoing its parent transform), then into its voxel grid, so a target is right for oblique and
transformed volumes alike.
"""

from __future__ import annotations

import itertools

import numpy as np
import vtk

from TorchEsegetaLib.targets.spec import TargetSpec

from .segmentations import labelmapFromSegment


def targetFromNode(
    target,
    referenceVolumeNode,
    className=None,
    output: str = "logits",
    segmentId: str | None = None,
    pointTarget: str = "voxel",
) -> TargetSpec:
    """The engine target for ``target``.

    Args:
        target: None or "class" (the predicted mask of ``className``); a segmentation node
            (segment ``segmentId``, default its first segment); a markups ROI node; a markups
            point list (its first point); a TargetSpec, its dict, or its text form
            ("voxel:i,j,k", "component:i,j,k", "boundary:vessel:2", "contrast:A,B", ...).
        referenceVolumeNode: the (first) input volume the target refers to.
        className: the class to explain, by name or output index (None: first foreground;
            for a component, the class under the point).
        output: score "logits" or "probabilities".
        segmentId: the segment of a segmentation node.
        pointTarget: what a markups point explains: "voxel" (that voxel's score) or
            "component" (the whole object of the predicted segmentation under it).

    Raises:
        ValueError: an unusable node (empty point list, unknown segment, non-linear transform).
    """
    common = {"class_": className if className not in ("", None) else None, "output": output}
    if target is None or (isinstance(target, str) and target == "class"):
        return TargetSpec(kind="class", **common)
    if isinstance(target, TargetSpec):
        return target
    if isinstance(target, dict):
        return TargetSpec.from_dict({"class": common["class_"], "output": output, **target})
    if isinstance(target, str):
        return TargetSpec.parse(target, **common)
    if target.IsA("vtkMRMLSegmentationNode"):
        mask = segmentMask(target, referenceVolumeNode, segmentId)
        return TargetSpec(kind="mask", mask_array=mask, **common)
    if target.IsA("vtkMRMLMarkupsROINode"):
        start, end = roiVoxelBox(target, referenceVolumeNode)
        return TargetSpec(kind="roi", start=start, end=end, coordinates="voxel", **common)
    if target.IsA("vtkMRMLMarkupsNode"):
        if pointTarget not in ("voxel", "component"):
            raise ValueError(f'pointTarget must be "voxel" or "component", got {pointTarget!r}')
        return TargetSpec(
            kind=pointTarget,
            voxel=pointVolumeRas(target, referenceVolumeNode),
            coordinates="ras",
            **common,
        )
    raise ValueError(
        f"cannot explain {target.GetClassName()} {target.GetName()!r}: give a segmentation, a "
        "markups ROI or a markups point list"
    )


def segmentMask(segmentationNode, referenceVolumeNode, segmentId: str | None = None) -> np.ndarray:
    """A segment as a 0/1 (I, J, K) mask on the reference volume's grid (first segment by default)."""
    segmentation = segmentationNode.GetSegmentation()
    if segmentId is None:
        if segmentation.GetNumberOfSegments() == 0:
            raise ValueError(f"segmentation {segmentationNode.GetName()!r} has no segment")
        segmentId = segmentation.GetNthSegmentID(0)
    mask = labelmapFromSegment(segmentationNode, segmentId, referenceVolumeNode)
    if not mask.any():
        raise ValueError(
            f"segment {segmentId!r} does not overlap the input volume; pick another segment"
        )
    return mask


def roiVoxelBox(roiNode, referenceVolumeNode) -> tuple[list[float], list[float]]:
    """The box of voxel indices (start, end) enclosing the ROI, in the reference volume's grid."""
    bounds = np.zeros(6)
    roiNode.GetObjectBounds(bounds)
    low, high = bounds.reshape(3, 2).T
    objectToWorld = _matrix(roiNode.GetObjectToWorldMatrix())
    corners = np.array([[*corner, 1.0] for corner in itertools.product(*zip(low, high))])
    worldToIjk = _rasToIjk(referenceVolumeNode) @ _worldToVolumeRas(referenceVolumeNode)
    indices = (worldToIjk @ objectToWorld @ corners.T).T[:, :3]
    return indices.min(axis=0).tolist(), indices.max(axis=0).tolist()


def pointVolumeRas(markupsNode, referenceVolumeNode, index: int = 0) -> list[float]:
    """A control point in the reference volume's own RAS frame (before its parent transform)."""
    if markupsNode.GetNumberOfControlPoints() <= index:
        raise ValueError(
            f"markups {markupsNode.GetName()!r} has no point {index + 1}; place a point first"
        )
    world = np.zeros(3)
    markupsNode.GetNthControlPointPositionWorld(index, world)
    local = _worldToVolumeRas(referenceVolumeNode) @ np.append(world, 1.0)
    return local[:3].tolist()


def _worldToVolumeRas(volumeNode) -> np.ndarray:
    transformNode = volumeNode.GetParentTransformNode()
    if transformNode is None:
        return np.eye(4)
    if not transformNode.IsTransformToWorldLinear():
        raise ValueError(
            f"volume {volumeNode.GetName()!r} is under a non-linear transform; harden it first"
        )
    matrix = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformFromWorld(matrix)
    return _matrix(matrix)


def _rasToIjk(volumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(matrix)
    return _matrix(matrix)


def _matrix(vtkMatrix) -> np.ndarray:
    return np.array([[vtkMatrix.GetElement(r, c) for c in range(4)] for r in range(4)])
