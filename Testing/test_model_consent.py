"""A model folder runs no code without consent (docs/safety.md).

Every case is a real folder, built by the project's own code (the demo's bundle export,
nnU-Net's own planner and trainer through ``models.nnunet.example``), with a payload that
creates a marker file if it ever runs. Without consent loading is refused before anything is
parsed: one line naming the file, the key and the value, and no marker. With consent the same
folder runs: the marker appears (and the model loads where the payload returns something
loadable). The issue's four routes run through the real ``torchesegeta`` command.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from consent_payloads import (
    CONSENT,
    image_file,
    macro_from_another_file,
    metadata_expression,
    nested_target,
    nnunet_network_class,
)


def torchesegeta() -> list[str]:
    """The installed console script (falling back to the module where none is installed)."""
    script = Path(sys.executable).with_name("torchesegeta")
    found = str(script) if script.is_file() else shutil.which("torchesegeta")
    return [found] if found else [sys.executable, "-m", "TorchEsegetaLib.cli"]


def explain_args(model: Path, image: Path, out: Path) -> list[str]:
    arguments = ["explain", "--image", str(image), "--model", str(model), "--out", str(out)]
    # a voxel target: the nnU-Net folder's random weights may predict no vessel at all
    return [
        *arguments,
        "--target",
        "voxel:6,7,8",
        "--method",
        "saliency",
        "--no-figures",
        "--quiet",
    ]


@pytest.fixture(scope="module")
def routes(tmp_path_factory, request):
    """Each route's folder refused by a real `torchesegeta explain` process (all at once)."""
    tmp = tmp_path_factory.mktemp("routes")
    bundle_image = image_file(tmp / "image.nii.gz")
    made = {
        "metadata": (*metadata_expression(tmp), bundle_image),
        "macro": (*macro_from_another_file(tmp), bundle_image),
        "nested": (*nested_target(tmp), bundle_image),
    }
    if importlib.util.find_spec("nnunetv2") is not None:  # the nnunet extra
        folder = request.getfixturevalue("nnunet_model_folder")
        image = image_file(tmp / "nnunet_image.nii.gz", (12, 14, 18), (2.3, 0.75, 0.62))
        made["nnunet"] = (*nnunet_network_class(folder, tmp), image)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = {
        name: subprocess.Popen(
            [*torchesegeta(), *explain_args(folder, image, tmp / f"{name}.refused")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            cwd=tmp,
        )
        for name, (folder, _, _, image) in made.items()
    }
    results = {name: process.communicate(timeout=600) for name, process in processes.items()}
    codes = {name: process.returncode for name, process in processes.items()}
    return {name: (made[name], codes[name], *results[name], tmp) for name in made}


@pytest.mark.parametrize("route", ["metadata", "macro", "nested", "nnunet"])
def test_each_route_is_refused_by_the_command_and_runs_with_consent(routes, route, capsys):
    from TorchEsegetaLib.cli import main

    if route not in routes:
        pytest.skip("nnU-Net model folders need the nnunet extra (nnunetv2)")
    (folder, marker, where, image), code, stdout, stderr, tmp = routes[route]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert where in lines[0] and CONSENT in lines[0]
    assert not marker.exists() and not (tmp / f"{route}.refused").exists()

    out = tmp / f"{route}.trusted"
    assert main([*explain_args(folder, image, out), CONSENT]) == 0, capsys.readouterr().err
    assert marker.exists()
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert json.loads((out / "run.json").read_text())["job"]["model"]["trust"] is True


def test_trust_bundle_is_kept_as_an_alias(tmp_path):
    from TorchEsegetaLib.cli import main

    root, marker, _ = metadata_expression(tmp_path)
    out = tmp_path / "run"
    assert (
        main([*explain_args(root, image_file(tmp_path / "i.nii.gz"), out), "--trust-bundle"]) == 0
    )
    assert marker.exists()


def test_a_job_file_consents_with_trust_in_its_model_reference(tmp_path, capsys):
    from TorchEsegetaLib.cli import main

    root, marker, _ = nested_target(tmp_path)
    job = {
        "images": [str(image_file(tmp_path / "image.nii.gz"))],
        "model": {"kind": "bundle", "path": str(root)},
        "methods": ["saliency"],
        "figures": False,
    }
    (tmp_path / "refused.json").write_text(json.dumps({**job, "output": str(tmp_path / "a")}))
    assert main(["run", str(tmp_path / "refused.json"), "--quiet"]) == 2
    assert "network_def::act" in capsys.readouterr().err and not marker.exists()
    job["model"]["trust"] = True
    (tmp_path / "trusted.json").write_text(json.dumps({**job, "output": str(tmp_path / "b")}))
    assert main(["run", str(tmp_path / "trusted.json"), "--quiet"]) == 0
    assert marker.exists()
