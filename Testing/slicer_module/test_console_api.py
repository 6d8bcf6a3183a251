"""The console API on slicer-core: nodes in, styled maps on the input grid out, targets from nodes."""

from __future__ import annotations

import numpy as np
import pytest
from tinyModel import GEOMETRY, tinyImage, tinyModelReference

from TorchEsegetaLib.targets.bound import region_in_input_grid


@pytest.fixture
def inputNode(scene):
    from TorchEsegetaSlicer import volumeNodeFromArray

    return volumeNodeFromArray(scene, tinyImage(), GEOMETRY, "T1")


def shFolderOf(scene, node):
    import slicer

    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    return shNode.GetItemParent(shNode.GetItemByDataNode(node))


def test_explain_returns_styled_maps_on_the_input_grid_in_one_folder(scene, inputNode, tmp_path):
    from TorchEsegetaSlicer import explainNodes, ijkToRasArray

    before = scene.GetNumberOfNodes()
    nodes = explainNodes(
        scene,
        inputNode,
        model=tinyModelReference(tmp_path),
        methods=["saliency", {"name": "input_x_gradient", "label": "ixg"}],
        target="voxel:8,8,8",
        metrics=["mass_in_target"],
        device="cpu",
    )
    assert set(nodes["maps"]) == {"saliency", "ixg"}
    assert nodes["table"].GetNumberOfRows() == 2
    assert shFolderOf(scene, nodes["table"]) == nodes["folderItemId"]
    assert nodes["maps"]["ixg"].GetName() == "T1 Input x Gradient (ixg)"
    colours = {
        label: node.GetDisplayNode().GetColorNode().GetName()
        for label, node in nodes["maps"].items()
    }
    assert colours == {"saliency": "TorchEsegetaSequential", "ixg": "TorchEsegetaDiverging"}
    for node in [*nodes["maps"].values(), nodes["segmentation"]]:
        assert shFolderOf(scene, node) == nodes["folderItemId"]
    for node in nodes["maps"].values():
        np.testing.assert_allclose(ijkToRasArray(node), ijkToRasArray(inputNode), rtol=0, atol=1e-9)
    saliency = nodes["result"].maps["saliency"]
    import slicer

    np.testing.assert_allclose(
        slicer.util.arrayFromVolume(nodes["maps"]["saliency"]), saliency.transpose(2, 1, 0)
    )
    assert scene.GetNumberOfNodes() > before


def test_targets_from_a_segment_an_roi_and_a_point(scene, inputNode, tmp_path):
    from TorchEsegetaSlicer import segmentationNodeFromLabelmap, targetFromNode

    labels = np.zeros(GEOMETRY.size, np.uint8)
    labels[3:6, 4:9, 2:5] = 1
    labels[10:12, 10:12, 10:12] = 2
    segmentationNode = segmentationNodeFromLabelmap(
        scene, labels, GEOMETRY, ["background", "a", "b"], "manual"
    )
    segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName("b")
    spec = targetFromNode(segmentationNode, inputNode, className=1, segmentId=segmentId)
    assert spec.kind == "mask" and spec.class_ == 1
    np.testing.assert_array_equal(region_in_input_grid(spec, GEOMETRY), labels == 2)

    # An ROI turned with the (oblique) voxel grid, covering voxels 4..7 x 5..10 x 6..8.
    import vtk

    roiNode = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    low, high = np.array([4, 5, 6]), np.array([7, 10, 8])
    affine = GEOMETRY.affine_ras()
    objectToNode = affine.copy()
    objectToNode[:3, :3] /= np.array(GEOMETRY.spacing)
    objectToNode[:3, 3] = (affine @ np.append((low + high) / 2, 1))[:3]
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, objectToNode[r, c])
    roiNode.SetAndObserveObjectToNodeMatrix(matrix)
    roiNode.SetSize(*((high - low + 0.5) * np.array(GEOMETRY.spacing)))
    spec = targetFromNode(roiNode, inputNode, output="probabilities")
    expected = np.zeros(GEOMETRY.size, bool)
    expected[4:8, 5:11, 6:9] = True
    assert spec.kind == "roi" and spec.output == "probabilities"
    np.testing.assert_array_equal(region_in_input_grid(spec, GEOMETRY), expected)

    pointNode = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    pointNode.AddControlPoint(*(affine @ np.array([2.0, 13.0, 7.0, 1.0]))[:3])
    spec = targetFromNode(pointNode, inputNode)
    region = region_in_input_grid(spec, GEOMETRY)
    assert spec.kind == "voxel" and spec.coordinates == "ras"
    assert list(zip(*np.nonzero(region))) == [(2, 13, 7)]


def test_points_follow_the_input_volume_under_a_transform(scene, inputNode):
    from TorchEsegetaSlicer import targetFromNode

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    import vtk

    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 25.0)
    transform.SetMatrixTransformToParent(shift)
    inputNode.SetAndObserveTransformNodeID(transform.GetID())
    pointNode = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    # The voxel (5, 6, 7) where the transformed volume shows it in the world.
    world = GEOMETRY.affine_ras() @ np.array([5.0, 6.0, 7.0, 1.0])
    pointNode.AddControlPoint(world[0] + 25.0, world[1], world[2])
    region = region_in_input_grid(targetFromNode(pointNode, inputNode), GEOMETRY)
    assert list(zip(*np.nonzero(region))) == [(5, 6, 7)]


def test_unusable_targets_are_refused_with_a_reason(scene, inputNode):
    from TorchEsegetaSlicer import targetFromNode

    with pytest.raises(ValueError, match="place a point"):
        targetFromNode(scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode"), inputNode)
    with pytest.raises(ValueError, match="cannot explain"):
        targetFromNode(scene.AddNewNodeByClass("vtkMRMLModelNode", "surface"), inputNode)
    assert targetFromNode(None, inputNode, className="vessel").class_ == "vessel"
    assert targetFromNode("voxel:1,2,3", inputNode).kind == "voxel"


def test_channels_must_share_the_grid(scene, inputNode, tmp_path):
    from TorchEsegetaSlicer import explainNodes, volumeNodeFromArray

    from TorchEsegetaLib.io.volume import Geometry

    shifted = Geometry(GEOMETRY.size, GEOMETRY.spacing, (0.0, 0.0, 0.0), GEOMETRY.direction)
    other = volumeNodeFromArray(scene, tinyImage(1), shifted, "T2")
    with pytest.raises(ValueError, match="not on the grid of 'T1'"):
        explainNodes(scene, [inputNode, other], model=tinyModelReference(tmp_path, 2))
    aligned = volumeNodeFromArray(scene, tinyImage(2), GEOMETRY, "T2 aligned")
    nodes = explainNodes(
        scene,
        [inputNode, aligned],
        model=tinyModelReference(tmp_path, 2),
        methods=["saliency"],
        target="voxel:8,8,8",
        device="cpu",
    )
    assert list(nodes["maps"]) == ["saliency"]


def test_demo_explained_with_named_segments(scene):
    from TorchEsegetaSlicer import explainNodes
    from TorchEsegetaSlicer.consoleApi import addDemoVolume

    from TorchEsegetaLib.models.demo import demo_volume

    node = addDemoVolume(scene, "demo")
    assert node.GetSpacing() == pytest.approx(demo_volume()[0].geometry.spacing)
    nodes = explainNodes(scene, node, "demo", ["saliency"], targetClass="vessel", device="cpu")
    segmentation = nodes["segmentation"].GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    assert segmentation.GetNthSegment(0).GetName() == "vessel"
    assert nodes["maps"]["saliency"].GetName() == "demo Saliency"


def test_compare_views_show_one_map_each_with_linked_controls(sceneAndLogics, inputNode):
    import xml.etree.ElementTree as ElementTree

    from TorchEsegetaSlicer import layouts, showColorLegend, volumeNodeFromArray

    scene, logics = sceneAndLogics
    root = ElementTree.fromstring(layouts.compareLayoutXml(3))
    views = root.findall("./item/view")
    assert [v.get("singletontag") for v in views] == layouts.compareViewNames(3)
    assert {v.find("property[@name='viewgroup']").text for v in views} == {"0"}
    with pytest.raises(ValueError, match="1 to 4"):
        layouts.compareLayoutXml(5)

    maps = [volumeNodeFromArray(scene, tinyImage(i), GEOMETRY, f"map {i}") for i in range(3)]
    for name in layouts.compareViewNames(3):
        # The application creates these when it shows the layout.
        sliceNode = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        sliceNode.SetLayoutName(name)
        compositeNode = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        compositeNode.SetLayoutName(name)
    composites = layouts.linkCompareViews(scene, layouts.compareViewNames(3), inputNode, maps, 0.7)
    assert [c.GetForegroundVolumeID() for c in composites] == [m.GetID() for m in maps]
    assert all(c.GetBackgroundVolumeID() == inputNode.GetID() for c in composites)
    assert all(
        c.GetLinkedControl() and c.GetForegroundOpacity() == pytest.approx(0.7) for c in composites
    )
    with pytest.raises(ValueError, match="show the layout first"):
        layouts.linkCompareViews(scene, ["Elsewhere"], inputNode, maps[:1])

    from TorchEsegetaSlicer.display import MAP_ATTRIBUTE, setMapOpacity

    maps[0].SetAttribute(MAP_ATTRIBUTE, "saliency")
    assert setMapOpacity(scene, 0.2) == 1, "only the view showing a map changes"
    assert composites[0].GetForegroundOpacity() == pytest.approx(0.2)
    assert composites[1].GetForegroundOpacity() == pytest.approx(0.7)

    legend = showColorLegend(logics["Colors"], maps[0])
    assert legend.GetVisibility() and showColorLegend(logics["Colors"], maps[0]) is legend


def test_precision_reaches_the_engine(scene, inputNode, tmp_path):
    from TorchEsegetaSlicer import explainNodes

    from TorchEsegetaLib.errors import UserInputError

    reference = tinyModelReference(tmp_path)
    maps = {
        precision: explainNodes(
            scene,
            inputNode,
            model=reference,
            methods=["saliency"],
            target="voxel:8,8,8",
            device="cpu",
            precision=precision,
        )["result"].maps["saliency"]
        for precision in ("float32", "bfloat16")
    }
    # autocast moves the map a little, and only a little
    assert not np.array_equal(maps["float32"], maps["bfloat16"])
    assert np.corrcoef(maps["float32"].ravel(), maps["bfloat16"].ravel())[0, 1] > 0.9
    with pytest.raises(UserInputError, match='"precision" must be one of float32'):
        explainNodes(scene, inputNode, model=reference, device="cpu", precision="float8")


def test_denormals_are_flushed_for_the_call_only(scene, inputNode, tmp_path):
    from TorchEsegetaSlicer import explainNodes
    from TorchEsegetaSlicer.consoleApi import loadedModel, segmentNodes

    from TorchEsegetaLib.engine.denormals import flushing_denormals

    reference = tinyModelReference(tmp_path)
    records = {}
    for flush in (True, False):
        nodes = explainNodes(scene, inputNode, model=reference, device="cpu", flushDenormals=flush)
        records[flush] = nodes["result"].denormals.record()
    assert records[True]["flush"] and records[True]["check"]["labelmaps_equal"]
    assert records[False] == {"requested": False, "flush": False}
    segmentNodes(scene, inputNode, loadedModel(reference), "cpu")
    assert not flushing_denormals(), "Slicer's own thread is left as it was"
