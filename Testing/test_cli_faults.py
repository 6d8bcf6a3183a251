"""Hostile cases through the command line: two runs racing to one folder, a read-only or full
disk, a cut download, a volume too small for the network, a 4D image, reversed ROI corners and
a battery of bad inputs. Each gives exit status 2 and one line naming the problem and the fix;
no earlier result is lost, inputs are untouched and nothing half-written remains."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import TINY_UNET_KWARGS, tiny_unet

from TorchEsegetaLib.cli import main
from TorchEsegetaLib.io.images import to_sitk, write_volume
from TorchEsegetaLib.io.volume import Geometry
from TorchEsegetaLib.runs.destination import PUBLISH_GATE_ENV

GEOMETRY = Geometry((16, 16, 16), (0.8, 0.8, 1.0), (5.0, -3.0, 2.0))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("case")
    torch.save(tiny_unet().state_dict(), root / "unet.pt")
    image = np.random.default_rng(0).random(GEOMETRY.size).astype(np.float32) * 100
    write_volume(image, GEOMETRY, root / "image.nii.gz")
    return root


def explain_args(case, out, *extra, image=None, method="saliency", target="roi:4,4,4:11,11,11"):
    return [
        "explain",
        "--image",
        str(image or case / "image.nii.gz"),
        "--model",
        str(case / "unet.pt"),
        "--network",
        "UNet",
        "--network-kwargs",
        json.dumps(TINY_UNET_KWARGS),
        "--method",
        method,
        "--target",
        target,
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def one_line_error(capfd, code, expected):
    err = capfd.readouterr().err
    assert code == 2, err
    assert "internal error" not in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for text in [expected] if isinstance(expected, str) else expected:
        assert text in err, err
    return err


@pytest.fixture
def earlier_run(case, tmp_path):
    """A complete run folder from an earlier run, and its files' bytes."""
    out = tmp_path / "disk" / "run"
    assert main(explain_args(case, out, "--no-figures")) == 0
    return out, snapshot(out)


# -- two runs racing to one folder ------------------------------------------------------------


def cli_process(case, out, *extra, gate=None, method="saliency"):
    env = {k: v for k, v in os.environ.items() if k != PUBLISH_GATE_ENV}
    if gate is not None:
        env[PUBLISH_GATE_ENV] = str(gate)
    arguments = explain_args(case, out, *extra, method=method)
    command = [sys.executable, "-m", "TorchEsegetaLib.cli", *arguments]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def open_gate_when_reached(gate, process, timeout=300):
    """The write end of the gate FIFO, once ``process`` waits at it (it opened the read end)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:  # ENXIO: no reader yet
            assert error.errno == errno.ENXIO
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first run never reached the publish gate"
        time.sleep(0.02)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
@pytest.mark.parametrize("overwrite", [False, True], ids=["new-folder", "overwrite"])
def test_two_runs_racing_to_one_folder_never_delete_each_others_result(case, tmp_path, overwrite):
    """Both runs start together and wait at their publish gates, so both found the folder as it
    was at the start; the second publishes first, then the first tries."""
    out = tmp_path / "run"
    flags = ["--no-figures", *(["--overwrite"] if overwrite else [])]
    if overwrite:  # both were told to replace this earlier run
        assert main(explain_args(case, out, "--no-figures")) == 0
    gates = [tmp_path / "first.gate", tmp_path / "second.gate"]
    for gate in gates:
        os.mkfifo(gate)
    first = cli_process(case, out, *flags, gate=gates[0])
    second = cli_process(case, out, *flags, gate=gates[1], method="input_x_gradient")
    first_gate = open_gate_when_reached(gates[0], first)
    try:
        second_gate = open_gate_when_reached(gates[1], second)
        os.write(second_gate, b"publish\n")
        os.close(second_gate)
        _, second_err = second.communicate(timeout=300)
        assert second.returncode == 0, second_err
        published = snapshot(out)
        assert json.loads((out / "run.json").read_text())["methods"][0]["name"] == (
            "input_x_gradient"
        )
    finally:
        os.write(first_gate, b"publish\n")
        os.close(first_gate)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 2, first_err
    assert len(first_err.strip().splitlines()) == 1 and "Traceback" not in first_err
    happened = "replaced or changed by another run" if overwrite else "created by another run"
    assert f"output folder {out} was {happened} while this one ran" in first_err
    assert "this run's result was not written" in first_err
    assert snapshot(out) == published  # the second run's result, whole
    assert hidden(tmp_path) == []


# -- full disk and read-only disk -------------------------------------------------------------


@contextmanager
def tmpfs(path, size):
    """A small tmpfs at ``path``; skips where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or getattr(os, "geteuid", lambda: 1)() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(disk, leave_bytes):
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * max(free - leave_bytes, 0))


def test_a_full_tmpfs_gives_one_line_and_keeps_the_earlier_run(case, tmp_path, capfd):
    disk = tmp_path / "disk"
    with tmpfs(disk, "2m"):
        out = disk / "run"
        assert main(explain_args(case, out)) == 0
        before = snapshot(out)
        inputs = snapshot(case)
        fill(disk, leave_bytes=8 * 1024)  # less than one map and its figures
        code = main(explain_args(case, out, "--overwrite"))
        one_line_error(
            capfd,
            code,
            [f"cannot write the run folder {out}: no space is left", "free some space"],
        )
        assert snapshot(out) == before and hidden(disk) == [] and snapshot(case) == inputs
        code = main(explain_args(case, disk / "new"))
        one_line_error(capfd, code, "no space is left")
        assert not (disk / "new").exists() and hidden(disk) == []


def test_a_map_cut_short_by_a_full_disk_is_caught_though_itk_reports_success(
    case, earlier_run, capfd, monkeypatch
):
    """ITK's NIfTI writer returns normally when the disk fills up, leaving a short file."""
    from TorchEsegetaLib import errors
    from TorchEsegetaLib.io import images as io

    out, before = earlier_run
    real_write = io.sitk.WriteImage

    def short_write(image, path, *args, **kwargs):
        real_write(image, path, *args, **kwargs)
        if path.endswith("saliency.nii.gz"):
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])

    monkeypatch.setattr(io.sitk, "WriteImage", short_write)
    monkeypatch.setattr(errors.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 0))
    code = main(explain_args(case, out, "--overwrite", "--no-figures"))
    one_line_error(capfd, code, "no space is left on the disk (writing saliency.nii.gz)")
    assert snapshot(out) == before and hidden(out.parent) == []


def test_an_injected_enospc_writing_run_json_keeps_the_earlier_run(
    case, earlier_run, capfd, monkeypatch
):
    import pathlib

    out, before = earlier_run
    real_write_text = pathlib.Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "run.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    code = main(explain_args(case, out, "--overwrite", "--no-figures"))
    one_line_error(capfd, code, "no space is left on the disk (writing run.json)")
    assert snapshot(out) == before and hidden(out.parent) == []


def test_a_read_only_mount_fails_before_the_work_and_keeps_the_earlier_run(case, tmp_path, capfd):
    disk = tmp_path / "disk"
    with tmpfs(disk, "2m"):
        out = disk / "run"
        assert main(explain_args(case, out, "--no-figures")) == 0
        before = snapshot(out)
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True)
        if remounted.returncode != 0:
            pytest.skip("cannot remount read-only here")
        expected = [f"{disk} is on a read-only file system", "choose a place on a writable disk"]
        one_line_error(capfd, main(explain_args(case, out, "--overwrite")), expected)
        one_line_error(capfd, main(explain_args(case, disk / "sub" / "new")), expected[0])
        for command in (["evaluate", str(out), "--quiet"], ["report", str(out)]):
            one_line_error(capfd, main(command), f"{out} is on a read-only file system")
        assert snapshot(out) == before


@pytest.mark.parametrize(
    "code, expected",
    [
        (errno.EROFS, "is on a read-only file system; choose a place on a writable disk"),
        (errno.EACCES, "permission denied for"),
    ],
    ids=["EROFS", "EACCES"],
)
def test_an_injected_unwritable_folder_fails_before_the_work(
    case, earlier_run, capfd, monkeypatch, code, expected
):
    from TorchEsegetaLib.methods.gradient import Saliency
    from TorchEsegetaLib.runs import destination

    out, before = earlier_run
    real_mkdir = os.mkdir

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(out.parent)):
            raise OSError(code, os.strerror(code), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(destination.os, "mkdir", refuse)
    monkeypatch.setattr(Saliency, "attribute", lambda *a: pytest.fail("the work ran"))
    one_line_error(capfd, main(explain_args(case, out, "--overwrite")), expected)
    assert snapshot(out) == before and hidden(out.parent) == []


def test_a_save_job_on_a_read_only_disk_is_one_line(case, tmp_path, capfd, monkeypatch):
    import pathlib

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(pathlib.Path, "write_text", read_only)
    job = tmp_path / "job.json"
    code = main(explain_args(case, tmp_path / "run", "--save-job", str(job)))
    one_line_error(capfd, code, f"{job} is on a read-only file system")


# -- bad inputs -------------------------------------------------------------------------------


def test_a_cut_download_is_refused_and_left_as_it_is(case, tmp_path, capfd):
    cut = tmp_path / "cut.nii.gz"
    data = (case / "image.nii.gz").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    code = main(explain_args(case, tmp_path / "run", image=cut))
    one_line_error(capfd, code, [f"{cut} is incomplete", "download or copy it again"])
    assert cut.read_bytes() == data[: len(data) // 2] and not (tmp_path / "run").exists()


def test_a_volume_smaller_than_the_network_takes_says_the_minimum(case, tmp_path, capfd):
    small = write_volume(np.ones((2, 2, 2), np.float32), Geometry((2, 2, 2)), tmp_path / "s.nii")
    code = main(explain_args(case, tmp_path / "run", image=small, target="voxel:0,0,0"))
    one_line_error(capfd, code, ["(2x2x2 voxels) is too small", "larger than 2 voxels", "roi_size"])
    assert not (tmp_path / "run").exists()


def test_a_4d_image_is_named_and_one_frame_can_be_explained(case, tmp_path, capfd):
    frames = np.random.default_rng(1).random((2, *GEOMETRY.size)).astype(np.float32) * 100
    series = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([to_sitk(f, GEOMETRY) for f in frames]), str(series))
    code = main(explain_args(case, tmp_path / "all", image=series))
    one_line_error(capfd, code, [f"{series} is a 4D image with 2 frames", f"{series}:frame=N"])
    out = tmp_path / "frame1"
    assert main(explain_args(case, out, "--no-figures", image=f"{series}:frame=1")) == 0
    assert json.loads((out / "run.json").read_text())["inputs"] == [f"{series}:frame=1"]
    capfd.readouterr()
    assert main(["evaluate", str(out), "--metric", "sparseness", "--quiet"]) == 0


def test_reversed_roi_corners_are_accepted_said_and_recorded(case, tmp_path):
    out = tmp_path / "run"
    assert main(explain_args(case, out, "--no-figures", target="roi:11,4,11:4,11,4")) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["target"]["box"] == {
        "start": [4, 4, 4],
        "end": [11, 11, 11],
        "coordinates": "voxel",
    }
    assert record["target"]["region_voxels"] == 8**3
    (warning,) = [w for w in record["warnings"] if "ROI" in w]
    assert "after its end corner along i, k" in warning and "(4, 4, 4) to (11, 11, 11)" in warning


def hostile_cases(case, tmp_path):
    """(arguments, expected text) of bad inputs not covered by test_cli's battery."""
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    text = tmp_path / "notes.nii"
    text.write_text("not an image at all, but long enough to look like a header " * 10)
    header_only = tmp_path / "header.nhdr"
    header_only.write_text(
        "NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nencoding: raw\ndata file: header.raw\n"
    )
    other_grid = write_volume(
        np.ones((16, 16, 16), np.float32),
        Geometry((16, 16, 16), (2.0, 2.0, 2.0)),
        tmp_path / "g.nii.gz",
    )
    bad_checkpoint = tmp_path / "bad.pt"
    bad_checkpoint.write_bytes(os.urandom(200))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    nan = np.ones(GEOMETRY.size, np.float32)
    nan[1, 2, 3] = np.inf
    write_volume(nan, GEOMETRY, tmp_path / "inf.nrrd")
    image = str(case / "image.nii.gz")
    no_dicom = tmp_path / "no-dicom"  # beside the output folders, never holding them
    no_dicom.mkdir()
    (no_dicom / "notes.txt").write_text("not a DICOM file")
    return {
        "empty file": ([empty], "is an empty file (0 bytes)"),
        "text named .nii": ([text], "notes.nii"),
        "detached data missing": ([header_only], "which does not exist"),
        "mismatched geometry": ([image, other_grid], "is not on the grid of"),
        "Inf voxels": ([tmp_path / "inf.nrrd"], "NaN/Inf"),
        "folder with no DICOM": ([no_dicom], "contains no DICOM series"),
        "corrupt checkpoint": ((["--model", str(bad_checkpoint)], [image]), "bad.pt"),
        "output under a file": ((["--out", str(a_file / "run")], [image]), "is a file"),
        "class unknown": ((["--class", "tumour"], [image]), "unknown class"),
        "voxel outside": ((["--target", "voxel:99,0,0"], [image]), "lies outside the image"),
        "negative crop margin": ((["--crop-margin", "-1"], [image]), "crop"),
    }


def test_hostile_inputs_get_one_line_and_exit_2(case, tmp_path, capfd):
    for what, (given, expected) in hostile_cases(case, tmp_path).items():
        extra, images = given if isinstance(given, tuple) else ([], given)
        out = tmp_path / f"out_{what.replace(' ', '_')}"
        args = explain_args(case, out, image=images[0])
        for more in images[1:]:
            args[args.index("--model") : args.index("--model")] = ["--image", str(more)]
        for flag, value in zip(extra[::2], extra[1::2]):
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        code = main(args)
        err = capfd.readouterr().err
        assert code == 2, (what, err)
        assert expected in err and len(err.strip().splitlines()) == 1, (what, err)
        assert "internal error" not in err and not out.exists(), (what, err)
