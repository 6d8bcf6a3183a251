"""The command line end to end: complete run folders in the input geometry, and every bad input
answered with one clear line, exit status 2 and no output folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import TINY_UNET_KWARGS, tiny_unet

from TorchEsegetaLib.cli import main
from TorchEsegetaLib.io.images import read_volume, write_volume
from TorchEsegetaLib.io.volume import Geometry

OBLIQUE = (0.6, 0.0, 0.8, 0.0, 1.0, 0.0, -0.8, 0.0, 0.6)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("case")
    torch.save(tiny_unet().state_dict(), root / "unet.pt")
    geometry = Geometry((20, 18, 16), (0.7, 0.9, 1.3), (10.0, -5.0, 3.0), OBLIQUE)
    image = np.random.default_rng(0).random(geometry.size).astype(np.float32) * 100
    write_volume(image, geometry, root / "image.nii.gz")
    return root


def model_args(case):
    return [
        "--model",
        str(case / "unet.pt"),
        "--network",
        "UNet",
        "--network-kwargs",
        json.dumps(TINY_UNET_KWARGS),
    ]


def explain(case, out, *extra):
    return main(
        [
            "explain",
            "--image",
            str(case / "image.nii.gz"),
            *model_args(case),
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )


def snapshot(folder):
    return {
        p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_explain_writes_a_complete_run_folder_in_the_input_geometry(case, tmp_path):
    before = snapshot(case)
    out = tmp_path / "run"
    methods = "saliency,input_x_gradient,integrated_gradients,guided_backprop,smoothgrad,gradcam,occlusion"
    params = [
        "--param",
        "integrated_gradients.n_steps=8",
        "--param",
        "smoothgrad.samples=2",
        "--param",
        "occlusion.window=8",
    ]
    assert (
        explain(
            case, out, "--method", methods, "--target", "roi:5,5,5:10,10,10", "--seed", "3", *params
        )
        == 0
    )
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["seed"] == 3
    assert [m["label"] for m in record["methods"]] == methods.split(",")
    assert (
        record["model"]["sha256"]
        and record["versions"]["torch"]
        and record["job"]["methods"][2]["params"]["n_steps"]
        == 8  # validated, as the method reads it
    )
    assert record["target"]["region_voxels"] == 6**3
    reference = sitk.ReadImage(str(case / "image.nii.gz"))
    affine = nib.load(case / "image.nii.gz").affine
    for name in [m["file"] for m in record["methods"]] + ["segmentation.nii.gz"]:
        written = sitk.ReadImage(str(out / name))
        assert written.GetSize() == reference.GetSize()
        np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(nib.load(out / name).affine, affine, atol=1e-5)
        if name != "segmentation.nii.gz":
            data = sitk.GetArrayFromImage(written)
            assert data.dtype == np.float32 and np.isfinite(data).all() and np.abs(data).sum() > 0
    for figure in record["figures"]:
        assert (out / figure).stat().st_size > 1000
    assert snapshot(case) == before, "inputs must never be modified"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder left"


def test_run_reads_a_job_file_and_saved_jobs_reproduce_the_maps(case, tmp_path):
    first = tmp_path / "first"
    job_file = tmp_path / "job.json"
    assert (
        explain(
            case, first, "--method", "saliency,gradcam", "--save-job", str(job_file), "--no-figures"
        )
        == 0
    )
    assert main(["run", str(job_file), "--out", str(tmp_path / "second"), "--quiet"]) == 0
    for name in ("saliency.nii.gz", "gradcam.nii.gz"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(first / name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "second" / name)))
        np.testing.assert_array_equal(a, b)
    yaml_job = tmp_path / "job.yaml"
    yaml_job.write_text(
        f"images: [{case / 'image.nii.gz'}]\n"
        f"model: {{kind: monai, network: UNet, checkpoint: {case / 'unet.pt'}, kwargs: {json.dumps(TINY_UNET_KWARGS)}}}\n"
        "target: voxel:8,8,8\nmethods: [{name: saliency, params: {abs: false}, label: signed_gradient}]\n"
        "output: yaml_run\nformat: nrrd\nfigures: false\n"
    )
    assert main(["run", str(yaml_job), "--quiet"]) == 0
    assert (tmp_path / "yaml_run" / "signed_gradient.nrrd").is_file()


def test_two_channel_inputs_write_per_channel_maps(tmp_path):
    torch.save(tiny_unet(in_channels=2).state_dict(), tmp_path / "unet2.pt")
    geometry = Geometry((16, 16, 16), (1.0, 1.0, 2.0))
    rng = np.random.default_rng(1)
    for name in ("t1", "t2"):
        write_volume(
            rng.random(geometry.size).astype(np.float32), geometry, tmp_path / f"{name}.nii.gz"
        )
    kwargs = {**TINY_UNET_KWARGS, "in_channels": 2}
    code = main(
        [
            "explain",
            "--image",
            str(tmp_path / "t1.nii.gz"),
            "--image",
            str(tmp_path / "t2.nii.gz"),
            "--model",
            str(tmp_path / "unet2.pt"),
            "--network",
            "UNet",
            "--network-kwargs",
            json.dumps(kwargs),
            "--method",
            "input_x_gradient,occlusion",
            "--param",
            "occlusion.window=8",
            "--target",
            "voxel:8,8,8",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
            "--no-figures",
        ]
    )
    assert code == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    ixg = record["methods"][0]
    assert ixg["channel_files"] == [
        "input_x_gradient.channel0.nii.gz",
        "input_x_gradient.channel1.nii.gz",
    ]
    total = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "run" / ixg["file"])))
    parts = [
        sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "run" / f)))
        for f in ixg["channel_files"]
    ]
    np.testing.assert_allclose(total, parts[0] + parts[1], rtol=1e-5, atol=1e-7)
    assert "channel_files" not in record["methods"][1]


def test_crop_margin_writes_its_measurement_to_run_json(case, tmp_path):
    out = tmp_path / "run"
    assert explain(case, out, "--target", "voxel:10,9,8", "--crop-margin", "3", "--no-figures") == 0
    record = json.loads((out / "run.json").read_text())
    assert record["job"]["crop_margin"] == 3
    crop = record["target"]["crop"]
    assert crop["margin"] == 3 and crop["approximation"] is True
    assert set(crop["saliency"]) == {"relative_l2", "relative_l2_in_box", "pearson_in_box"}
    assert any(w.startswith("approximation:") for w in record["warnings"])


def bad_input_cases(case, tmp_path):
    geometry = Geometry((16, 16, 16))
    nan = np.ones(geometry.size, np.float32)
    nan[3, 3, 3] = np.nan
    write_volume(nan, geometry, tmp_path / "nan.mha")  # ITK reads NaN in NIfTI as 0
    flat = sitk.Image(16, 16, sitk.sitkFloat32)
    sitk.WriteImage(flat, str(tmp_path / "flat.nii.gz"))
    (tmp_path / "corrupt.nii.gz").write_bytes(os.urandom(300))
    case_geometry = read_volume(case / "image.nii.gz").geometry
    write_volume(
        np.zeros(case_geometry.size, np.uint8),
        case_geometry,
        tmp_path / "empty_mask.nii.gz",
        dtype=np.uint8,
    )
    write_volume(
        np.ones(geometry.size, np.uint8), geometry, tmp_path / "other_grid.nii.gz", dtype=np.uint8
    )
    image = ["--image", str(case / "image.nii.gz")]
    model = model_args(case)
    return {
        "missing file": (["--image", str(tmp_path / "nope.nii.gz"), *model], "does not exist"),
        "corrupt file": (["--image", str(tmp_path / "corrupt.nii.gz"), *model], "corrupt.nii.gz"),
        "2D image": (["--image", str(tmp_path / "flat.nii.gz"), *model], "3D"),
        "channels": ([*image, *image, *model], "expects 1 input channel"),
        "NaN": (["--image", str(tmp_path / "nan.mha"), *model], "NaN"),
        "unknown method": ([*image, *model, "--method", "saliencyy"], "did you mean saliency"),
        "unknown parameter": ([*image, *model, "--param", "saliency.steps=3"], "unknown parameter"),
        "bad parameter value": (
            [
                *image,
                *model,
                "--method",
                "integrated_gradients",
                "--param",
                "integrated_gradients.n_steps=0",
            ],
            "at least 1",
        ),
        "empty mask target": (
            [*image, *model, "--target", f"mask:{tmp_path / 'empty_mask.nii.gz'}"],
            "the mask is empty",
        ),
        "mask on another grid": (
            [*image, *model, "--target", f"mask:{tmp_path / 'other_grid.nii.gz'}"],
            "grid",
        ),
        "missing model": ([*image, "--model", str(tmp_path / "nope.pt")], "does not exist"),
        "unknown network": (
            [
                *image,
                "--model",
                str(case / "unet.pt"),
                "--network",
                "UNett",
                "--network-kwargs",
                "{}",
            ],
            "UNet",
        ),
        "roi outside": (
            [*image, *model, "--target", "roi:100,100,100:120,120,120"],
            "outside the image",
        ),
        "device": ([*image, *model, "--device", "cuda:7"], "cuda"),
        "unknown layer": (
            [*image, *model, "--method", "gradcam", "--param", "gradcam.layer=nope"],
            "no layer named 'nope'",
        ),
    }


def test_every_bad_input_gets_one_clear_line_exit_2_and_no_output(case, tmp_path, capsys):
    for what, (args, expected) in bad_input_cases(case, tmp_path).items():
        if what == "device" and torch.cuda.is_available():
            continue
        out = tmp_path / f"out_{what.replace(' ', '_')}"
        code = main(["explain", *args, "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, (what, err)
        assert expected.lower() in err.lower(), (what, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (what, err)
        assert not out.exists(), what
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}")], what


@pytest.mark.parametrize(
    "args, expected",
    [
        (["explain", "--image", "x.nii.gz", "--format", "jpg"], "invalid choice: 'jpg'"),
        (["explain", "--format", "nrrd"], "--image"),
        (["explian"], "invalid choice: 'explian'"),
    ],
)
def test_command_line_usage_errors_are_one_line_with_where_to_look(args, expected, capsys):
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert expected in err and "--help" in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_method_that_cannot_explain_the_model_fails_the_run_before_any_method_runs(
    case, tmp_path, capsys, monkeypatch
):
    from TorchEsegetaLib.methods.gradient import Saliency

    ran = []
    monkeypatch.setattr(Saliency, "attribute", lambda *args: ran.append(1))
    out = tmp_path / "run"
    code = explain(case, out, "--method", "saliency,gradcam", "--param", "gradcam.layer=nope")
    assert code == 2 and "no layer named" in capsys.readouterr().err
    assert not ran and not out.exists()


def test_out_of_memory_is_reported_and_leaves_nothing(case, tmp_path, capsys, monkeypatch):
    from TorchEsegetaLib.engine import context as engine

    def no_memory(self, total, compute, message=""):
        raise engine.OutOfMemoryError(
            "out of memory on cpu even with one sample per pass; run on a device with more memory"
        )

    monkeypatch.setattr(engine.Context, "map_batches", no_memory)
    out = tmp_path / "oom"
    assert explain(case, out) == 2
    assert "out of memory" in capsys.readouterr().err and not out.exists()


def test_existing_output_needs_overwrite_and_then_must_be_a_run_folder(case, tmp_path, capsys):
    out = tmp_path / "run"
    assert explain(case, out, "--no-figures") == 0
    (out / "added.txt").write_text("x")
    assert explain(case, out) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "added.txt").exists()
    assert explain(case, out, "--overwrite", "--no-figures") == 0
    assert (out / "run.json").exists() and not (out / "added.txt").exists()
    # a folder torchesegeta did not write is never replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    assert explain(case, mine, "--overwrite") == 2
    assert "replaces only a run folder" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]


def test_methods_listing_documents_every_method(capsys):
    from TorchEsegetaLib.methods import REGISTRY

    assert main(["methods", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in listed} == set(REGISTRY)
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for name, cls in REGISTRY.items():
        assert name in text
        for param in cls.params:
            assert f"{name}.{param.name}=" in text


def test_console_script_errors_have_no_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "TorchEsegetaLib.cli",
            "explain",
            "--image",
            str(tmp_path / "missing.nii.gz"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        result.returncode == 2
        and "does not exist" in result.stderr
        and "Traceback" not in result.stderr
    )
    assert not (tmp_path / "o").exists()


def test_method_parameters_also_in_the_batch_scripts_form(case, tmp_path):
    out = tmp_path / "run"
    code = explain(
        case,
        out,
        "--method",
        "integrated_gradients:n_steps=3,method=riemann_trapezoid,saliency",
        "--no-figures",
    )
    assert code == 0
    methods = json.loads((out / "run.json").read_text())["job"]["methods"]
    assert [m["name"] for m in methods] == ["integrated_gradients", "saliency"]
    # validated and kept as the method reads them
    assert methods[0]["params"] == {"n_steps": 3, "method": "riemann_trapezoid"}
    assert explain(case, tmp_path / "bad", "--method", "n_steps=3") == 2
