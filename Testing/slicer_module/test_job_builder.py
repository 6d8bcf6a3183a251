"""Panel values -> a valid engine Job, for every model kind and target kind (no Slicer needed)."""

from __future__ import annotations

import json

import pytest
from TorchEsegetaSlicer import dependencies, jobBuilder
from TorchEsegetaSlicer.jobBuilder import (
    PanelInputError,
    buildJob,
    deviceChoices,
    methodEntries,
    modelReference,
    targetDict,
)

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.runs.job import Job


@pytest.fixture
def modelFiles(tmp_path):
    (tmp_path / "model.ts").write_bytes(b"torchscript")
    (tmp_path / "weights.pt").write_bytes(b"state dict")
    (tmp_path / "bundle").mkdir()
    nnunet = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (nnunet / "fold_0").mkdir(parents=True)
    for name in ("dataset.json", "plans.json"):
        (nnunet / name).write_text("{}")
    return tmp_path


def modelCases(folder):
    return {
        "demo": ({"kind": "demo"}, {}),
        "torchscript": (
            {"kind": "torchscript", "path": str(folder / "model.ts")},
            {"path": folder / "model.ts"},
        ),
        "bundle": ({"kind": "bundle", "path": str(folder / "bundle")}, {"path": folder / "bundle"}),
        "nnunet": (
            {"kind": "nnunet", "path": str(folder / "nnUNetTrainer__nnUNetPlans__3d_fullres")},
            {"path": folder / "nnUNetTrainer__nnUNetPlans__3d_fullres"},
        ),
        "monai": (
            {
                "kind": "monai",
                "network": "UNet",
                "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2},
                "checkpoint": str(folder / "weights.pt"),
            },
            {
                "path": folder / "weights.pt",
                "network": " UNet ",
                "networkKwargs": '{"spatial_dims": 3, "in_channels": 1, "out_channels": 2}',
            },
        ),
    }


TARGETS = {
    "predicted mask": ({}, {"kind": "class"}),
    "segment": ({"maskFile": "mask.mha"}, {"kind": "mask", "mask": "mask.mha"}),
    "ROI": (
        {"roiStart": (1, 2, 3), "roiEnd": (4.5, 5, 6)},
        {"kind": "roi", "start": [1.0, 2.0, 3.0], "end": [4.5, 5.0, 6.0], "coordinates": "voxel"},
    ),
    "point": (
        {"pointRas": (-1.5, 2, 30)},
        {"kind": "voxel", "voxel": [-1.5, 2.0, 30.0], "coordinates": "ras"},
    ),
}


@pytest.mark.parametrize("kind", jobBuilder.MODEL_KINDS)
@pytest.mark.parametrize("region", list(jobBuilder.REGION_KINDS))
def test_every_model_kind_and_target_kind_makes_a_valid_job(modelFiles, kind, region):
    expectedModel, pickers = modelCases(modelFiles)[kind]
    targetValues, expectedTarget = TARGETS[region]
    job = buildJob(
        images=[modelFiles / "t1.nrrd", modelFiles / "t2.nrrd"],
        model=modelReference(kind, **pickers),
        target=targetDict(region, className="vessel", output="probabilities", **targetValues),
        methods=methodEntries(
            ["saliency", "integrated_gradients"], {"integrated_gradients": {"n_steps": 8}}
        ),
        output=modelFiles / "run",
        device="cpu",
        budgetSeconds=30,
    )
    assert json.loads(json.dumps(job)) == job, "the job must be JSON as written to job.json"
    assert Job.from_dict(job).to_dict() == job
    assert job["model"] == expectedModel
    assert expectedTarget.items() <= job["target"].items()
    assert job["target"]["class"] == "vessel" and job["target"]["output"] == "probabilities"
    assert job["images"] == [str(modelFiles / "t1.nrrd"), str(modelFiles / "t2.nrrd")]
    assert [m["name"] for m in job["methods"]] == ["saliency", "integrated_gradients"]
    assert job["methods"][1]["params"] == {"n_steps": 8}
    assert job["method_budget_s"] == 30.0 and job["device"] == "cpu"


def test_trusting_the_model_folder_reaches_the_job(modelFiles):
    """The panel's "Trust the model folder's code" is "trust": true in the model reference of a
    bundle or nnU-Net folder, the job keeps it; other kinds name no code and never carry it."""
    for kind, (expected, pickers) in modelCases(modelFiles).items():
        trusted = modelReference(kind, **pickers, trust=True)
        job = buildJob([modelFiles / "t1.nrrd"], trusted, targetDict(), ["saliency"], "run")
        if kind in jobBuilder.FOLDER_KINDS:
            assert trusted == {**expected, "trust": True} and job["model"]["trust"] is True
        else:
            assert trusted == expected and "trust" not in job["model"]
        assert modelReference(kind, **pickers, trust=False) == expected


def test_unset_pickers_and_bad_values_are_named(modelFiles):
    with pytest.raises(PanelInputError, match="TorchScript file"):
        modelReference("torchscript", ".")
    with pytest.raises(PanelInputError, match="bundle folder"):
        modelReference("bundle", "")
    with pytest.raises(PanelInputError, match="not an nnU-Net v2 model folder"):
        modelReference("nnunet", modelFiles / "bundle")
    with pytest.raises(PanelInputError, match="does not exist"):
        modelReference("torchscript", modelFiles / "missing.ts")
    with pytest.raises(PanelInputError, match="not valid JSON"):
        modelReference("monai", modelFiles / "weights.pt", "UNet", "{spatial_dims: 3}")
    with pytest.raises(PanelInputError, match="class name"):
        modelReference("monai", modelFiles / "weights.pt", "", "{}")
    with pytest.raises(PanelInputError, match="unknown model kind"):
        modelReference("onnx")
    assert modelReference("monai", "", "UNet", "")["checkpoint"] is None
    with pytest.raises(PanelInputError, match="segment"):
        targetDict("segment")
    with pytest.raises(PanelInputError, match="ROI"):
        targetDict("ROI", roiStart=(0, 0, 0))
    with pytest.raises(PanelInputError, match="point"):
        targetDict("point")
    with pytest.raises(PanelInputError, match="three coordinates"):
        targetDict("point", pointRas=(1, 2))
    assert targetDict("predicted mask", className="")["class"] is None


def test_engine_validation_reaches_the_panel(tmp_path):
    common = {
        "images": ["a.nrrd"],
        "model": {"kind": "demo"},
        "target": targetDict(),
        "output": tmp_path,
    }
    with pytest.raises(PanelInputError, match="at least one method"):
        buildJob(methods=[], **common)
    with pytest.raises(UserInputError, match="n_steps"):
        buildJob(methods=[{"name": "integrated_gradients", "params": {"n_steps": 0}}], **common)
    with pytest.raises(PanelInputError, match="input volume"):
        buildJob(**{**common, "images": []}, methods=["saliency"])


def test_method_entries_keep_declared_changed_parameters_only():
    entries = methodEntries(
        ["occlusion", "saliency"],
        {
            "occlusion": {"window": 8, "stride": 8, "removed_in_a_newer_engine": 1},
            "saliency": {"abs": True},
        },
    )
    assert entries == [
        {"name": "occlusion", "params": {"window": 8}},
        {"name": "saliency", "params": {}},
    ]


def test_metric_entries_come_from_the_metric_registry():
    from TorchEsegetaSlicer.jobBuilder import metricEntries

    metrics = pytest.importorskip("TorchEsegetaLib.metrics")
    name, cls = next((n, c) for n, c in metrics.REGISTRY.items() if c.params)
    param = cls.params[0]
    entries = metricEntries([name], {name: {param.name: param.default, "gone": 1}})
    assert entries == [{"name": name, "params": {}}]
    with pytest.raises(PanelInputError, match="unknown metric"):
        metricEntries(["no_such_metric"])
    job = buildJob(
        images=["a.nrrd"],
        model={"kind": "demo"},
        target=targetDict(),
        methods=["saliency"],
        output="run",
        metrics=entries,
    )
    assert [m["name"] for m in job["metrics"]] == [name]


def test_evaluation_becomes_rows_and_curves():
    from TorchEsegetaSlicer.evaluationData import evaluationTables

    legacy = {"saliency": {"infidelity": 0.5, "curve": [1, 2]}, "occlusion": 0.25}
    rows, charts = evaluationTables(legacy)
    assert rows == [
        {"method": "saliency", "infidelity": 0.5},
        {"method": "occlusion", "value": 0.25},
    ]
    assert charts == {}
    evaluation = {
        "metrics": {
            "deletion": {"title": "Deletion AUC", "direction": "lower"},
            "sparseness": {"title": "Sparseness", "direction": "higher"},
        },
        "scores": {
            "a": {"deletion": 0.2, "sparseness": 0.9},
            "b": {"deletion": 0.4, "sparseness": 0.1},
        },
        "curves": {
            "deletion": {"a": {"x": [0, 1], "y": [1, 0]}, "b": {"x": [0, 1], "y": [1, 0.5]}}
        },
    }
    rows, charts = evaluationTables(evaluation)
    assert [row["method"] for row in rows] == ["a", "b"], "best mean rank first"
    assert rows[0]["deletion"] == 0.2 and rows[0]["mean_rank"] == 1.0
    curves, xTitle, yTitle = charts["Deletion AUC"]
    assert curves["b"] == ([0, 1], [1, 0.5])
    assert (xTitle, yTitle) != ("", "")
    assert evaluationTables(None) == ([], {})


def demoJobArguments(output):
    """buildJob's required arguments for the demo model and one method."""
    return {
        "images": ["a.nrrd"],
        "model": {"kind": "demo"},
        "target": targetDict(),
        "methods": ["saliency"],
        "output": output,
    }


def test_precision_goes_into_the_job(tmp_path):
    common = demoJobArguments(tmp_path)
    assert buildJob(**common)["precision"] == "float32"
    assert buildJob(**common, precision="bfloat16")["precision"] == "bfloat16"
    with pytest.raises(PanelInputError, match="unknown precision"):
        buildJob(**common, precision="int4")


def test_flushing_denormals_is_on_unless_the_panel_turns_it_off(tmp_path):
    common = demoJobArguments(tmp_path)
    assert buildJob(**common)["flush_denormals"] is True
    assert buildJob(**common, flushDenormals=False)["flush_denormals"] is False


def test_crop_margin_goes_into_the_job_only_when_set(tmp_path):
    common = demoJobArguments(tmp_path)
    assert buildJob(**common)["crop_margin"] is None
    assert buildJob(**common, cropMargin=6)["crop_margin"] == 6


def test_device_choices_list_each_cuda_device():
    assert deviceChoices(0) == ["auto", "cpu"]
    assert deviceChoices(2) == ["auto", "cpu", "cuda:0", "cuda:1"]
    assert jobBuilder.installedCudaDeviceCount() >= 0


def test_dependencies_are_checked_without_installing_and_torch_comes_first():
    installed = {"monai"}
    missing = dependencies.missingModules(lambda name: name in installed)
    assert missing[0] == "torch" and "monai" not in missing
    assert dependencies.pipRequirements(missing) == [
        dependencies.PIP_REQUIREMENTS[name] for name in missing if name != "torch"
    ]
    message = dependencies.installMessage(missing)
    assert "PyTorch extension" in message and "captum" in message
    assert dependencies.missingModules(lambda name: True) == []
    assert "PyTorch" not in dependencies.installMessage(["captum"])
