"""Model folders whose loading would run code, for the consent tests (docs/safety.md).

Each payload creates a marker file if it ever runs. The folders are built by the project's own
code: the demo's bundle export (``models.demo.export``) and, for nnU-Net, a copy of the session's
folder made by nnU-Net's own planner and trainer (``models.nnunet.example``, conftest.py).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry

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


def image_file(path: Path, shape=(16, 16, 16), spacing=(1.0, 1.0, 1.0)) -> Path:
    from TorchEsegetaLib.models.demo.synthetic import make_vessel_volume

    image, _ = make_vessel_volume(shape, 3)
    return write_volume(image, Geometry(size=shape, spacing=spacing), path)


# --- bundles --------------------------------------------------------------------------------------


def inference(root: Path) -> Path:
    return root / "configs" / "inference.json"


def set_network_def(root: Path, **values) -> None:
    edit_json(inference(root), lambda c: c["network_def"].update(values))


def touch_call(marker: Path, target: str = "subprocess.call") -> dict:
    """A component whose call creates ``marker`` (subprocess.call returns 0)."""
    return {"_target_": target, "args": touch_command(marker)}


def metadata_expression(tmp: Path) -> tuple[Path, Path, str]:
    """Route 1: a ``$`` expression in metadata.json, reached through an ``@`` reference."""
    root, marker = demo_bundle(tmp / "metadata_route"), tmp / "metadata_route.marker"
    metadata = root / "configs" / "metadata.json"
    edit_json(metadata, lambda m: m.update(channels=touch_expression(marker)))
    set_network_def(root, in_channels="@_meta_::channels")
    return root, marker, "configs/metadata.json, key channels"


def macro_from_another_file(tmp: Path) -> tuple[Path, Path, str]:
    """Route 2: a ``%`` macro pulling a ``$`` expression in from a file outside the bundle."""
    root, marker = demo_bundle(tmp / "macro_route"), tmp / "macro_route.marker"
    outside = tmp / "shared_settings.json"
    outside.write_text(json.dumps({"channels": touch_expression(marker)}))
    set_network_def(root, in_channels=f"%{outside}::channels")
    return root, marker, f"{outside}, key channels"


def nested_target(tmp: Path) -> tuple[Path, Path, str]:
    """Route 3: a ``_target_`` nested inside an allowed one (the activation's, in network_def)."""
    root, marker = demo_bundle(tmp / "nested_route"), tmp / "nested_route.marker"
    set_network_def(root, act=["relu", {"inplace": touch_call(marker)}])
    return root, marker, "configs/inference.json, key network_def::act::1::inplace::_target_"


# --- nnU-Net folders ------------------------------------------------------------------------------

ARCHITECTURE_KEY = "configurations::3d_fullres::architecture"


def nnunet_copy(folder: Path, target: Path) -> Path:
    return Path(shutil.copytree(folder, target))


def edit_architecture(
    folder: Path, change: Callable[[dict], None], name: str = "3d_fullres"
) -> None:
    edit_json(folder / "plans.json", lambda p: change(p["configurations"][name]["architecture"]))


def hub_network(copy: Path, marker: Path, architecture: dict, name: str) -> None:
    """``name`` in place of the network class, with the arguments of torch.hub.load that run
    the folder's hubconf.py (which builds the original network)."""
    write_hubconf(copy, marker, architecture["network_class_name"])
    architecture["network_class_name"] = name
    architecture["arch_kwargs"].update(repo_or_dir=str(copy), model="net", source="local")


def nnunet_network_class(folder: Path, tmp: Path) -> tuple[Path, Path, str]:
    """Route 4: plans.json's network_class_name names an importable callable that loads code
    from a path (torch.hub.load runs the folder's hubconf.py, which returns a real network)."""
    copy, marker = nnunet_copy(folder, tmp / "nnunet_route"), tmp / "nnunet_route.marker"
    edit_architecture(copy, lambda a: hub_network(copy, marker, a, "torch.hub.load"))
    return copy, marker, f"plans.json, key {ARCHITECTURE_KEY}::network_class_name"
