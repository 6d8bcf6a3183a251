"""The panel's run: the worker's JSON lines parsed, its run folder loaded, cancel leaves nothing."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from TorchEsegetaSlicer.process import CANCELLED, DONE, FAILED, RUNNING, WorkerProtocol


def feed(protocol, *events):
    for event in events:
        protocol.feedLine(json.dumps(event) + "\n")


def test_progress_is_overall_and_never_goes_back():
    protocol = WorkerProtocol()
    seen = []
    for event in [
        {"event": "progress", "stage": "load", "fraction": 0.0, "message": "reading"},
        {"event": "progress", "stage": "segment", "fraction": 0.0, "message": "segmenting"},
        {
            "event": "progress",
            "stage": "method",
            "method": "a",
            "index": 0,
            "total": 2,
            "fraction": 0.5,
            "message": "a",
        },
        {
            "event": "progress",
            "stage": "method",
            "method": "a",
            "index": 0,
            "total": 2,
            "fraction": 1.0,
            "message": "a done",
        },
        {
            "event": "progress",
            "stage": "method",
            "method": "b",
            "index": 1,
            "total": 2,
            "fraction": 0.0,
            "message": "b",
        },
        {
            "event": "progress",
            "stage": "method",
            "method": "b",
            "index": 1,
            "total": 2,
            "fraction": 1.0,
            "message": "b",
        },
        {"event": "progress", "stage": "write", "fraction": 0.0, "message": "writing"},
    ]:
        feed(protocol, event)
        seen.append(protocol.fraction)
    assert seen == sorted(seen) and 0.0 <= seen[0] and seen[-1] < 1.0
    assert seen[2] == pytest.approx(0.1 + 0.85 * 0.25)
    assert protocol.method == "b" and protocol.message == "writing" and protocol.state == RUNNING
    feed(protocol, {"event": "done", "run_folder": "/runs/x"})
    assert (protocol.state, protocol.runFolder, protocol.fraction) == (DONE, "/runs/x", 1.0)


@pytest.mark.parametrize(
    ("kind", "state"), [("input", FAILED), ("internal", FAILED), ("cancelled", CANCELLED)]
)
def test_error_events_end_the_run_with_the_engine_message(kind, state):
    protocol = WorkerProtocol()
    protocol.feedLine("a library warning that is not JSON\n")
    feed(protocol, {"event": "error", "kind": kind, "message": "the model has no layer named 'x'"})
    assert protocol.state == state and protocol.errorKind == kind
    assert protocol.errorMessage == "the model has no layer named 'x'"
    protocol.finish(2)
    assert protocol.state == state, "the exit status does not override the reported error"
    assert protocol.log[0] == "a library warning that is not JSON"


def test_a_worker_that_dies_silently_fails_with_its_stderr():
    protocol = WorkerProtocol()
    protocol.feedStderr("Traceback (most recent call last):\n")
    protocol.feedStderr("MemoryError\n")
    protocol.finish(-9)
    assert protocol.state == FAILED and "MemoryError" in protocol.errorMessage
    killed = WorkerProtocol()
    killed.finish(-15, cancelRequested=True)
    assert killed.state == CANCELLED


# --- the real worker, started the way the panel starts it ---------------------------------------


@pytest.fixture
def panelInputs(scene, tmp_path):
    from tinyModel import GEOMETRY, tinyImage, tinyModelReference
    from TorchEsegetaSlicer import volumeNodeFromArray

    volumeNode = volumeNodeFromArray(scene, tinyImage(), GEOMETRY, "MR head")
    roiNode = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "R")
    centre = GEOMETRY.affine_ras() @ np.array([8.0, 8.0, 8.0, 1.0])
    roiNode.SetCenter(*centre[:3])
    roiNode.SetSize(6.0, 6.0, 6.0)
    return volumeNode, roiNode, tinyModelReference(tmp_path)


def request(volumeNode, roiNode, model, outputFolder, methods, maxBatch=None, metrics=()):
    from TorchEsegetaSlicer.panelRun import RunRequest

    return RunRequest(
        maxBatch=maxBatch,
        metrics=list(metrics),
        volumeNodes=[volumeNode],
        model=model,
        methods=methods,
        outputFolder=outputFolder,
        region="ROI",
        roiNode=roiNode,
        device="cpu",
    )


def sceneState(scene, volumeNode):
    from TorchEsegetaSlicer import arrayAndGeometryFromVolumeNode

    array, geometry = arrayAndGeometryFromVolumeNode(volumeNode)
    return scene.GetNumberOfNodes(), array.copy(), geometry


def test_panel_run_streams_progress_and_loads_on_the_input_grid(scene, panelInputs, tmp_path):
    from TorchEsegetaSlicer import ijkToRasArray, panelRun
    from TorchEsegetaSlicer.jobBuilder import metricEntries

    volumeNode, roiNode, model = panelInputs
    methods = [
        {"name": "saliency", "params": {}},
        {"name": "integrated_gradients", "params": {"n_steps": 4}},
    ]
    metrics = metricEntries(["mass_in_target", "deletion"], {"deletion": {"steps": 4}})
    run = panelRun.startRun(
        request(volumeNode, roiNode, model, tmp_path / "runs", methods, metrics=metrics)
    )
    events = []
    while not run.finished:
        events += run.poll()
        time.sleep(0.05)  # as the panel's timer: leave the cores to the worker
    protocol = run.protocol
    assert protocol.state == DONE, protocol.errorMessage
    stages = [e.get("stage") for e in events if e["event"] == "progress"]
    assert {"load", "segment", "method", "write"} <= set(stages)
    assert events[-1] == {"event": "done", "run_folder": str(run.runFolder)}
    assert run.runFolder.parent == tmp_path / "runs" and run.runFolder.name.startswith("MR_head-")
    assert not run.workFolder.exists(), "the copies of the inputs are removed"

    job = json.loads((run.runFolder / "run.json").read_text())["job"]
    assert job["target"]["kind"] == "roi" and job["target"]["coordinates"] == "voxel"

    nodes = run.load(scene)
    assert set(nodes["maps"]) == {"saliency", "integrated_gradients"}
    reference = ijkToRasArray(volumeNode)
    for node in [*nodes["maps"].values()]:
        np.testing.assert_allclose(ijkToRasArray(node), reference, rtol=0, atol=1e-5)
    assert nodes["maps"]["integrated_gradients"].GetDisplayNode().GetColorNode().GetName() == (
        "TorchEsegetaDiverging"
    )
    segmentation = nodes["segmentation"]
    assert segmentation.GetName() == "MR head segmentation"
    table = nodes["table"]
    assert table.GetNumberOfRows() == 2
    assert table.GetTable().GetColumnByName("mass_in_target") is not None
    chart = nodes["charts"]["Deletion AUC"]
    assert chart.GetNumberOfPlotSeriesNodes() == 2 and chart.GetXAxisTitle().startswith(
        "fraction of voxels"
    )
    # besides: the randomisation check the recommendation ran for the maps it needed
    assert set(nodes["charts"]) <= {"Deletion AUC", "Model randomisation check"}
    assert "Look first at" in nodes["summaryText"] or "No " in nodes["summaryText"]


def test_cancelling_mid_run_leaves_scene_inputs_and_output_untouched(scene, panelInputs, tmp_path):
    from TorchEsegetaSlicer import panelRun

    volumeNode, roiNode, model = panelInputs
    before = sceneState(scene, volumeNode)
    # Riemann steps start at once (a 4000-point Gauss-Legendre rule takes minutes to set up).
    slow = [
        {"name": "integrated_gradients", "params": {"n_steps": 4000, "method": "riemann_trapezoid"}}
    ]
    # One path step per batch, so the worker reaches its cancel check at once.
    run = panelRun.startRun(
        request(volumeNode, roiNode, model, tmp_path / "runs", slow, maxBatch=1)
    )
    cancelled = False
    while not run.finished:
        for event in run.poll():
            if not cancelled and event.get("stage") == "method" and event["fraction"] > 0:
                run.cancel()
                cancelled = True
        time.sleep(0.05)
    assert cancelled and run.protocol.state == CANCELLED
    assert run.protocol.errorKind == "cancelled"
    after = sceneState(scene, volumeNode)
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])
    assert after[2] == before[2]
    outputs = list((tmp_path / "runs").iterdir()) if (tmp_path / "runs").exists() else []
    assert outputs == [], "no run folder and no partial folder"
    assert not run.workFolder.exists()
    with pytest.raises(RuntimeError, match="cancelled"):
        run.load(scene)


def test_a_bad_panel_choice_starts_nothing(scene, panelInputs, tmp_path, monkeypatch):
    from TorchEsegetaSlicer import panelRun
    from TorchEsegetaSlicer.jobBuilder import PanelInputError

    work = tmp_path / "work"

    def mkdtemp(prefix):
        work.mkdir()
        return str(work)

    monkeypatch.setattr(panelRun.tempfile, "mkdtemp", mkdtemp)
    volumeNode, _, model = panelInputs
    bad = request(volumeNode, None, model, tmp_path / "runs", [{"name": "saliency", "params": {}}])
    with pytest.raises(PanelInputError, match="markups ROI"):
        panelRun.startRun(bad)
    assert not work.exists() and not (tmp_path / "runs").exists()
