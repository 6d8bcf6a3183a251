"""No silent substitution, no hang, no internal error: each case that used to explain the wrong
model, wait for minutes or end in "internal error" is now one line naming the problem and the
fix, with exit status 2 and nothing written. Cases that could hang (a FIFO, a silent server) run
as real processes under a timeout."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from cohort_cases import write_cases, write_cohort, write_template
from helpers import TINY_UNET_KWARGS, tiny_unet
from loopback import loopback_listener
from test_cli_faults import tmpfs

from TorchEsegetaLib.cli import main
from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry

GEOMETRY = Geometry((16, 16, 16))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("case")
    torch.save(tiny_unet().state_dict(), root / "unet.pt")
    image = np.random.default_rng(0).random(GEOMETRY.size).astype(np.float32) * 100
    write_volume(image, GEOMETRY, root / "image.nii.gz")
    return root


def one_line(capfd, code, *expected):
    err = capfd.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "internal error" not in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def cli(*arguments, timeout=240):
    """The command line as a real process: (exit status, stderr)."""
    command = [sys.executable, "-m", "TorchEsegetaLib.cli", *map(str, arguments)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stderr


def explain(case, out, *extra):
    return ["explain", "--image", str(case / "image.nii.gz"), "--out", str(out), "--quiet", *extra]


# -- no silent substitution ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--network", "UNet"], "add --model CHECKPOINT"),
        (["--network-kwargs", json.dumps(TINY_UNET_KWARGS)], "add --model CHECKPOINT"),
        (["--network", "UNet", "--network-kwargs", "{}"], "add --model CHECKPOINT"),
        (["--model", "demo", "--network", "UNet"], "the demo model defines its own network"),
    ],
    ids=["network", "kwargs", "both", "demo-and-network"],
)
def test_network_options_without_a_checkpoint_are_an_error_not_the_demo(
    case, tmp_path, capfd, extra, expected
):
    out = tmp_path / "run"
    one_line(capfd, main(explain(case, out, *extra)), expected)
    assert not out.exists()


def test_network_kwargs_without_a_network_are_an_error(case, tmp_path, capfd):
    scripted = tmp_path / "unet.ts"
    torch.jit.script(tiny_unet()).save(str(scripted))
    kwargs = ["--network-kwargs", json.dumps(TINY_UNET_KWARGS)]
    code = main(explain(case, tmp_path / "run", "--model", str(scripted), *kwargs))
    one_line(capfd, code, "--network-kwargs are the arguments of --network")


# -- no hang ------------------------------------------------------------------------------------


def test_a_ray_address_that_accepts_but_never_answers_is_one_line_in_bounded_time(tmp_path):
    """A real loopback listener that accepts every connection and never sends a byte (ray.init
    waited on it for over 5 minutes), and the command line as a real process: refused after
    the bounded wait, nothing written."""
    pytest.importorskip("ray")
    from TorchEsegetaLib.cohort.ray_engine import ANSWER_TIMEOUT_S, CONNECT_TIMEOUT_S

    ids = write_cases(tmp_path / "cases", 1)
    cohort = write_cohort(tmp_path / "cases", ids)
    template = write_template(tmp_path)
    out = tmp_path / "results"
    with loopback_listener(None) as port:
        started = time.monotonic()
        code, err = cli(
            "batch", cohort, "--job", template, "--out", out, "--engine", "ray",
            "--address", f"127.0.0.1:{port}", "--quiet", timeout=300,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"no Ray cluster answers at --address 127.0.0.1:{port}" in err
    assert f"accepts connections on 127.0.0.1:{port} but does not answer within" in err
    # the process's start (torch, the model, Ray's import) plus the bounded connection
    assert elapsed < 60 + CONNECT_TIMEOUT_S + ANSWER_TIMEOUT_S
    assert not out.exists()


def test_a_silent_ray_client_address_is_refused_and_a_server_that_answers_is_not():
    from loopback import SETTINGS_FRAME

    from TorchEsegetaLib.cohort.ray_engine import _nothing_listens

    for scheme in ("", "ray://"):
        with loopback_listener(None) as port:
            said = _nothing_listens(f"{scheme}127.0.0.1:{port}", answer_s=0.5)
            assert said.startswith(f"something accepts connections on 127.0.0.1:{port}")
        with loopback_listener(SETTINGS_FRAME) as port:
            assert _nothing_listens(f"{scheme}127.0.0.1:{port}", answer_s=5) == ""
        with loopback_listener(b"") as port:  # closes at once: an answer, ray.init says more
            assert _nothing_listens(f"{scheme}127.0.0.1:{port}", answer_s=5) == ""
    assert _nothing_listens("auto") == _nothing_listens("local") == ""


@contextlib.contextmanager
def no_longer_than(seconds):
    """Fail instead of hanging: SIGALRM interrupts a blocking open() or read() of this thread."""

    def expire(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs and SIGALRM")
def test_a_fifo_or_device_given_as_a_file_is_named_and_never_read(case, tmp_path, capfd):
    """Reading a FIFO blocks until something writes into it: every place a file is read says
    what it is instead (and an empty FIFO is not "an empty file")."""
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    fifo_pt = tmp_path / "pipe.pt"
    os.mkfifo(fifo_pt)
    job = tmp_path / "job.json"
    os.mkfifo(job)
    cohort = tmp_path / "cohort.csv"
    os.mkfifo(cohort)
    unet = ["--network", "UNet", "--network-kwargs", json.dumps(TINY_UNET_KWARGS)]
    image = ["--image", case / "image.nii.gz", "--model", case / "unet.pt", *unet]
    cases = {
        "image": (["explain", "--image", fifo, "--out", tmp_path / "a"], fifo),
        "model": (
            [
                "explain",
                "--image",
                case / "image.nii.gz",
                "--model",
                fifo_pt,
                "--out",
                tmp_path / "b",
            ],
            fifo_pt,
        ),  # fmt: skip
        "checkpoint": (
            [
                "explain",
                "--image",
                case / "image.nii.gz",
                "--model",
                fifo_pt,
                *unet,
                "--out",
                tmp_path / "c",
            ],
            fifo_pt,
        ),  # fmt: skip
        "mask": (["explain", *image, "--target", f"mask:{fifo}", "--out", tmp_path / "d"], fifo),
        "job file": (["run", job], job),
        "cohort file": (["batch", cohort, "--job", job, "--out", tmp_path / "e"], cohort),
    }
    if os.path.exists("/dev/zero"):
        cases["device"] = (
            ["explain", "--image", "/dev/zero", "--out", tmp_path / "f"],
            "/dev/zero",
        )
    for name, (arguments, path) in cases.items():
        with no_longer_than(60):
            code = main([*map(str, arguments), "--quiet"])
        err = one_line(capfd, code, f"{path} is a ", "not a regular file")
        assert "0 bytes" not in err, (name, err)
    assert not any((tmp_path / name).exists() for name in "abcdef")


# -- no internal error --------------------------------------------------------------------------


def test_a_checkpoint_of_another_pickle_protocol_is_one_line_without_torchs_warning(
    case, tmp_path, capfd
):
    checkpoint = tmp_path / "protocol5.pt"
    with open(checkpoint, "wb") as handle:
        pickle.dump({"weight": [1.0, 2.0]}, handle, protocol=5)
    unet = ["--network", "UNet", "--network-kwargs", json.dumps(TINY_UNET_KWARGS)]
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")  # as a fresh process shows each warning once
        code = main(explain(case, tmp_path / "run", "--model", str(checkpoint), *unet))
    one_line(capfd, code, f"{checkpoint} is not a PyTorch checkpoint")
    assert [str(w.message) for w in shown] == []


@pytest.mark.parametrize("seed", [10**30, -1])
def test_a_seed_out_of_range_is_one_line(case, tmp_path, capfd, seed):
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps({"images": [str(case / "image.nii.gz")], "output": "run", "seed": seed})
    )
    one_line(capfd, main(["run", str(job)]), 'job field "seed" must be at')
    code = main(explain(case, tmp_path / "run", "--seed", str(seed)))
    one_line(capfd, code, "4294967295" if seed > 0 else "at least 0")
    assert not (tmp_path / "run").exists()


def test_an_output_folder_at_a_mount_point_is_one_line(case, tmp_path, capfd, monkeypatch):
    """A mount point cannot be renamed (EBUSY): never replaced, whatever it holds."""
    from TorchEsegetaLib.runs import destination

    unet = ["--model", str(case / "unet.pt"), "--network", "UNet"]
    unet += ["--network-kwargs", json.dumps(TINY_UNET_KWARGS), "--target", "voxel:8,8,8"]
    mounted = tmp_path / "mounted"
    assert main(explain(case, mounted, *unet, "--no-figures")) == 0  # a run folder of ours
    capfd.readouterr()
    real_ismount = os.path.ismount
    monkeypatch.setattr(destination.os.path, "ismount", lambda p: p == mounted or real_ismount(p))
    code = main(explain(case, mounted, *unet, "--overwrite"))
    one_line(capfd, code, f"output folder {mounted} is a mount point", f"--out {mounted / 'run'}")
    assert (mounted / "run.json").is_file()
    monkeypatch.undo()
    with tmpfs(tmp_path / "disk", "4m") as disk:  # a real one where mounting is allowed
        (disk / "run.json").write_text((mounted / "run.json").read_text())
        code = main(explain(case, disk, *unet, "--overwrite"))
        one_line(capfd, code, f"output folder {disk} is a mount point")
        assert (disk / "run.json").is_file()


@pytest.mark.parametrize(
    "layout, expected",
    [
        ({"dataset.json": "{}", "fold_0/checkpoint_final.pth": ""}, "lacks plans.json"),
        ({"plans.json": "{}", "fold_0/checkpoint_final.pth": ""}, "lacks dataset.json"),
        ({"plans.json": "{}", "dataset.json": "{}"}, "lacks a fold_N/ folder"),
        ({"configs/metadata.json": "{}", "models/model.pt": ""}, "an incomplete MONAI bundle"),
        ({"scan_0000.nii.gz": ""}, "a folder of images, not a model"),
        ({"run.json": "{}"}, "a TorchEsegeta run folder, not a model"),
        ({"notes.txt": ""}, "neither a MONAI bundle"),
    ],
    ids=[
        "nnunet-no-plans",
        "nnunet-no-dataset",
        "nnunet-no-fold",
        "bundle",
        "images",
        "run",
        "other",
    ],
)
def test_a_folder_that_is_no_model_says_what_it_looks_like(case, tmp_path, capfd, layout, expected):
    folder = tmp_path / "model"
    for name, text in layout.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    err = one_line(capfd, main(explain(case, tmp_path / "run", "--model", str(folder))), expected)
    assert "not a MONAI bundle: configs/inference.json" not in err


@pytest.fixture
def bundle(tmp_path):
    from TorchEsegetaLib.models.demo.export import write_bundle

    return write_bundle(tmp_path / "bundle", form="pt")


def _rewrite_config(bundle, transform):
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    return transform(config)


def test_a_bundle_yaml_with_a_python_tag_is_one_line_and_runs_nothing(
    bundle, case, tmp_path, capfd
):
    import yaml

    marker = tmp_path / "MARKER"
    config = _rewrite_config(bundle, lambda c: c)
    text = yaml.safe_dump(config)
    text += f"payload: !!python/object/apply:os.system ['touch {marker}']\n"
    (bundle / "configs" / "inference.json").unlink()
    (bundle / "configs" / "inference.yaml").write_text(text)
    err = one_line(capfd, main(explain(case, tmp_path / "run", "--model", str(bundle))))
    assert "inference.yaml" in err and "python/object/apply:os.system" in err, err
    assert "fix the file" in err and not marker.exists() and not (tmp_path / "run").exists()


def test_a_malformed_bundle_json_config_is_one_line_naming_the_place(bundle, case, tmp_path, capfd):
    path = bundle / "configs" / "inference.json"
    path.write_text(path.read_text()[:-40])  # cut off
    with pytest.raises(json.JSONDecodeError) as parsed:
        json.loads(path.read_text())
    err = one_line(capfd, main(explain(case, tmp_path / "run", "--model", str(bundle))))
    assert "inference.json" in err and "fix the file" in err, err
    assert f"line {parsed.value.lineno} column {parsed.value.colno}" in err


def test_a_network_def_given_as_a_macro_is_never_an_internal_error(
    bundle, case, tmp_path, capfd, monkeypatch
):
    """A ``%`` macro as network_def (once an AttributeError): one line naming network_def and the
    fix, or, where the macro is resolved as MONAI resolves it (its file relative to the working
    folder, here the bundle's), the network it names is built."""
    monkeypatch.chdir(bundle)

    def to_macro(config):
        (bundle / "configs" / "network.json").write_text(json.dumps({"net": config["network_def"]}))
        target.append(config["network_def"]["_target_"])
        config["network_def"] = "%configs/network.json#net"
        return config

    target: list[str] = []

    config = _rewrite_config(bundle, to_macro)
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    code = main(explain(case, out, "--model", str(bundle), "--no-figures"))
    if code == 0:
        source = json.loads((out / "run.json").read_text())["model"]["source"]
        # the network the macro names (by its class name, however qualified)
        assert source["network"].split(".")[-1] == target[0].split(".")[-1], source
    else:
        one_line(capfd, code, "network_def", "'%configs/network.json#net'")


def test_a_cohort_target_syntax_error_names_the_case_and_line(case, tmp_path, capfd):
    table = tmp_path / "cohort.csv"
    image = case / "image.nii.gz"
    table.write_text(
        f'case_id,image,target\na,{image},"roi:1,2,3:4,5,6"\nb,{image},"roi:1,2:3,4,5"\n'
    )
    template = write_template(tmp_path)
    out = tmp_path / "out"
    code = main(["batch", str(table), "--job", str(template), "--out", str(out)])
    one_line(capfd, code, f"cohort file {table}, line 3 (case b): target 'roi:1,2:3,4,5'")
    assert not out.exists()
