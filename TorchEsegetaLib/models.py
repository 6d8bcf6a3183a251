"""Loading segmentation models: the demo, a MONAI network + state dict, TorchScript, a MONAI bundle.

A model reference is a small JSON-able dict (what a Job holds):

* ``{"kind": "demo"}``
* ``{"kind": "monai", "network": "UNet", "kwargs": {...}, "checkpoint": "model.pt" | null}``
* ``{"kind": "torchscript", "path": "model.ts"}``
* ``{"kind": "bundle", "path": "bundle_folder"}``

Weights are read with ``torch.load(weights_only=True)`` only: unpickling arbitrary objects can
run arbitrary code, so whole pickled models are refused with instructions to export a state
dict or TorchScript. A bundle's config, on the other hand, is code by design (``$``
expressions): such a bundle loads only when its reference says ``"trust": true``
(:mod:`TorchEsegetaLib.bundles`).
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .card import ModelCard
from .errors import UserInputError

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "network")
_REF_KEYS = {
    "demo": {"kind"},
    "monai": {"kind", "network", "kwargs", "checkpoint"},
    "torchscript": {"kind", "path"},
    "bundle": {"kind", "path", "trust"},
}


@dataclass
class LoadedModel:
    """A network ready to run, with its card and where it came from.

    Attributes:
        network: in eval mode, on the CPU; requires_grad of its parameters left as loaded.
        card: the model card (the user's overrides already applied).
        source: JSON-serialisable description (kind, paths, network name, kwargs, warnings).
        sha256: of the weight file (checkpoint, TorchScript or bundle model file); None without one.
    """

    network: torch.nn.Module
    card: ModelCard
    source: dict
    sha256: str | None

    def record(self) -> dict:
        """What run.json keeps of the model: its source, weight hash and card."""
        return {"source": self.source, "sha256": self.sha256, "card": self.card.to_dict()}


def load_model(ref: dict, card: dict | ModelCard | None = None) -> LoadedModel:
    """Load the model a reference describes; ``card`` entries override what the model says."""
    if not isinstance(ref, Mapping) or ref.get("kind") not in _REF_KEYS:
        raise UserInputError(
            f"model reference {ref!r} needs a 'kind' among {sorted(_REF_KEYS)}; "
            'e.g. {"kind": "demo"} or {"kind": "torchscript", "path": "model.ts"}'
        )
    unknown = sorted(set(ref) - _REF_KEYS[ref["kind"]])
    if unknown:
        raise UserInputError(
            f"unknown key(s) {unknown} in the {ref['kind']} model reference; "
            f"allowed keys are {sorted(_REF_KEYS[ref['kind']])}"
        )
    loaders = {
        "demo": _load_demo,
        "monai": _load_monai,
        "torchscript": _load_torchscript,
        "bundle": _load_bundle,
    }
    network, card_defaults, source, sha = loaders[ref["kind"]](ref)
    if isinstance(card, ModelCard):
        card = card.to_dict()
    return LoadedModel(network.eval().cpu(), _make_card(card_defaults, card), source, sha)


def model_ref_from_string(
    text: str, network: str | None = None, network_kwargs: dict | None = None
) -> dict:
    """The model reference for a command-line value: 'demo', a bundle folder or a weight file."""
    if text.strip().lower() == "demo":
        return {"kind": "demo"}
    path = Path(text).expanduser()
    if not path.exists():
        raise UserInputError(
            f"model {text!r} does not exist; give 'demo', a MONAI bundle folder, a TorchScript "
            "file, or a state_dict checkpoint together with --network NAME"
        )
    if path.is_dir():
        if network:
            raise UserInputError(
                f"{text} is a bundle folder, which defines its own network; drop --network {network}"
            )
        return {"kind": "bundle", "path": str(path)}
    if network:
        return {
            "kind": "monai",
            "network": network,
            "kwargs": dict(network_kwargs or {}),
            "checkpoint": str(path),
        }
    if is_torchscript_file(path):
        return {"kind": "torchscript", "path": str(path)}
    raise UserInputError(
        f"{text} is not a TorchScript file; for a state_dict checkpoint also give "
        "--network NAME and --network-kwargs JSON"
    )


def monai_network_class(name: str) -> type[torch.nn.Module]:
    """The class ``name`` (case-insensitive) of ``monai.networks.nets``."""
    import monai.networks.nets as nets

    classes = {
        attr: obj
        for attr, obj in sorted(vars(nets).items())
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module)
    }
    if name in classes:
        return classes[name]
    matches = [obj for attr, obj in classes.items() if attr.lower() == str(name).lower()]
    if matches:
        return matches[0]
    by_lower = {attr.lower(): attr for attr in classes}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(by_lower[c] for c in close)}?" if close else ""
    raise UserInputError(
        f"unknown MONAI network {name!r}; use a class name of monai.networks.nets "
        f"(e.g. UNet, BasicUNet, SegResNet, SwinUNETR) {hint}".strip()
    )


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
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the four kinds ---------------------------------------------------------------------------


def _load_demo(ref: dict) -> tuple[torch.nn.Module, dict, dict, str | None]:
    from .demo import DEMO_NETWORK, DEMO_NETWORK_KWARGS, demo_card, demo_weights_path

    path = _existing(demo_weights_path(), "demo weights")
    network = _build_network(monai_network_class(DEMO_NETWORK), dict(DEMO_NETWORK_KWARGS))
    load_state_dict_file(network, path)
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_NETWORK_KWARGS.items()}
    source = {"kind": "demo", "network": DEMO_NETWORK, "kwargs": kwargs, "checkpoint": str(path)}
    return network, demo_card().to_dict(), source, sha256_file(path)


def _load_monai(ref: dict) -> tuple[torch.nn.Module, dict, dict, str | None]:
    if not ref.get("network"):
        raise UserInputError(
            "a monai model reference needs 'network': a monai.networks.nets class name"
        )
    if "checkpoint" not in ref:
        raise UserInputError(
            "a monai model reference needs 'checkpoint': the state_dict file, or null to run "
            "with random weights on purpose"
        )
    kwargs = ref.get("kwargs") or {}
    network_class = monai_network_class(ref["network"])
    network = _build_network(network_class, kwargs)
    source: dict[str, Any] = {
        "kind": "monai",
        "network": network_class.__name__,
        "kwargs": kwargs,
        "checkpoint": None,
    }
    sha = None
    if ref["checkpoint"] is None:
        source["warnings"] = ["no checkpoint: the network has random weights"]
    else:
        path = _existing(ref["checkpoint"], "checkpoint")
        load_state_dict_file(network, path)
        source["checkpoint"], sha = str(path), sha256_file(path)
    defaults = {k: kwargs[k] for k in ("in_channels", "out_channels") if k in kwargs}
    defaults["name"] = network_class.__name__
    defaults["size_divisible"] = _size_divisible(network_class.__name__, kwargs)
    return network, defaults, source, sha


def _load_torchscript(ref: dict) -> tuple[torch.nn.Module, dict, dict, str | None]:
    path = _existing(ref.get("path"), "TorchScript file")
    network = _jit_load(path)
    source = {"kind": "torchscript", "path": str(path)}
    return network, {"name": path.stem}, source, sha256_file(path)


# --- helpers ----------------------------------------------------------------------------------


def _make_card(defaults: dict, overrides: dict | None) -> ModelCard:
    data = dict(defaults)
    overrides = dict(overrides or {})
    if {"out_channels", "activation"} & set(overrides) and "class_names" not in overrides:
        data.pop("class_names", None)  # names derived for another channel count or activation
    data.update(overrides)
    return ModelCard.from_dict(data)


def _existing(path: Any, what: str) -> Path:
    if not path:
        raise UserInputError(f"the model reference names no {what}; add its path")
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise UserInputError(f"{what} {path} does not exist; check the path")
    return resolved


def _build_network(network_class: type, kwargs: Any) -> torch.nn.Module:
    if not isinstance(kwargs, Mapping):
        raise UserInputError(f"network kwargs must be a JSON object, not {kwargs!r}")
    try:
        return network_class(**kwargs)
    except Exception as error:
        accepted = [p for p in inspect.signature(network_class.__init__).parameters if p != "self"]
        raise UserInputError(
            f"cannot build {network_class.__name__} from kwargs {dict(kwargs)} ({error}); "
            f"fix the network kwargs (accepted: {', '.join(accepted)})"
        ) from error


def _size_divisible(name: str, kwargs: Mapping) -> int:
    """What the network's down-sampling needs of the input size (1 when unknown)."""
    if name in ("UNet", "AttentionUnet", "DynUNet") and "strides" in kwargs:
        return int(np.prod([np.max(s) for s in kwargs["strides"]]))
    if name == "SegResNet":
        return 2 ** (len(kwargs.get("blocks_down", (1, 2, 2, 4))) - 1)
    return {"BasicUNet": 16, "BasicUNetPlusPlus": 16, "SwinUNETR": 32}.get(name, 1)


def _torch_load_weights(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only load failed" not in str(error).lower():
            raise UserInputError(
                f"{path} is not a PyTorch checkpoint ({error}); check the file"
            ) from error
        raise UserInputError(
            f"{path} holds pickled Python objects (e.g. a whole model saved with torch.save(model)), "
            "which are not loaded for safety (torch.load weights_only=True refused them); export "
            "torch.save(model.state_dict(), 'model.pt') or torch.jit.script(model).save('model.ts')"
        ) from error
    except Exception as error:
        raise UserInputError(
            f"{path} is not a readable PyTorch checkpoint ({error}); check the file"
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


def _jit_load(path: Path) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still works
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            raise UserInputError(
                f"{path} is not a TorchScript file ({str(error).splitlines()[0]}); export one with "
                "torch.jit.script(model).save(path), or load a state dict with --network"
            ) from error


def _load_bundle(ref: dict) -> tuple[torch.nn.Module, dict, dict, str | None]:
    from .bundles import load_bundle

    return load_bundle(ref)
