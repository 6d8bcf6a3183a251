"""Loading segmentation models: the demo, a MONAI network + state dict, TorchScript, a MONAI bundle.

A model reference is a small JSON-able dict (what a Job holds):

* ``{"kind": "demo"}``
* ``{"kind": "monai", "network": "UNet", "kwargs": {...}, "checkpoint": "model.pt" | null}``
* ``{"kind": "torchscript", "path": "model.ts"}``
* ``{"kind": "bundle", "path": "bundle_folder"}``

Weights are read with ``torch.load(weights_only=True)`` only: unpickling arbitrary objects can
run arbitrary code, so whole pickled models are refused with instructions to export a state
dict or TorchScript. A bundle's config, on the other hand, is code by design (``$``
expressions): loading a bundle trusts it as MONAI itself does.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import pickle
import re
import sys
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
    "bundle": {"kind", "path"},
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


def _load_bundle(ref: dict) -> tuple[torch.nn.Module, dict, dict, str | None]:
    from monai.bundle import ConfigParser

    root = _existing(ref.get("path"), "bundle folder")
    configs = [root / "configs" / f"inference.{ext}" for ext in ("json", "yaml", "yml")]
    config_file = next((c for c in configs if c.is_file()), None)
    if not root.is_dir() or config_file is None:
        raise UserInputError(
            f"{root} is not a MONAI bundle: configs/inference.json (or .yaml) is missing; "
            "give the bundle's top folder"
        )
    metadata = _bundle_metadata(root)
    parser = ConfigParser()
    parser.read_meta(metadata)  # configs may refer to @_meta_::network_data_format...
    parser.read_config(str(config_file))
    parser.set(str(root), "bundle_root")
    source: dict[str, Any] = {"kind": "bundle", "path": str(root), "config": str(config_file)}
    weights = root / "models" / "model.pt"
    if weights.is_file():
        network = _bundle_network(parser, root)
        load_state_dict_file(network, weights)
        source["network"] = str(parser.get("network_def", {}).get("_target_", "?"))
    elif (root / "models" / "model.ts").is_file():
        weights = root / "models" / "model.ts"
        network = _jit_load(weights)
        source["network"] = "torchscript"
    else:
        raise UserInputError(
            f"bundle {root} has no weights: put models/model.pt (state dict) or models/model.ts there"
        )
    source["weights"] = str(weights)
    defaults = _bundle_card(parser, metadata)
    defaults.setdefault("name", root.name)
    return network, defaults, source, sha256_file(weights)


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


def _bundle_network(parser: Any, root: Path) -> torch.nn.Module:
    if "network_def" not in parser:
        raise UserInputError(
            f"bundle {root} has models/model.pt but its inference config defines no network_def; "
            "add network_def or provide models/model.ts"
        )
    sys.path.insert(0, str(root))  # network_def may name a class in the bundle's scripts/
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as error:
        raise UserInputError(
            f"cannot build the network_def of bundle {root} ({error}); fix its configs/inference file"
        ) from error
    finally:
        sys.path.remove(str(root))
    if not isinstance(network, torch.nn.Module):
        raise UserInputError(
            f"network_def of bundle {root} is not a torch.nn.Module; fix the config"
        )
    return network


def _bundle_metadata(root: Path) -> dict:
    metadata: dict = {}
    for path in (root / "metadata.json", root / "configs" / "metadata.json"):
        if path.is_file():
            try:
                metadata.update(json.loads(path.read_text()))
            except (OSError, ValueError) as error:
                raise UserInputError(f"cannot read {path} ({error}); fix or remove it") from error
    return metadata


def _bundle_card(parser: Any, metadata: dict) -> dict:
    """Card entries from a bundle: network_def, metadata, preprocessing, inferer, postprocessing."""
    card: dict[str, Any] = {"ignored_preprocessing": []}
    for key in ("in_channels", "out_channels"):
        value = _arg_or_none(parser, "network_def", key)
        if isinstance(value, int):
            card[key] = value
    network_def = parser.get("network_def")
    if isinstance(network_def, dict) and "_target_" in network_def:
        args = {k: _arg_or_none(parser, "network_def", k) for k in ("strides", "blocks_down")}
        name = str(network_def["_target_"]).split(".")[-1]
        card["size_divisible"] = _size_divisible(
            name, {k: v for k, v in args.items() if v is not None}
        )
    formats = metadata.get("network_data_format", {})
    image = _first(formats.get("inputs", {}), "image")
    pred = _first(formats.get("outputs", {}), "pred")
    if "num_channels" in image:
        card["in_channels"] = int(image["num_channels"])
    if "num_channels" in pred:
        card["out_channels"] = int(pred["num_channels"])
    names = pred.get("channel_def") or {}
    if len(names) == card.get("out_channels", -1):
        card["class_names"] = [str(names[k]) for k in sorted(names, key=int)]
    if metadata.get("name"):
        card["name"] = str(metadata["name"])
    for tid, name in _transforms(parser, "postprocessing"):
        if _base_name(name) == "Activations":
            for activation in ("softmax", "sigmoid"):
                if _arg_or_none(parser, tid, activation):
                    card["activation"] = activation
    for tid, name in _transforms(parser, "preprocessing"):
        _translate_transform(parser, tid, name, card)
    _translate_inferer(parser, card)
    return card


# Transforms that change nothing our reader and forward pass do not already do.
_NO_OPS = set(
    "LoadImage EnsureChannelFirst AddChannel EnsureType ToTensor CastToType ToDevice Identity ToNumpy".split()
)
_KNOWN = _NO_OPS | set(
    "Orientation Spacing DivisiblePad ScaleIntensityRange NormalizeIntensity Activations".split()
)


def _base_name(name: str) -> str:
    """The array transform's name for a dictionary transform we know ("Spacingd" -> "Spacing")."""
    return name[:-1] if name.endswith("d") and name[:-1] in _KNOWN else name


def _translate_transform(parser: Any, tid: str, name: str, card: dict) -> None:
    base = _base_name(name)
    try:
        if base in _NO_OPS:
            return
        if base == "Orientation":
            axcodes = _arg(parser, tid, "axcodes")
            card["ignored_preprocessing"].append(
                f"{name}(axcodes={axcodes}): the image keeps its own orientation"
            )
            return
        if base == "Spacing":
            pixdim = np.broadcast_to(np.asarray(_arg(parser, tid, "pixdim"), dtype=float), (3,))
            card["spacing"] = [float(p) for p in pixdim]
            return
        if base == "DivisiblePad":
            k = np.unique(np.asarray(_arg(parser, tid, "k"), dtype=int))
            if k.size == 1:
                card["size_divisible"] = int(k[0])
                return
        intensity = _intensity(parser, tid, base)
        if intensity is not None and "intensity" not in card:
            card["intensity"] = intensity
            return
        note = " (only one intensity step is applied)" if intensity is not None else ""
        card["ignored_preprocessing"].append(f"{name}{note}")
    except Exception as error:  # an argument the config cannot evaluate outside its own run
        card["ignored_preprocessing"].append(f"{name} (arguments not readable: {error})")


def _intensity(parser: Any, tid: str, name: str) -> dict | None:
    if name == "ScaleIntensityRange":
        values = {k: _arg(parser, tid, k) for k in ("a_min", "a_max", "b_min", "b_max")}
        return {"kind": "scale_range", **values, "clip": bool(_arg(parser, tid, "clip", False))}
    if name == "NormalizeIntensity":
        subtrahend, divisor = _arg(parser, tid, "subtrahend"), _arg(parser, tid, "divisor")
        if subtrahend is None and divisor is None:
            return {
                "kind": "zscore",
                "nonzero": bool(_arg(parser, tid, "nonzero", False)),
                "channel_wise": bool(_arg(parser, tid, "channel_wise", False)),
            }
        if np.isscalar(subtrahend) and np.isscalar(divisor) and not _arg(parser, tid, "nonzero"):
            # (x - s) / d is a range scaling from [s, s + d] to [0, 1] without clipping
            a_max = float(subtrahend) + float(divisor)
            return {
                "kind": "scale_range",
                "a_min": float(subtrahend),
                "a_max": a_max,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": False,
            }
    return None


def _translate_inferer(parser: Any, card: dict) -> None:
    entries = _transforms(parser, "inferer")
    if not entries:
        return
    tid, name = entries[0]
    if name == "SimpleInferer":
        card["roi_size"] = None
        return
    if name not in ("SlidingWindowInferer", "SlidingWindowInfererAdapt"):
        card["ignored_preprocessing"].append(f"inferer {name}")
        return
    try:
        roi = np.broadcast_to(np.asarray(_arg(parser, tid, "roi_size"), dtype=int), (3,))
        window = {
            "roi_size": [int(r) for r in roi],
            "overlap": float(np.max(_arg(parser, tid, "overlap", 0.25))),
            "sw_batch_size": int(_arg(parser, tid, "sw_batch_size", 1)),
            "sw_mode": str(_arg(parser, tid, "mode", "constant")),
        }
    except Exception as error:  # an argument the config cannot evaluate outside its own run
        card["ignored_preprocessing"].append(f"inferer {name} (arguments not readable: {error})")
        return
    card.update(window)


_REFERENCE = re.compile(r"@([\w:#]+)")


def _transforms(parser: Any, tid: str, depth: int = 0) -> list[tuple[str, str]]:
    """(config id, class name) of each transform under ``tid`` in the raw config.

    Follows a Compose's ``transforms``, lists, and ``@`` references (also inside ``$``
    expressions such as ``"$@pre + @post"``); never instantiates anything.
    """
    raw = parser.get(tid)
    if depth > 20 or raw is None:
        return []
    if isinstance(raw, str):
        refs = [r.replace("#", "::") for r in _REFERENCE.findall(raw)]
        if not refs:
            return [(tid, f"expression {raw[:60]!r}")]
        return [entry for ref in refs for entry in _transforms(parser, ref, depth + 1)]
    if isinstance(raw, list):
        return [e for i in range(len(raw)) for e in _transforms(parser, f"{tid}::{i}", depth + 1)]
    if (
        not isinstance(raw, dict)
        or "_target_" not in raw
        or raw.get("_disabled_") in (True, "true")
    ):
        return []
    name = str(raw["_target_"]).split(".")[-1]
    if name == "Compose":
        return _transforms(parser, f"{tid}::transforms", depth + 1)
    return [(tid, name)]


def _arg(parser: Any, tid: str, key: str, default: Any = None) -> Any:
    """An argument of a config component with its references and expressions resolved."""
    raw = parser.get(tid)
    if not isinstance(raw, dict) or key not in raw:
        return default
    value = parser.get_parsed_content(f"{tid}::{key}", instantiate=False)
    if isinstance(value, (torch.Tensor, np.ndarray, tuple)):
        value = np.asarray(value).tolist()
    return value


def _arg_or_none(parser: Any, tid: str, key: str) -> Any:
    try:
        return _arg(parser, tid, key)
    except Exception:  # evaluable only inside the bundle's own run; the card keeps its default
        return None


def _first(entries: dict, preferred: str) -> dict:
    if preferred in entries:
        return entries[preferred]
    return next(iter(entries.values()), {}) if entries else {}
