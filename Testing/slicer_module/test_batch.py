"""Batch mode: TorchEsegetaBatch.py run by a plain Python interpreter on slicer-core."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import TINY_UNET_KWARGS
from moduleFiles import MODULE_FOLDER
from mrml_environment import makeScene
from tinyModel import GEOMETRY, tinyImage, tinyModelReference

from TorchEsegetaLib.io.images import write_volume

BATCH_SCRIPT = MODULE_FOLDER / "TorchEsegetaBatch.py"


def batchModule():
    spec = importlib.util.spec_from_file_location("TorchEsegetaBatch", BATCH_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def modelArguments(folder):
    reference = tinyModelReference(folder)
    return [
        "--model",
        reference["checkpoint"],
        "--network",
        "UNet",
        "--network-kwargs",
        json.dumps(TINY_UNET_KWARGS),
    ]


def test_batch_writes_run_folders_and_reloadable_scenes(scene, tmp_path):
    from TorchEsegetaSlicer import arrayAndGeometryFromVolumeNode, ijkToRasArray, loadSceneBundle

    cases = tmp_path / "cases"
    images = {name: tinyImage(seed) for seed, name in enumerate(["case_a", "case_b"])}
    for name, image in images.items():
        write_volume(image, GEOMETRY, cases / f"{name}.nii.gz")
    (cases / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    completed = subprocess.run(
        [
            sys.executable,
            str(BATCH_SCRIPT),
            "--input",
            str(cases),
            *modelArguments(tmp_path),
            "--method",
            "saliency",
            "--method",
            "integrated_gradients:n_steps=4",
            "--target",
            "voxel:8,8,8",
            "--device",
            "cpu",
            "--no-figures",
            "--out",
            str(out),
            "--mrb",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "2 of 2 case(s) explained" in completed.stdout
    for name, image in images.items():
        run = json.loads((out / name / "run.json").read_text())
        assert run["status"] == "complete" and {m["label"] for m in run["methods"]} == {
            "saliency",
            "integrated_gradients",
        }
        restored, _ = makeScene(tmp_path / f"restored-{name}")
        loadSceneBundle(restored, out / f"{name}.mrb")
        volume = restored.GetFirstNode(name, "vtkMRMLScalarVolumeNode")
        array, _ = arrayAndGeometryFromVolumeNode(volume)
        np.testing.assert_allclose(array, image, rtol=1e-6)
        ig = restored.GetFirstNode(f"{name} Integrated Gradients", "vtkMRMLScalarVolumeNode")
        assert ig.GetDisplayNode().GetColorNode().GetName() == "TorchEsegetaDiverging"
        np.testing.assert_allclose(ijkToRasArray(ig), ijkToRasArray(volume), rtol=0, atol=1e-5)
        assert restored.GetFirstNode(f"{name} segmentation", "vtkMRMLSegmentationNode") is not None
        restored.Clear(True)


def test_batch_reports_failed_cases_and_bad_arguments(scene, tmp_path, capsys):
    batch = batchModule()
    write_volume(tinyImage(), GEOMETRY, tmp_path / "good.nii.gz")
    arguments = [*modelArguments(tmp_path), "--target", "voxel:8,8,8", "--device", "cpu"]
    status = batch.main(
        [
            "--input",
            str(tmp_path / "good.nii.gz"),
            "--input",
            str(tmp_path / "missing.nii.gz"),
            *arguments,
            "--no-figures",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    output = capsys.readouterr()
    assert status == batch.EXIT_CASE_FAILED
    assert "missing: FAILED" in output.err and "1 of 2 case(s) explained" in output.out
    assert (tmp_path / "out" / "good" / "run.json").is_file()
    assert not (tmp_path / "out" / "missing").exists()

    assert batch.main(
        ["--input", str(tmp_path / "good.nii.gz"), "--method", "occlusion:window", "--out", "x"]
    ) == (batch.EXIT_USAGE)
    with pytest.raises(SystemExit) as exit:
        batch.main(["--model", "demo"])
    assert exit.value.code == batch.EXIT_USAGE


def test_cases_and_methods_from_the_command_line(tmp_path):
    batch = batchModule()
    (tmp_path / "t1.nii.gz").write_bytes(b"")
    found = batch.cases(["a/t1.nii.gz,a/t2.nii.gz", "b/t1.nii.gz", str(tmp_path)])
    assert found == {
        "t1": ["a/t1.nii.gz", "a/t2.nii.gz"],
        "t1-2": ["b/t1.nii.gz"],
        "t1-3": [str(tmp_path / "t1.nii.gz")],
    }
    assert batch.methodEntries(["occlusion:window=8,stride=4", "saliency"]) == [
        {"name": "occlusion", "params": {"window": "8", "stride": "4"}},
        {"name": "saliency", "params": {}},
    ]
    assert batch.methodEntries(None) == [{"name": "saliency", "params": {}}]


def test_trust_model_reaches_the_model_reference_of_a_model_folder(tmp_path):
    from TorchEsegetaLib.cli.common import model_from_args

    batch = batchModule()
    (tmp_path / "bundle").mkdir()
    for flag in ("--trust-model", "--trust-bundle"):
        arguments = batch.parseArguments(
            ["--input", "x", "--out", "o", "--model", str(tmp_path / "bundle"), flag]
        )
        assert model_from_args(arguments) == {
            "kind": "bundle",
            "path": str(tmp_path / "bundle"),
            "trust": True,
        }
    untrusted = batch.parseArguments(
        ["--input", "x", "--out", "o", "--model", str(tmp_path / "bundle")]
    )
    assert "trust" not in model_from_args(untrusted)
    demo = batch.parseArguments(["--input", "x", "--out", "o", "--trust-model"])
    assert model_from_args(demo) == {"kind": "demo"}  # names no code: nothing to consent to


def test_batch_rerun_skips_cases_done_before(scene, tmp_path, capsys):
    batch = batchModule()
    write_volume(tinyImage(), GEOMETRY, tmp_path / "case.nii.gz")
    out = tmp_path / "out"
    arguments = [
        "--input",
        str(tmp_path / "case.nii.gz"),
        *modelArguments(tmp_path),
        "--target",
        "voxel:8,8,8",
        "--device",
        "cpu",
        "--no-figures",
        "--out",
        str(out),
    ]
    assert batch.main(arguments) == batch.EXIT_OK
    written = (out / "case" / "run.json").stat().st_mtime_ns
    assert batch.main(arguments) == batch.EXIT_OK  # the same job: skipped, not an error
    assert "case: done before" in capsys.readouterr().out
    assert (out / "case" / "run.json").stat().st_mtime_ns == written
    # another job in the way: an error naming what differs, the folder kept
    assert batch.main([*arguments, "--method", "input_x_gradient"]) == batch.EXIT_CASE_FAILED
    assert "methods differ" in capsys.readouterr().err
    assert (out / "case" / "run.json").stat().st_mtime_ns == written
