"""TorchEsegeta.py's logic on slicer-core, with stand-ins for the app-only parts it imports.

The widget and the module class need the application; the logic only needs the scene, so its
console API and panel run are exercised here with the module file as it ships.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
import unittest
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import TINY_UNET_KWARGS
from moduleFiles import MODULE_FOLDER
from tinyModel import GEOMETRY, tinyImage, tinyModelReference


class _ScriptedLoadableModuleLogic:
    def __init__(self):
        pass


def _appOnlyModules() -> dict[str, types.ModuleType]:
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {})
    scripted.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    scripted.ScriptedLoadableModuleLogic = _ScriptedLoadableModuleLogic
    scripted.ScriptedLoadableModuleTest = unittest.TestCase
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = wrapper.WithinRange = lambda *args: None
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    return {
        "qt": types.ModuleType("qt"),
        "slicer.ScriptedLoadableModule": scripted,
        "slicer.parameterNodeWrapper": wrapper,
        "slicer.i18n": i18n,
    }


@pytest.fixture
def module(scene, monkeypatch):
    for name, stub in _appOnlyModules().items():
        monkeypatch.setitem(sys.modules, name, stub)
    spec = importlib.util.spec_from_file_location("TorchEsegeta", MODULE_FOLDER / "TorchEsegeta.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def panelValues(inputNode, model, tmp_path, **values):
    """What the parameter node holds after the user filled the panel."""
    defaults = {
        "inputVolume0": inputNode,
        "modelKind": "monai",
        "modelPath": model["checkpoint"],
        "networkName": "UNet",
        "networkKwargs": json.dumps(TINY_UNET_KWARGS),
        "trustModel": False,
        "segmentation": None,
        "targetClass": "",
        "targetRegion": "point",
        "targetSegmentId": "",
        "targetRoi": None,
        "targetPoint": None,
        "targetOutput": "logits",
        "methods": ["saliency"],
        "methodParameters": "{}",
        "metrics": [],
        "metricParameters": "{}",
        "device": "cpu",
        "precision": "float32",
        "flushDenormals": True,
        "timeBudget": 0.0,
        "cropMargin": -1,
        "outputFolder": tmp_path / "runs",
        "opacity": 0.5,
        "showCompare": True,
        "lastRunFolder": "",
    }
    return SimpleNamespace(**{**defaults, **values})


def test_the_panels_trust_checkbox_reaches_the_model_reference(module, tmp_path):
    (tmp_path / "bundle").mkdir()
    logic = module.TorchEsegetaLogic()
    folder = {"modelKind": "bundle", "modelPath": tmp_path / "bundle"}
    trusted = panelValues(None, {"checkpoint": None}, tmp_path, trustModel=True, **folder)
    assert logic.modelReference(trusted) == {
        "kind": "bundle",
        "path": str(tmp_path / "bundle"),
        "trust": True,
    }
    untrusted = panelValues(None, {"checkpoint": None}, tmp_path, **folder)
    assert "trust" not in logic.modelReference(untrusted)


def test_logic_explain_returns_the_new_nodes(module, scene, tmp_path):
    from TorchEsegetaSlicer import volumeNodeFromArray

    inputNode = volumeNodeFromArray(scene, tinyImage(), GEOMETRY, "T1")
    nodes = module.TorchEsegetaLogic().explain(
        inputNode,
        model=tinyModelReference(tmp_path),
        methods=["saliency"],
        target="voxel:8,8,8",
        device="cpu",
        show=False,
    )
    assert list(nodes["maps"]) == ["saliency"]
    assert nodes["maps"]["saliency"].GetScene() is scene


def test_logic_runs_the_panel_settings_through_the_worker(module, scene, tmp_path, monkeypatch):
    import slicer
    from TorchEsegetaSlicer import volumeNodeFromArray

    app = SimpleNamespace(layoutManager=lambda: None, temporaryPath=str(tmp_path))
    monkeypatch.setattr(slicer, "app", app, raising=False)
    inputNode = volumeNodeFromArray(scene, tinyImage(), GEOMETRY, "T1")
    pointNode = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    pointNode.AddControlPoint(*(GEOMETRY.affine_ras() @ np.array([8.0, 8.0, 8.0, 1.0]))[:3])
    model = tinyModelReference(tmp_path)
    p = panelValues(
        inputNode,
        model,
        tmp_path,
        targetPoint=pointNode,
        methods=["saliency", "occlusion"],
        methodParameters='{"occlusion": {"window": 8, "stride": 6}}',
        outputFolder=Path("."),  # what an empty folder picker holds
        flushDenormals=False,
    )
    logic = module.TorchEsegetaLogic()
    assert logic.modelCard(p) is None, "a checkpoint's card is known once loaded"
    assert [n for n in logic.inputVolumes(p)] == [inputNode]
    run = logic.startRun(p)
    while not run.finished:
        run.poll()
        time.sleep(0.05)
    nodes = logic.finishRun(run, p)
    assert set(nodes["maps"]) == {"saliency", "occlusion"}
    assert p.lastRunFolder == str(run.runFolder)
    assert run.runFolder.parent == tmp_path / "TorchEsegeta", "Slicer's temporary folder"
    record = json.loads((run.runFolder / "run.json").read_text())
    job = record["job"]
    assert job["methods"][1]["params"] == {"window": 8, "stride": 6}
    assert job["flush_denormals"] is False and record["denormals"]["flush"] is False
    assert job["target"]["kind"] == "voxel" and job["target"]["coordinates"] == "ras"

    loaded = logic.loadModel(p)
    assert logic.modelCard(p) is loaded.card and logic.layerNames(p)
    segmentationNode = logic.segment(p)
    assert segmentationNode.GetName() == "T1 segmentation"

    failing = panelValues(inputNode, model, tmp_path, targetRegion="point", targetPoint=None)
    with pytest.raises(ValueError, match="markups point"):
        logic.startRun(failing)


def test_the_crop_margin_box_reaches_the_run_request_only_when_set(scene, tmp_path):
    from TorchEsegetaSlicer import volumeNodeFromArray
    from TorchEsegetaSlicer.panelRun import requestFromPanel

    inputNode = volumeNodeFromArray(scene, tinyImage(), GEOMETRY, "T1")
    model = tinyModelReference(tmp_path)
    off = requestFromPanel(panelValues(inputNode, model, tmp_path), [inputNode], model, tmp_path)
    on = requestFromPanel(
        panelValues(inputNode, model, tmp_path, cropMargin=6), [inputNode], model, tmp_path
    )
    assert off.cropMargin is None and on.cropMargin == 6
