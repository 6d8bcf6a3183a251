"""A model folder runs no code without consent (docs/safety.md).

Every case is a real folder, built by the project's own code (the demo's bundle export,
nnU-Net's own planner and trainer through ``models.nnunet.example``), with a payload that
creates a marker file if it ever runs. Without consent loading is refused before anything is
parsed: one line naming the file, the key and the value, and no marker. With consent the same
folder runs: the marker appears (and the model loads where the payload returns something
loadable). The issue's four routes run through the real ``torchesegeta`` command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry
from TorchEsegetaLib.models.loading import load_model

CONSENT = "--trust-model"


def touch_expression(marker: Path) -> str:
    """A ``$`` expression that creates ``marker`` and is 1 (a valid in_channels)."""
    return f"$__import__('pathlib').Path({str(marker)!r}).touch() or 1"


def touch_command(marker: Path) -> list[str]:
    return [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def demo_bundle(folder: Path) -> Path:
    """The demo network as a bundle with network_def + state dict (the export's "pt" form)."""
    from TorchEsegetaLib.models.demo.export import write_bundle

    return write_bundle(folder, "pt")


HUBCONF = """import pathlib
MARKER = {marker!r}


def net(**kwargs):
    pathlib.Path(MARKER).touch()
    from {module} import {name}
    return {name}(**kwargs)


def act(**kwargs):
    pathlib.Path(MARKER).touch()
    import torch
    return torch.nn.LeakyReLU(**kwargs)
"""


def write_hubconf(folder: Path, marker: Path, network: str) -> None:
    """A torch.hub entry file in the model folder: code that loads from a path."""
    module, name = network.rsplit(".", 1)
    text = HUBCONF.format(marker=str(marker), module=module, name=name)
    (folder / "hubconf.py").write_text(text)


# --- the four routes ------------------------------------------------------------------


def metadata_expression(tmp: Path) -> tuple[Path, Path, str]:
    """Route 1: a ``$`` expression in metadata.json, reached through an ``@`` reference."""
    root, marker = demo_bundle(tmp / "metadata_route"), tmp / "metadata_route.marker"
    edit_json(
        root / "configs" / "metadata.json", lambda m: m.update(channels=touch_expression(marker))
    )
    edit_json(
        root / "configs" / "inference.json",
        lambda c: c["network_def"].update(in_channels="@_meta_::channels"),
    )
    return root, marker, "configs/metadata.json, key channels"


def macro_from_another_file(tmp: Path) -> tuple[Path, Path, str]:
    """Route 2: a ``%`` macro pulling a ``$`` expression in from a file outside the bundle."""
    root, marker = demo_bundle(tmp / "macro_route"), tmp / "macro_route.marker"
    outside = tmp / "shared_settings.json"
    outside.write_text(json.dumps({"channels": touch_expression(marker)}))
    edit_json(
        root / "configs" / "inference.json",
        lambda c: c["network_def"].update(in_channels=f"%{outside}::channels"),
    )
    return root, marker, f"{outside}, key channels"


def nested_target(tmp: Path) -> tuple[Path, Path, str]:
    """Route 3: a ``_target_`` nested inside an allowed one (the activation's, in network_def)."""
    root, marker = demo_bundle(tmp / "nested_route"), tmp / "nested_route.marker"
    call = {"_target_": "subprocess.call", "args": touch_command(marker)}  # returns 0
    edit_json(
        root / "configs" / "inference.json",
        lambda c: c["network_def"].update(act=["relu", {"inplace": call}]),
    )
    return root, marker, "configs/inference.json, key network_def::act::1::inplace::_target_"


def nnunet_network_class(folder: Path, tmp: Path) -> tuple[Path, Path, str]:
    """Route 4: plans.json's network_class_name names an importable callable that loads code
    from a path (torch.hub.load runs the folder's hubconf.py, which returns a real network)."""
    copy, marker = nnunet_copy(folder, tmp / "nnunet_route"), tmp / "nnunet_route.marker"

    def change(architecture: dict) -> None:
        network = architecture["network_class_name"]
        architecture["network_class_name"] = "torch.hub.load"
        architecture["arch_kwargs"].update(repo_or_dir=str(copy), model="net", source="local")
        write_hubconf(copy, marker, network)

    edit_architecture(copy, change)
    key = "plans.json, key configurations::3d_fullres::architecture::network_class_name"
    return copy, marker, key


def nnunet_copy(folder: Path, target: Path) -> Path:
    return Path(shutil.copytree(folder, target))


def edit_architecture(
    folder: Path, change: Callable[[dict], None], name: str = "3d_fullres"
) -> None:
    edit_json(folder / "plans.json", lambda p: change(p["configurations"][name]["architecture"]))


# --- folders and inputs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nnunet_folder(tmp_path_factory) -> Path:
    pytest.importorskip("nnunetv2")
    from TorchEsegetaLib.models.nnunet.example import build_model_folder, vessel_cases

    return build_model_folder(
        tmp_path_factory.mktemp("nnunet"),
        vessel_cases(3, (10, 16, 18), (2.0, 0.7, 0.6)),
        folds=(0,),
        base_features=2,
        max_features=8,
    )


def image_file(path: Path, shape=(16, 16, 16), spacing=(1.0, 1.0, 1.0)) -> Path:
    from TorchEsegetaLib.models.demo.synthetic import make_vessel_volume

    image, _ = make_vessel_volume(shape, 3)
    return write_volume(image, Geometry(size=shape, spacing=spacing), path)


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
def routes(tmp_path_factory, nnunet_folder):
    """Each route's folder refused by a real `torchesegeta explain` process (all at once)."""
    tmp = tmp_path_factory.mktemp("routes")
    bundle_image = image_file(tmp / "image.nii.gz")
    nnunet_image = image_file(tmp / "nnunet_image.nii.gz", (12, 14, 18), (2.3, 0.75, 0.62))
    made = {
        "metadata": (*metadata_expression(tmp), bundle_image),
        "macro": (*macro_from_another_file(tmp), bundle_image),
        "nested": (*nested_target(tmp), bundle_image),
        "nnunet": (*nnunet_network_class(nnunet_folder, tmp), nnunet_image),
    }
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
