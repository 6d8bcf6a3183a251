"""The subprocess protocol the Slicer module relies on: JSON progress lines, done/error, cancel."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import torch
from helpers import TINY_UNET_KWARGS, tiny_unet

from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry


def make_job(tmp_path, methods, **extra):
    torch.save(tiny_unet().state_dict(), tmp_path / "unet.pt")
    geometry = Geometry((16, 16, 16), (1.0, 1.0, 1.5))
    write_volume(
        np.random.default_rng(0).random(geometry.size).astype(np.float32),
        geometry,
        tmp_path / "image.nii.gz",
    )
    job = {
        "images": ["image.nii.gz"],
        "model": {
            "kind": "monai",
            "network": "UNet",
            "kwargs": TINY_UNET_KWARGS,
            "checkpoint": "unet.pt",
        },
        "target": "voxel:8,8,8",
        "methods": methods,
        "output": "run",
        "figures": False,
        **extra,
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    return tmp_path / "job.json"


def start(job_file):
    return subprocess.Popen(
        [sys.executable, "-m", "TorchEsegetaLib.runs.worker", str(job_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_worker_emits_progress_lines_and_a_complete_run_folder(tmp_path):
    job_file = make_job(
        tmp_path,
        ["saliency", {"name": "integrated_gradients", "params": {"n_steps": 4}}],
        max_batch=2,
    )
    process = start(job_file)
    out, err = process.communicate(timeout=180)
    events = [json.loads(line) for line in out.splitlines()]
    assert process.returncode == 0, err
    assert events[-1] == {"event": "done", "run_folder": str(tmp_path / "run")}
    progress = [e for e in events if e["event"] == "progress"]
    assert {"load", "segment", "estimate", "method", "write", "done"} <= {
        e["stage"] for e in progress
    }
    # the cost estimate is also a plain line of the log Slicer's panel shows
    assert "torchesegeta: estimate integrated_gradients: 4 forward+backward passes" in err
    ig = [e["fraction"] for e in progress if e.get("method") == "integrated_gradients"]
    assert ig == sorted(ig) and ig[-1] == 1.0 and len(ig) >= 3
    assert all(0.0 <= e["fraction"] <= 1.0 for e in progress)
    assert (tmp_path / "run" / "run.json").is_file() and (
        tmp_path / "run" / "integrated_gradients.nii.gz"
    ).is_file()
    # the worker computes with denormals flushed, checked on its first pass
    denormals = json.loads((tmp_path / "run" / "run.json").read_text())["denormals"]
    assert denormals["flush"] and denormals["check"]["labelmaps_equal"]


def test_worker_reports_input_errors(tmp_path):
    job_file = make_job(tmp_path, ["no_such_method"])
    process = start(job_file)
    out, _ = process.communicate(timeout=120)
    event = json.loads(out.splitlines()[-1])
    assert (
        process.returncode == 2
        and event["kind"] == "input"
        and "no_such_method" in event["message"]
    )


def test_terminating_the_worker_mid_run_leaves_no_run_folder(tmp_path):
    # Riemann steps: Gauss-Legendre nodes for thousands of steps take minutes to set up.
    slow = {
        "name": "integrated_gradients",
        "params": {"n_steps": 4000, "method": "riemann_trapezoid"},
    }
    job_file = make_job(tmp_path, [slow], max_batch=1)
    process = start(job_file)
    for line in process.stdout:
        event = json.loads(line)
        if event.get("stage") == "method" and event["fraction"] > 0:
            process.send_signal(signal.SIGTERM)
            break
    out, _ = process.communicate(timeout=120)
    last = json.loads(out.splitlines()[-1])
    assert process.returncode == 130 and last["kind"] == "cancelled"
    assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]


def test_progress_is_throttled_but_keeps_every_start_end_and_step():
    from TorchEsegetaLib.runs.worker import throttled

    now = [0.0]
    sent = []
    progress = throttled(sent.append, interval=0.1, clock=lambda: now[0])
    events = [{"stage": "segment", "fraction": 0.0}]
    events += [{"stage": "method", "method": "saliency", "fraction": f} for f in (0.0, 0.5, 1.0)]
    events += [
        {"stage": "method", "method": "occlusion", "fraction": i / 1000} for i in range(1, 1000)
    ]
    events.append({"stage": "method", "method": "occlusion", "fraction": 1.0})
    for event in events:
        progress(event)
        now[0] += 0.001  # a thousand events a second
    fractions = [e["fraction"] for e in sent if e.get("method") == "occlusion"]
    saliency = [e["fraction"] for e in sent if e.get("method") == "saliency"]
    assert sent[0]["stage"] == "segment" and saliency == [0.0, 1.0]  # 0.5 came too soon
    assert fractions[0] == 0.001 and fractions[-1] == 1.0  # the step's first and last
    assert 9 <= len(fractions) <= 12  # about one every 0.1 s over one second
