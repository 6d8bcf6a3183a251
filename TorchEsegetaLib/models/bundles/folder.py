"""MONAI bundles: the network, its weights, and a model card read from the bundle's configs.

The bundle's ``preprocessing``, ``inferer`` and ``postprocessing`` become the card
(:mod:`.config`), so that the segmentation equals MONAI's own bundle inference and the
explanations explain exactly that function.

A bundle's config is code: its ``$`` expressions are Python that MONAI's parser evaluates, and a
``_target_`` names something it calls. So before anything is parsed, :mod:`.analysis` builds the
config as MONAI would (metadata, macros to any file) and holds every part of it against the
allow-list; a bundle with anything else loads only when the reference says it is trusted
(``"trust": true``, ``--trust-model`` on the command line), and is then parsed by MONAI from its
files as MONAI's own run parses it. An untrusted bundle's parser gets the analysed config, so
what runs is what was checked. Weights are always read with ``weights_only=True``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from ...errors import UserInputError
from ..files import (
    existing_path,
    jit_load,
    load_state_dict_file,
    network_size_divisible,
    sha256_file,
)
from ..trust import require_consent
from . import config as bundle_config
from .analysis import analyse_bundle, read_config_file, read_metadata


def load_bundle(ref: dict) -> tuple[torch.nn.Module, dict, dict, str | None]:
    from monai.bundle import ConfigParser

    root = existing_path(ref.get("path"), "bundle folder")
    configs = [root / "configs" / f"inference.{ext}" for ext in ("json", "yaml", "yml")]
    config_file = next((c for c in configs if c.exists()), None)
    if not root.is_dir() or config_file is None:
        from ..loading import describe_folder

        what = describe_folder(root) if root.is_dir() else "a file, not a MONAI bundle folder"
        raise UserInputError(f"{root} is {what}")
    trusted = bool(ref.get("trust"))
    metadata_files = [
        p for p in (root / "metadata.json", root / "configs" / "metadata.json") if p.exists()
    ]
    if trusted:  # MONAI's own parsing of the files, macros and all
        metadata, _ = read_metadata(root, metadata_files)
        parser = ConfigParser()
        parser.read_meta(metadata)  # configs may refer to @_meta_::network_data_format...
        parser.read_config(read_config_file(config_file, root))
        parser.set(str(root), "bundle_root")
    else:
        analysis = analyse_bundle(root, config_file, metadata_files)
        require_consent(f"bundle {root.name}", analysis.findings, trusted)
        parser = ConfigParser(analysis.config)  # already resolved: no file is read again
        metadata = analysis.metadata
    source: dict[str, Any] = {"kind": "bundle", "path": str(root), "config": str(config_file)}
    if trusted:
        source["trust"] = True
    weights = root / "models" / "model.pt"
    if weights.is_file():
        network = _bundle_network(parser, root, trusted)
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
    warnings: list[str] = []
    defaults = bundle_card(parser, metadata, warnings)
    defaults.setdefault("name", root.name)
    if warnings:
        source["warnings"] = warnings
    return network, defaults, source, sha256_file(weights)


def bundle_card(parser: Any, metadata: dict, warnings: list[str]) -> dict:
    """Card entries from a bundle: metadata, preprocessing, inferer, postprocessing."""
    card: dict[str, Any] = {"ignored_preprocessing": []}
    formats = metadata.get("network_data_format", {})
    image = _first(formats.get("inputs", {}), "image")
    pred = _first(formats.get("outputs", {}), "pred")
    for key in ("in_channels", "out_channels"):
        value = bundle_config.arg_or_none(parser, "network_def", key)
        if isinstance(value, int):
            card[key] = value
    if "num_channels" in image:
        card["in_channels"] = int(image["num_channels"])
    if "num_channels" in pred:
        card["out_channels"] = int(pred["num_channels"])
    names = pred.get("channel_def") or {}
    if len(names) == card.get("out_channels", -1):
        card["class_names"] = [str(names[k]) for k in sorted(names, key=int)]
    if metadata.get("name"):
        card["name"] = str(metadata["name"])
    probabilities = str(pred.get("type", "")).lower() == "probabilities"
    bundle_config.postprocessing_steps(parser, card, warnings, probabilities)
    bundle_config.preprocessing_steps(parser, card)
    bundle_config.inferer_settings(parser, card)
    if card.get("roi_size", "whole") is not None:
        return card  # sliding windows: the windows have the network's size, as in MONAI
    network_def = parser.get("network_def")
    if "size_divisible" not in card and isinstance(network_def, dict):
        args = {
            k: bundle_config.arg_or_none(parser, "network_def", k)
            for k in ("strides", "blocks_down")
        }
        name = str(network_def.get("_target_", "")).split(".")[-1]
        card["size_divisible"] = network_size_divisible(
            name, {k: v for k, v in args.items() if v is not None}
        )
    card.setdefault("size_divisible", None)  # unknown: measured on the network (models.py)
    return card


def _bundle_network(parser: Any, root: Path, trusted: bool) -> torch.nn.Module:
    if "network_def" not in parser:
        raise UserInputError(
            f"bundle {root} has models/model.pt but its inference config defines no network_def; "
            "add network_def or provide models/model.ts"
        )
    definition = parser.get("network_def")
    if not isinstance(definition, dict):
        raise UserInputError(
            f"bundle {root.name}'s network_def is {str(definition)[:60]!r}, not a component "
            "(an object with _target_ and the network's arguments), so it is not read; write the "
            "network's _target_ and arguments into network_def, or provide models/model.ts"
        )
    if trusted:
        sys.path.insert(0, str(root))  # network_def may name a class in the bundle's scripts/
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as error:
        raise UserInputError(
            f"cannot build the network_def of bundle {root} ({error}); fix its configs/inference file"
        ) from error
    finally:
        if trusted:
            sys.path.remove(str(root))
    if not isinstance(network, torch.nn.Module):
        raise UserInputError(
            f"network_def of bundle {root} is not a torch.nn.Module; fix the config"
        )
    return network


def _first(entries: dict, preferred: str) -> dict:
    if preferred in entries:
        return entries[preferred]
    return next(iter(entries.values()), {}) if entries else {}
