"""Reading model files safely: state dicts, TorchScript archives, their hashes.

Shared by every kind of model (:mod:`.loading`, :mod:`.bundles`). Weights are read with
``torch.load(weights_only=True)`` only: unpickling arbitrary objects can run arbitrary code,
so whole pickled models are refused with instructions to export a state dict or TorchScript.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserInputError
from ..io.paths import refuse_special

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "network")


def existing_path(path: Any, what: str) -> Path:
    """``path`` resolved, or a clear error naming ``what`` is missing."""
    if not path:
        raise UserInputError(f"the model reference names no {what}; add its path")
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise UserInputError(f"{what} {path} does not exist; check the path")
    refuse_special(resolved, what)
    return resolved


def load_state_dict_file(network: torch.nn.Module, path: Path) -> None:
    """Load a checkpoint (plain or wrapped state dict) strictly into ``network``."""
    state = _unwrap_state_dict(_torch_load_weights(path), path)
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    if missing or unexpected or reshaped:
        problems = [
            f"{label} {items[:4]}{' ...' if len(items) > 4 else ''}"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches (checkpoint vs network)", reshaped),
            )
            if items
        ]
        raise UserInputError(
            f"checkpoint {path} does not fit the network {type(network).__name__} "
            f"({'; '.join(problems)}); give the network name and kwargs it was trained with"
        )
    network.load_state_dict(state, strict=True)


def is_torchscript_file(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with a ``code/`` folder), without running it."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in f"/{name}" for name in archive.namelist())


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file (recorded in run.json for the weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def jit_load(path: Path) -> torch.nn.Module:
    """A TorchScript file on the CPU, or a clear error when it is not one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still works
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            raise UserInputError(
                f"{path} is not a TorchScript file ({str(error).splitlines()[0]}); export one with "
                "torch.jit.script(model).save(path), or load a state dict with --network"
            ) from error


def network_size_divisible(name: str, kwargs: Mapping) -> int:
    """What the network's down-sampling needs of the input size (1 when unknown)."""
    if name in ("UNet", "AttentionUnet", "DynUNet") and "strides" in kwargs:
        return int(np.prod([np.max(s) for s in kwargs["strides"]]))
    if name == "SegResNet":
        return 2 ** (len(kwargs.get("blocks_down", (1, 2, 2, 4))) - 1)
    return {"BasicUNet": 16, "BasicUNetPlusPlus": 16, "SwinUNETR": 32}.get(name, 1)


def torch_load_weights_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, without torch's warning about a
    pickle protocol it did not write: a file it cannot read is our one-line error, not a
    warning before it (callers turn torch's errors into that line)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def _torch_load_weights(path: Path) -> Any:
    try:
        return torch_load_weights_only(path)
    except pickle.UnpicklingError as error:
        # weights_only refuses a pickled class as "Unsupported global"; random or cut bytes fail
        # on the pickle stream itself ("Unsupported operand", invalid load key, ...)
        if "unsupported global" not in str(error).lower():
            raise UserInputError(
                f"{path} is not a PyTorch checkpoint: its contents are corrupt, cut short or of "
                "another format; check the file, or download or copy it again"
            ) from error
        raise UserInputError(
            f"{path} holds pickled Python objects (e.g. a whole model saved with torch.save(model)), "
            "which are not loaded for safety (torch.load weights_only=True refused them); export "
            "torch.save(model.state_dict(), 'model.pt') or torch.jit.script(model).save('model.ts')"
        ) from error
    except Exception as error:
        raise UserInputError(
            f"{path} is not a readable PyTorch checkpoint ({error}: corrupt or cut short?); "
            "check the file, or download or copy it again"
        ) from error


def _unwrap_state_dict(obj: Any, path: Path) -> dict:
    if isinstance(obj, Mapping):
        wrapped = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if wrapped:
            obj = obj[wrapped[0]]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserInputError(
            f"{path} holds no state dict (a mapping of parameter names to tensors, possibly under "
            f"{', '.join(_WRAPPER_KEYS)}); save torch.save(model.state_dict(), path)"
        )
    if obj and all(k.startswith("module.") for k in obj):
        return {k[len("module.") :]: v for k, v in obj.items()}  # saved from DataParallel
    return dict(obj)
