"""The demo network as the other kinds of model: a TorchScript file and a MONAI bundle.

``python -m TorchEsegetaLib.models.demo.export --torchscript demo.ts --bundle demo_bundle/`` writes
them from the committed demo weights, with nothing downloaded, so the examples of the README and
docs/models.md for those kinds of model run anywhere. The bundle is laid out as MONAI's model zoo lays bundles out
(``configs/inference.json``, ``configs/metadata.json``, ``models/model.ts`` or
``models/model.pt``), with the preprocessing the demo network was trained with written as
MONAI transforms.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import DEMO_NETWORK, DEMO_NETWORK_KWARGS, DEMO_SPACING, build_demo_network

#: The demo network's preprocessing as a bundle writes it: the orientation and spacing of its
#: training volumes (LPS axes, 0.6 x 0.6 x 0.8 mm), per-channel z-scoring, padding to the
#: multiple of 4 its two down-samplings need.
PREPROCESSING = [
    {"_target_": "LoadImaged", "keys": "image"},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "LPS"},
    {"_target_": "Spacingd", "keys": "image", "pixdim": list(DEMO_SPACING), "mode": "bilinear"},
    {"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True},
    {"_target_": "DivisiblePadd", "keys": "image", "k": 4},
    {"_target_": "EnsureTyped", "keys": "image"},
]
POSTPROCESSING = [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {
        "_target_": "Invertd",
        "keys": "pred",
        "transform": "@preprocessing",
        "orig_keys": "image",
        "nearest_interp": False,
    },
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
]


def write_torchscript(path: Path) -> Path:
    """The demo network, scripted, at ``path``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(build_demo_network()).save(str(path))
    return path


def write_bundle(
    folder: Path,
    form: str = "ts",
    preprocessing: list[dict[str, Any]] | None = None,
    inferer: dict[str, Any] | None = None,
) -> Path:
    """A MONAI bundle of the demo network in ``folder``: weights as TorchScript (``form``
    "ts") or as ``network_def`` + state dict ("pt"); ``preprocessing`` and ``inferer``
    default to the demo's own."""
    import torch

    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    network = build_demo_network()
    config: dict[str, Any] = {
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing or PREPROCESSING},
        "inferer": inferer or {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": POSTPROCESSING},
    }
    if form == "pt":
        kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_NETWORK_KWARGS.items()}
        config["network_def"] = {"_target_": DEMO_NETWORK, **kwargs}
        torch.save(network.state_dict(), folder / "models" / "model.pt")
    elif form == "ts":
        torch.jit.script(network).save(str(folder / "models" / "model.ts"))
    else:
        raise ValueError(f"unknown bundle form {form!r}; use 'ts' or 'pt'")
    metadata = {
        "name": "TorchEsegeta demo vessel bundle",
        "version": "0.1.0",
        "task": "vessel segmentation of a synthetic MRA-like volume",
        "network_data_format": {
            "inputs": {
                "image": {"type": "image", "num_channels": 1, "spatial_shape": [64, 64, 64]}
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "num_channels": 2,
                    "channel_def": {"0": "background", "1": "vessel"},
                }
            },
        },
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m TorchEsegetaLib.models.demo.export",
        description="Write the demo network as a TorchScript file and/or a MONAI bundle.",
    )
    parser.add_argument("--torchscript", type=Path, help="TorchScript file to write")
    parser.add_argument("--bundle", type=Path, help="bundle folder to write")
    parser.add_argument(
        "--form",
        choices=("ts", "pt"),
        default="ts",
        help="the bundle's weights: models/model.ts, or network_def + models/model.pt",
    )
    args = parser.parse_args(argv)
    if args.torchscript is None and args.bundle is None:
        parser.error("give --torchscript FILE, --bundle FOLDER or both")
    if args.torchscript is not None:
        print(f"TorchScript file: {write_torchscript(args.torchscript)}")
    if args.bundle is not None:
        print(f"MONAI bundle: {write_bundle(args.bundle, args.form)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
