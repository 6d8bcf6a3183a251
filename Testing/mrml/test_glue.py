"""MRML glue on the real MRML classes of slicer-core: geometry, display, segments, tables,
run folders and scene bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TTA_ENTROPY_ENTRY
from mrml_environment import makeScene, slicer
from TorchEsegetaSlicer import (
    arrayAndGeometryFromVolumeNode,
    divergingColorNode,
    geometryFromVolumeNode,
    ijkToRasArray,
    labelmapFromSegment,
    loadRunFolder,
    loadSceneBundle,
    plotChartFromCurves,
    saveSceneBundle,
    segmentationNodeFromLabelmap,
    sequentialColorNode,
    showAsForeground,
    styleAttributionNode,
    tableNodeFromMetrics,
    volumeNodeFromArray,
)

from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry

SIZE = (7, 9, 5)


def rotation(degreesX: float, degreesZ: float) -> np.ndarray:
    """A proper rotation: about x, then about z."""
    ax, az = np.radians([degreesX, degreesZ])
    aboutX = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    aboutZ = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return aboutZ @ aboutX


OBLIQUE = Geometry(
    size=SIZE, spacing=(0.7, 1.3, 2.5), origin=(-12.5, 30.25, 7.0), direction=rotation(20, 35)
)


def randomMap(seed: int = 0, signed: bool = False) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal(SIZE).astype(np.float32)
    return values if signed else np.abs(values)


def twoClassLabels() -> np.ndarray:
    labels = np.zeros(SIZE, dtype=np.uint8)
    labels[1:4, 2:6, 1:3] = 1
    labels[4:7, 5:9, 2:5] = 2
    return labels


def assertGeometryClose(actual: Geometry, expected: Geometry, tolerance: float = 1e-6) -> None:
    assert actual.size == expected.size
    np.testing.assert_allclose(actual.spacing, expected.spacing, rtol=0, atol=tolerance)
    np.testing.assert_allclose(actual.origin, expected.origin, rtol=0, atol=tolerance)
    np.testing.assert_allclose(actual.direction, expected.direction, rtol=0, atol=tolerance)


def renderedRgba(node) -> np.ndarray:
    """RGBA that the slice views would show for each voxel, indexed (i, j, k, channel)."""
    from vtk.util.numpy_support import vtk_to_numpy

    displayNode = node.GetDisplayNode()
    displayNode.SetInputImageDataConnection(node.GetImageDataConnection())
    producer = displayNode.GetOutputImageDataConnection().GetProducer()
    producer.Update()
    rgba = vtk_to_numpy(producer.GetOutputDataObject(0).GetPointData().GetScalars())
    return rgba.reshape(*reversed(SIZE), 4).transpose(2, 1, 0, 3)


# --- volumes and geometry -------------------------------------------------------------


def test_oblique_anisotropic_round_trip_is_exact(scene):
    array = randomMap(signed=True)
    node = volumeNodeFromArray(scene, array, OBLIQUE, "map")
    back, geometry = arrayAndGeometryFromVolumeNode(node)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, array)
    assertGeometryClose(geometry, OBLIQUE)
    assertGeometryClose(geometryFromVolumeNode(node), OBLIQUE)


def test_ijk_to_ras_matches_the_engine_affine(scene):
    node = volumeNodeFromArray(scene, randomMap(), OBLIQUE, "map")
    np.testing.assert_allclose(ijkToRasArray(node), OBLIQUE.affine_ras(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_volume_written_by_the_engine_loads_onto_the_same_voxels(sceneAndLogics, tmp_path, suffix):
    scene, logics = sceneAndLogics
    array = randomMap(1)
    path = write_volume(array, OBLIQUE, tmp_path / f"map{suffix}")
    loaded = logics["Volumes"].AddArchetypeVolume(str(path), "loaded")
    ours = volumeNodeFromArray(scene, array, OBLIQUE, "ours")
    # NIfTI stores its affine in float32.
    np.testing.assert_allclose(ijkToRasArray(loaded), ijkToRasArray(ours), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(arrayAndGeometryFromVolumeNode(loaded)[0], array)


@pytest.mark.parametrize(
    ("dtype", "stored"),
    [(np.float32, np.float32), (np.int64, np.int32), (np.bool_, np.uint8), (np.uint8, np.uint8)],
)
def test_unsupported_dtypes_are_converted(scene, dtype, stored):
    array = (randomMap() > 0.5).astype(dtype)
    back, _ = arrayAndGeometryFromVolumeNode(volumeNodeFromArray(scene, array, OBLIQUE, "x"))
    assert back.dtype == stored
    np.testing.assert_array_equal(back, array.astype(stored))


def test_array_off_the_grid_is_refused(scene):
    with pytest.raises(ValueError, match="does not fit the grid"):
        volumeNodeFromArray(scene, np.zeros((2, 3, 4), np.float32), OBLIQUE, "x")


# --- display --------------------------------------------------------------------------


def test_unsigned_map_gets_a_sequential_colour_map_and_a_robust_window(scene):
    array = randomMap()
    array[0, 0, 0] = 1000.0  # an outlier must not set the window
    node = volumeNodeFromArray(scene, array, OBLIQUE, "saliency")
    displayNode = styleAttributionNode(scene, node, signed=False)

    assert displayNode.GetColorNodeID() == sequentialColorNode(scene).GetID()
    assert not displayNode.GetAutoWindowLevel()
    low = displayNode.GetLevel() - displayNode.GetWindow() / 2
    high = displayNode.GetLevel() + displayNode.GetWindow() / 2
    assert array.min() <= low < high <= array.max()
    assert high < 100.0
    assert displayNode.GetApplyThreshold() and displayNode.GetLowerThreshold() > low

    rgba = renderedRgba(node)
    assert np.all(rgba[array < displayNode.GetLowerThreshold(), 3] == 0)
    assert np.all(rgba[array >= displayNode.GetLowerThreshold(), 3] == 255)
    brightest, darkest = (
        rgba[np.unravel_index(array.argmax(), SIZE)],
        rgba[array > 0][array[array > 0].argmin()],
    )
    assert brightest[:3].sum() > 600 and brightest[:3].sum() > darkest[:3].sum()


def test_signed_map_is_diverging_and_centred_on_zero(scene):
    array = randomMap(signed=True)
    array[3, 4, 2] = 0.0
    node = volumeNodeFromArray(scene, array, OBLIQUE, "integrated gradients")
    displayNode = styleAttributionNode(scene, node, signed=True)

    assert displayNode.GetColorNodeID() == divergingColorNode(scene).GetID()
    assert displayNode.GetLevel() == 0.0
    nonzero = np.abs(array[array != 0])  # zeros say nothing: left out of the window
    assert displayNode.GetWindow() == pytest.approx(2 * np.percentile(nonzero, 99.5))
    assert not displayNode.GetAutoWindowLevel() and not displayNode.GetApplyThreshold()

    rgba = renderedRgba(node).astype(int)
    assert np.all(rgba[3, 4, 2, :3] > 250)  # zero is white
    red, blue = (
        rgba[np.unravel_index(array.argmax(), SIZE)],
        rgba[np.unravel_index(array.argmin(), SIZE)],
    )
    assert red[0] > red[2] + 50 and blue[2] > blue[0] + 50


def test_uncertainty_map_has_its_own_colours_a_window_from_zero_and_a_titled_legend(
    sceneAndLogics,
):
    from TorchEsegetaSlicer import (
        showColorLegend,
        styleUncertaintyNode,
        uncertaintyColorNode,
    )
    from TorchEsegetaSlicer.display import LEGEND_TITLE_ATTRIBUTE

    scene, logics = sceneAndLogics
    array = randomMap(4)
    array[1, 1, 1] = 0.0  # sure: below the threshold, never drawn
    node = volumeNodeFromArray(scene, array, OBLIQUE, "entropy")
    node.SetAttribute(LEGEND_TITLE_ATTRIBUTE, "predictive entropy (tta, 8 members) (nats)")
    displayNode = styleUncertaintyNode(scene, node)
    assert displayNode.GetColorNodeID() == uncertaintyColorNode(scene).GetID()
    assert uncertaintyColorNode(scene).GetID() not in (
        sequentialColorNode(scene).GetID(),
        divergingColorNode(scene).GetID(),
    )
    low = displayNode.GetLevel() - displayNode.GetWindow() / 2
    high = displayNode.GetLevel() + displayNode.GetWindow() / 2
    assert low == pytest.approx(0.0, abs=1e-9)
    assert high == pytest.approx(np.percentile(array[array > 0], 99.5))
    rgba = renderedRgba(node)
    assert rgba[1, 1, 1, 3] == 0 and rgba[np.unravel_index(array.argmax(), SIZE)][3] == 255
    legend = showColorLegend(logics["Colors"], node)
    assert legend.GetTitleText() == "predictive entropy (tta, 8 members) (nats)"


def test_colour_nodes_are_created_once_per_scene(scene):
    for index in range(3):
        node = volumeNodeFromArray(scene, randomMap(index, signed=True), OBLIQUE, f"map {index}")
        styleAttributionNode(scene, node, signed=True)
    names = [
        scene.GetNthNodeByClass(i, "vtkMRMLColorNode").GetName()
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorNode"))
    ]
    assert names.count("TorchEsegetaDiverging") == 1


def test_constant_map_still_gets_a_valid_window(scene):
    node = volumeNodeFromArray(scene, np.zeros(SIZE, np.float32), OBLIQUE, "empty")
    assert styleAttributionNode(scene, node, signed=False).GetWindow() > 0
    assert styleAttributionNode(scene, node, signed=True).GetWindow() > 0


def test_show_as_foreground_sets_the_given_composite_nodes(scene):
    node = volumeNodeFromArray(scene, randomMap(), OBLIQUE, "map")
    compositeNodes = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    changed = showAsForeground(scene, node, opacity=0.4)
    assert [c.GetID() for c in changed] == [c.GetID() for c in compositeNodes]
    for compositeNode in compositeNodes:
        assert compositeNode.GetForegroundVolumeID() == node.GetID()
        assert compositeNode.GetForegroundOpacity() == pytest.approx(0.4)
    assert (
        showAsForeground(scene, node, compositeNodes=compositeNodes[:1], opacity=2.0)[
            0
        ].GetForegroundOpacity()
        == 1.0
    )


# --- segmentations ----------------------------------------------------------------------


def test_labelmap_becomes_named_segments_and_back(scene):
    labels = twoClassLabels()
    reference = volumeNodeFromArray(scene, randomMap(), OBLIQUE, "image")
    nodeCount = scene.GetNumberOfNodes()
    segmentationNode = segmentationNodeFromLabelmap(
        scene, labels, OBLIQUE, ["background", "liver", "tumour"], "prediction"
    )
    segmentation = segmentationNode.GetSegmentation()
    names = [
        segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())
    ]
    assert sorted(names) == ["liver", "tumour"]
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert len({segment.GetColor() for segment in segments}) == 2
    assert not any(segment.GetNameAutoGenerated() for segment in segments)

    for label, name in [(1, "liver"), (2, "tumour")]:
        segmentId = segmentation.GetSegmentIdBySegmentName(name)
        mask = labelmapFromSegment(segmentationNode, segmentId, reference)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, (labels == label).astype(np.uint8))
    # Only the segmentation and its display node remain: temporary nodes are removed.
    assert scene.GetNumberOfNodes() == nodeCount + 2
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0


def test_missing_classes_get_label_names_and_unknown_segments_are_refused(scene):
    labels = twoClassLabels()
    labels[labels == 2] = 5
    segmentationNode = segmentationNodeFromLabelmap(
        scene, labels, OBLIQUE, ["background", "liver"], "seg"
    )
    segmentation = segmentationNode.GetSegmentation()
    assert segmentation.GetSegmentIdBySegmentName("label 5")
    reference = volumeNodeFromArray(scene, randomMap(), OBLIQUE, "image")
    with pytest.raises(ValueError, match="no segment"):
        labelmapFromSegment(segmentationNode, "nonexistent", reference)


# --- tables and plots -----------------------------------------------------------------------


def test_metrics_table_has_one_row_per_method_and_typed_columns(scene):
    rows = [
        {"method": "saliency", "infidelity": 0.25, "sensitivity": 0.5},
        {"method": "integrated_gradients", "infidelity": 0.125, "seconds": 3},
    ]
    tableNode = tableNodeFromMetrics(scene, rows, "metrics")
    table = tableNode.GetTable()
    assert tableNode.GetNumberOfRows() == 2
    assert [table.GetColumn(i).GetName() for i in range(table.GetNumberOfColumns())] == [
        "method",
        "infidelity",
        "sensitivity",
        "seconds",
    ]
    assert table.GetColumnByName("method").GetClassName() == "vtkStringArray"
    assert table.GetColumnByName("method").GetValue(1) == "integrated_gradients"
    np.testing.assert_array_equal(
        slicer.util.arrayFromTableColumn(tableNode, "infidelity"), [0.25, 0.125]
    )
    np.testing.assert_array_equal(
        slicer.util.arrayFromTableColumn(tableNode, "seconds"), [np.nan, 3.0]
    )


def test_plot_chart_has_one_series_per_curve(scene):
    x = np.linspace(0, 1, 11)
    chartNode = plotChartFromCurves(
        scene,
        {"saliency": (x, 1 - x), "occlusion": (x, (1 - x) ** 2)},
        "deletion",
        "fraction removed",
        "score",
    )
    assert chartNode.GetNumberOfPlotSeriesNodes() == 2
    series = [chartNode.GetNthPlotSeriesNode(i) for i in range(2)]
    assert {s.GetName() for s in series} == {"deletion saliency", "deletion occlusion"}
    assert series[0].GetTableNodeID() != series[1].GetTableNodeID()
    for s in series:
        assert (s.GetXColumnName(), s.GetYColumnName()) == ("fraction removed", "score")
    np.testing.assert_allclose(
        slicer.util.arrayFromTableColumn(series[1].GetTableNode(), "score"), (1 - x) ** 2
    )
    assert chartNode.GetXAxisTitle() == "fraction removed"


# --- run folders and scene bundles ------------------------------------------------------------


def makeRunFolder(folder, geometry: Geometry = OBLIQUE, status: str = "complete"):
    folder.mkdir()
    maps = {"saliency": randomMap(2), "integrated_gradients": randomMap(3, signed=True)}
    for name, array in maps.items():
        write_volume(array, geometry, folder / f"{name}.nii.gz")
    write_volume(twoClassLabels(), geometry, folder / "segmentation.nii.gz", dtype=np.uint8)
    run = {
        "status": status,
        "job": {"methods": ["saliency", "integrated_gradients", "occlusion"]},
        "card": {"class_names": ["background", "liver", "tumour"]},
        "methods": [
            {
                "name": "saliency",
                "title": "Saliency",
                "file": "saliency.nii.gz",
                "signed": False,
                "status": "ok",
            },
            {
                "name": "integrated_gradients",
                "file": "integrated_gradients.nii.gz",
                "signed": True,
                "status": "ok",
            },
            {
                "name": "occlusion",
                "file": "occlusion.nii.gz",
                "signed": False,
                "status": "cancelled",
            },
        ],
        "target": {"kind": "class", "class_index": 1},
        "metrics": {
            "saliency": {"infidelity": 0.5, "curve": [1, 2]},
            "integrated_gradients": {"infidelity": 0.25},
        },
    }
    (folder / "run.json").write_text(json.dumps(run))
    return maps


def test_run_folder_loads_on_the_reference_grid_in_one_folder(scene, tmp_path):
    maps = makeRunFolder(tmp_path / "run1")
    reference = volumeNodeFromArray(scene, randomMap(), OBLIQUE, "CT")
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    studyItemId = shNode.CreateFolderItem(shNode.GetSceneItemID(), "study")
    shNode.CreateItem(studyItemId, reference)
    loaded = loadRunFolder(scene, tmp_path / "run1", reference)

    assert set(loaded["maps"]) == {"saliency", "integrated_gradients"}
    assert loaded["skipped"] == {"occlusion": "cancelled"}
    assert loaded["maps"]["saliency"].GetName() == "CT Saliency"
    referenceMatrix = ijkToRasArray(reference)
    for name, node in loaded["maps"].items():
        array, geometry = arrayAndGeometryFromVolumeNode(node)
        np.testing.assert_array_equal(array, maps[name])
        np.testing.assert_allclose(ijkToRasArray(node), referenceMatrix, rtol=0, atol=1e-5)
    assert (
        loaded["maps"]["integrated_gradients"].GetDisplayNode().GetColorNodeID()
        == divergingColorNode(scene).GetID()
    )
    assert (
        loaded["maps"]["saliency"].GetDisplayNode().GetColorNodeID()
        == sequentialColorNode(scene).GetID()
    )

    segmentation = loaded["segmentation"].GetSegmentation()
    tumour = segmentation.GetSegmentIdBySegmentName("tumour")
    mask = labelmapFromSegment(loaded["segmentation"], tumour, reference)
    np.testing.assert_array_equal(mask, (twoClassLabels() == 2).astype(np.uint8))

    table = loaded["table"]
    assert table.GetNumberOfRows() == 2 and table.GetTable().GetColumnByName("curve") is None

    assert shNode.GetItemName(loaded["folderItemId"]) == "run1"
    assert shNode.GetItemParent(loaded["folderItemId"]) == studyItemId
    for node in [*loaded["maps"].values(), loaded["segmentation"], table]:
        assert shNode.GetItemParent(shNode.GetItemByDataNode(node)) == loaded["folderItemId"]


def test_run_folder_uncertainty_maps_load_beside_the_attributions(scene, tmp_path):
    from TorchEsegetaSlicer import uncertaintyColorNode

    makeRunFolder(tmp_path / "run")
    entropy = randomMap(5)
    write_volume(entropy, OBLIQUE, tmp_path / "run" / "uncertainty_tta_entropy.nii.gz")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    run["uncertainty"] = [dict(TTA_ENTROPY_ENTRY)]
    run["uncertainty_summary"] = [
        {
            "kind": "tta",
            "members": 8,
            "class": "liver",
            "mean_entropy_in_target": 0.25,
            "mean_mutual_information_in_target": 0.01,
            "class_flip_share": 0.1,
            "class_volume_ml": {"min": 1.0, "max": 1.2},
        }
    ]
    (tmp_path / "run" / "run.json").write_text(json.dumps(run))
    reference = volumeNodeFromArray(scene, randomMap(), OBLIQUE, "CT")
    loaded = loadRunFolder(scene, tmp_path / "run", reference)
    node = loaded["uncertainty"]["uncertainty_tta_entropy"]
    assert set(loaded["maps"]) == {"saliency", "integrated_gradients"}
    assert node.GetName() == "CT predictive entropy (tta, 8 members)"
    assert node.GetDisplayNode().GetColorNodeID() == uncertaintyColorNode(scene).GetID()
    np.testing.assert_array_equal(arrayAndGeometryFromVolumeNode(node)[0], entropy)
    table = loaded["uncertaintyTable"]
    assert table.GetNumberOfRows() == 1
    column = table.GetTable().GetColumnByName("mean entropy in target (nats)")
    assert column.GetValue(0) == 0.25
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for added in (node, table):
        assert shNode.GetItemParent(shNode.GetItemByDataNode(added)) == loaded["folderItemId"]


def test_run_folder_off_the_reference_grid_is_refused_and_adds_nothing(scene, tmp_path):
    shifted = Geometry(OBLIQUE.size, OBLIQUE.spacing, (-12.5, 30.25, 8.0), OBLIQUE.direction)
    makeRunFolder(tmp_path / "run", geometry=shifted)
    reference = volumeNodeFromArray(scene, randomMap(), OBLIQUE, "CT")
    nodeCount = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="not on the grid of the reference volume: origin"):
        loadRunFolder(scene, tmp_path / "run", reference)
    assert scene.GetNumberOfNodes() == nodeCount


def test_segments_are_named_by_the_runs_label_names(scene, tmp_path):
    """A model with overlapping (sigmoid) classes labels channel n as n + 1: run.json's
    label_names name the segments, not the card's class names (one per channel)."""
    makeRunFolder(tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    run["card"] = {"class_names": ["liver", "tumour"], "activation": "sigmoid"}
    run["segmentation"] = {"label_names": ["background", "liver", "tumour"]}
    (tmp_path / "run" / "run.json").write_text(json.dumps(run))
    reference = volumeNodeFromArray(scene, randomMap(), OBLIQUE, "CT")
    loaded = loadRunFolder(scene, tmp_path / "run", reference)
    segmentation = loaded["segmentation"].GetSegmentation()
    for name, label in (("liver", 1), ("tumour", 2)):
        segment = segmentation.GetSegmentIdBySegmentName(name)
        mask = labelmapFromSegment(loaded["segmentation"], segment, reference)
        np.testing.assert_array_equal(mask, (twoClassLabels() == label).astype(np.uint8))


def test_structures_become_a_table_node_and_the_summary_text_comes_along(scene, tmp_path):
    from TorchEsegetaLib.runs.structures import Structures, structure_rows, structures_csv

    maps = makeRunFolder(tmp_path / "run")
    labels = twoClassLabels()
    structures = Structures(labels, {1: "liver", 2: "tumour"}, "atlas.nii.gz")
    rows = structure_rows(
        {label: (label.title(), array) for label, array in maps.items()}, structures
    )
    (tmp_path / "run" / "structures.csv").write_text(structures_csv(rows))
    reference = volumeNodeFromArray(scene, randomMap(), OBLIQUE, "CT")
    loaded = loadRunFolder(scene, tmp_path / "run", reference)

    table = loaded["structuresTable"]
    assert table.GetName() == "CT structures"
    assert table.GetNumberOfRows() == 2 * 3  # two maps x (outside, liver, tumour)
    names = [table.GetCellText(row, 1) for row in range(table.GetNumberOfRows())]
    assert names[:3] == ["the rest of the image", "liver", "tumour"]
    shares = slicer.util.arrayFromTableColumn(table, "attribution %")
    voxels = slicer.util.arrayFromTableColumn(table, "voxels")
    expected = [
        100 * np.abs(maps["saliency"])[labels == v].sum() / np.abs(maps["saliency"]).sum()
        for v in (0, 1, 2)
    ]
    np.testing.assert_allclose(shares[:3], expected, rtol=1e-5)
    assert voxels[:3].sum() == labels.size
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert shNode.GetItemParent(shNode.GetItemByDataNode(table)) == loaded["folderItemId"]
    # the run was not evaluated (an old record): the text says so rather than recommending
    assert "not evaluated, so no map is recommended" in loaded["summaryText"]
    assert "In Saliency, one colour scale" in loaded["summaryText"]


def test_unfinished_or_damaged_run_is_refused(scene, tmp_path):
    makeRunFolder(tmp_path / "running", status="running")
    with pytest.raises(ValueError, match="not 'complete'"):
        loadRunFolder(scene, tmp_path / "running")
    with pytest.raises(ValueError, match="no run.json"):
        loadRunFolder(scene, tmp_path)
    makeRunFolder(tmp_path / "damaged")
    (tmp_path / "damaged" / "saliency.nii.gz").unlink()
    with pytest.raises(ValueError, match="saliency.nii.gz is listed in the run but missing"):
        loadRunFolder(scene, tmp_path / "damaged")


def test_scene_bundle_keeps_maps_and_geometry(scene, tmp_path):
    maps = makeRunFolder(tmp_path / "run")
    reference = volumeNodeFromArray(scene, randomMap(), OBLIQUE, "CT")
    loadRunFolder(scene, tmp_path / "run", reference)
    bundle = saveSceneBundle(scene, tmp_path / "scene.mrb")

    restored, _ = makeScene(tmp_path / "restored-cache")
    loadSceneBundle(restored, bundle)
    for name, title in [("saliency", "Saliency"), ("integrated_gradients", "integrated_gradients")]:
        node = restored.GetFirstNode(f"CT {title}", "vtkMRMLScalarVolumeNode")
        array, geometry = arrayAndGeometryFromVolumeNode(node)
        np.testing.assert_array_equal(array, maps[name])
        assertGeometryClose(geometry, OBLIQUE, tolerance=1e-5)
    diverging = restored.GetFirstNode(
        "CT integrated_gradients", "vtkMRMLScalarVolumeNode"
    ).GetDisplayNode()
    assert diverging.GetColorNode().GetName() == "TorchEsegetaDiverging"
    assert (
        restored.GetFirstNode("CT segmentation", "vtkMRMLSegmentationNode")
        .GetSegmentation()
        .GetNumberOfSegments()
        == 2
    )
    restored.Clear(True)


def test_scene_bundle_needs_the_mrb_suffix(scene, tmp_path):
    with pytest.raises(ValueError, match=r"\.mrb"):
        saveSceneBundle(scene, tmp_path / "scene.mrml")
