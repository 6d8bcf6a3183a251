"""What the command prints: grouped help, --verbose/--quiet on either side of the subcommand,
and progress that stays a few lines when stderr is a log rather than a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import tiny_unet, tiny_unet_cli_args

from TorchEsegetaLib.cli import build_parser, main
from TorchEsegetaLib.cli.progress import ProgressLines
from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("case")
    torch.save(tiny_unet().state_dict(), root / "unet.pt")
    geometry = Geometry((20, 18, 16), (0.7, 0.9, 1.3))
    image = np.random.default_rng(0).random(geometry.size).astype(np.float32) * 100
    write_volume(image, geometry, root / "image.nii.gz")
    return root


def explain_args(case, out, *extra):
    image = str(case / "image.nii.gz")
    return [
        "explain",
        "--image",
        image,
        *tiny_unet_cli_args(case / "unet.pt"),
        "--out",
        str(out),
        *extra,
    ]


def test_explain_help_is_grouped_and_shows_the_default_method():
    text = build_parser()._subparsers._group_actions[0].choices["explain"].format_help()
    titles = re.findall(r"^(\w[\w ]*):$", text, flags=re.MULTILINE)
    assert titles[1:] == [
        "inputs",
        "model",
        "target",
        "methods",
        "evaluation",
        "uncertainty",
        "run",
        "output",
    ]
    methods = text[text.index("\nmethods:") : text.index("\nevaluation:")]
    assert "--method" in methods and "default: saliency" in methods
    run = text[text.index("\nrun:") : text.index("\noutput:")]
    for flag in ("--out", "--device", "--seed", "--max-batch", "--crop-margin"):
        assert flag in run, flag


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_works_before_and_after_the_subcommand(tmp_path, where):
    args = ["explain", "--image", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "o")]
    args = ["--verbose", *args] if where == "before" else [*args, "--verbose"]
    with pytest.raises(UserInputError, match="does not exist"):
        main(args)  # --verbose lets the error through, with its traceback


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_works_before_and_after_the_subcommand(case, tmp_path, capsys, where):
    args = explain_args(case, tmp_path / "run", "--no-figures")
    args = ["--quiet", *args] if where == "before" else [*args, "--quiet"]
    assert main(args) == 0
    assert "torchesegeta:" not in capsys.readouterr().err


def test_progress_lines_print_start_end_and_at_most_one_line_per_tenth():
    lines = []

    class Stream:
        def write(self, text):
            lines.extend(t for t in text.splitlines() if t)

        def flush(self):
            pass

    now = [0.0]
    progress = ProgressLines(stream=Stream(), clock=lambda: now[0])
    progress({"stage": "segment", "fraction": 0.0, "message": "segmenting"})
    for index, label in enumerate(("occlusion", "saliency")):
        event = {"stage": "method", "method": label, "index": index, "total": 2}
        progress({**event, "fraction": 0.0, "message": f"{label}: starting", "phase": "start"})
        for step in range(1, 1001):  # a thousand batches, 1 ms apart
            now[0] += 0.001
            progress({**event, "fraction": step / 1000, "message": f"{label} {step}/1000"})
        progress({**event, "fraction": 1.0, "message": f"{label}: ok in 1.0 s", "phase": "end"})
    assert lines[0] == "torchesegeta: segmenting"
    per_method = [[line for line in lines if label in line] for label in ("occlusion", "saliency")]
    for method_lines in per_method:
        assert "starting" in method_lines[0] and "ok in 1.0 s" in method_lines[-1]
        assert len(method_lines) <= 12  # start, one per 10 %, end
    # A slow method: one line per 30 s even when the fraction hardly moves.
    lines.clear()
    event = {"stage": "method", "method": "rise", "index": 0, "total": 1}
    progress({**event, "fraction": 0.0, "message": "rise: starting", "phase": "start"})
    for step in range(1, 301):
        now[0] += 1.0
        progress({**event, "fraction": step / 10000, "message": f"rise {step}"})
    assert 10 <= len(lines) <= 11


def test_a_logged_occlusion_run_stays_within_a_line_budget(case, tmp_path):
    """stdout and stderr are pipes here, as in CI, Slicer's log or batch mode."""
    out = tmp_path / "run"
    args = explain_args(
        case, out, "--method", "occlusion", "--param", "occlusion.window=4", "--no-figures"
    )
    args += ["--param", "occlusion.stride=4", "--max-batch", "1"]  # 100 windows, 100 batches
    result = subprocess.run(
        [sys.executable, "-m", "TorchEsegetaLib.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in re.split(r"[\r\n]+", result.stdout + result.stderr) if line.strip()]
    assert len(lines) <= 25, "\n".join(lines)
    assert any("occlusion: starting" in line for line in lines)
    assert any("occlusion: ok in" in line for line in lines)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sets a pipe's size (Linux)")
def test_a_reader_that_stops_early_is_not_an_internal_error():
    """`torchesegeta methods --json | head -1`: the command still writes when the reader has
    gone (a one-page pipe makes sure of it)."""
    import fcntl

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ
    process = subprocess.Popen(
        [sys.executable, "-m", "TorchEsegetaLib.cli", "methods", "--json"],
        stdout=write_end,
        stderr=subprocess.PIPE,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        assert reader.readline().strip() == b"["
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and b"error" not in err, err
