"""MONAI bundles: the network, its weights, and a model card read from the bundle's configs.

The bundle's ``preprocessing`` and ``inferer`` are translated into the card (target spacing,
intensity preprocessing, sliding-window settings); steps the engine does not apply are listed in
``card.ignored_preprocessing`` and reported as warnings.

A bundle's config is code: its ``$`` expressions are Python that MONAI's parser evaluates. So a
bundle whose config holds expressions is loaded only when the reference says it is trusted
(``"trust": true``, ``--trust-bundle`` on the command line); weights are still read with
``weights_only=True``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserInputError
from .model_files import (
    existing_path,
    jit_load,
    load_state_dict_file,
    network_size_divisible,
    sha256_file,
)


def config_expressions(config_file: Path) -> list[str]:
    """The ``$`` expressions of a bundle config (JSON or YAML), which loading would execute."""
    text = config_file.read_text(encoding="utf-8")
    if config_file.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str) and value.startswith("$"):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(data)
    return found


def load_bundle(ref: dict) -> tuple[torch.nn.Module, dict, dict, str | None]:
    from monai.bundle import ConfigParser

    root = existing_path(ref.get("path"), "bundle folder")
    configs = [root / "configs" / f"inference.{ext}" for ext in ("json", "yaml", "yml")]
    config_file = next((c for c in configs if c.is_file()), None)
    if not root.is_dir() or config_file is None:
        raise UserInputError(
            f"{root} is not a MONAI bundle: configs/inference.json (or .yaml) is missing; "
            "give the bundle's top folder"
        )
    expressions = config_expressions(config_file)
    if expressions and not ref.get("trust"):
        raise UserInputError(
            f"bundle {root.name}'s config holds {len(expressions)} Python expression(s) (e.g. "
            f"{expressions[0][:60]!r}) that loading would execute; if you trust the bundle's "
            'source, pass --trust-bundle (in a job: "trust": true in the model reference)'
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
        network = jit_load(weights)
        source["network"] = "torchscript"
    else:
        raise UserInputError(
            f"bundle {root} has no weights: put models/model.pt (state dict) or models/model.ts there"
        )
    source["weights"] = str(weights)
    defaults = _bundle_card(parser, metadata)
    defaults.setdefault("name", root.name)
    return network, defaults, source, sha256_file(weights)


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
        card["size_divisible"] = network_size_divisible(
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
