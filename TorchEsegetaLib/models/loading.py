"""Loading segmentation models: the demo, a MONAI network + state dict, TorchScript, a MONAI bundle.

A model reference is a small JSON-able dict (what a Job holds):

* ``{"kind": "demo"}``
* ``{"kind": "monai", "network": "UNet", "kwargs": {...}, "checkpoint": "model.pt" | null}``
* ``{"kind": "torchscript", "path": "model.ts"}``
* ``{"kind": "bundle", "path": "bundle_folder", "trust": false}``
* ``{"kind": "nnunet", "path": "Trainer__Plans__configuration", "trust": false,
  "folds": [0, 1] | null, "checkpoint_name": "checkpoint_final.pth", "mirroring": true,
  "tile_step_size": 0.5, "explain_fold": null}`` (:mod:`TorchEsegetaLib.models.nnunet`)

Weights are read with ``torch.load(weights_only=True)`` only: unpickling arbitrary objects can
run arbitrary code, so whole pickled models are refused with instructions to export a state
dict or TorchScript. A bundle's config and an nnU-Net folder's plans, on the other hand, name
code (``$`` expressions, ``_target_`` classes, network classes): a folder naming anything
outside the allow-list of :mod:`TorchEsegetaLib.models.trust` loads only when its reference says
``"trust": true``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..io.paths import refuse_special
from .bundles.folder import load_bundle
from .card import ModelCard
from .files import (
    existing_path,
    is_torchscript_file,
    jit_load,
    load_state_dict_file,
    network_size_divisible,
    sha256_file,
)

_REF_KEYS = {
    "demo": {"kind"},
    "monai": {"kind", "network", "kwargs", "checkpoint"},
    "torchscript": {"kind", "path"},
    "bundle": {"kind", "path", "trust"},
    "nnunet": {
        "kind",
        "path",
        "trust",
        "folds",
        "checkpoint_name",
        "mirroring",
        "tile_step_size",
        "explain_fold",
    },
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
    _denormal_weights: dict | None = field(default=None, init=False, repr=False)

    def record(self) -> dict:
        """What run.json keeps of the model: its source, weight hash, card and denormal weights."""
        return {
            "source": self.source,
            "sha256": self.sha256,
            "card": self.card.to_dict(),
            "denormal_weights": self.denormal_weights(),
        }

    def denormal_weights(self) -> dict:
        """How many weight values (parameters and buffers) are denormal floats, of how many:
        ``{"count", "values", "share"}``, counted once (see :mod:`~TorchEsegetaLib.engine.denormals`)."""
        if self._denormal_weights is None:
            from ..engine.denormals import count_denormals

            tensors = [*self.network.parameters(), *self.network.buffers()]
            count, values = count_denormals(tensors)
            share = round(count / values, 6) if values else 0.0
            self._denormal_weights = {"count": count, "values": values, "share": share}
        return self._denormal_weights


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
        "bundle": load_bundle,
        "nnunet": _load_nnunet,
    }
    network, card_defaults, source, sha = loaders[ref["kind"]](ref)
    if isinstance(card, ModelCard):
        card = card.to_dict()
    network = network.eval().cpu()
    loaded = LoadedModel(network, _make_card(card_defaults, card, network), source, sha)
    loaded.denormal_weights()  # counted as loaded (run.json; they slow CPU passes down)
    problems = loaded.card.ignored_preprocessing
    if problems and not loaded.card.allow_unapplied_preprocessing:
        raise UserInputError(
            f"{loaded.card.name}: the network would not see the input its own pipeline gives it, "
            f"because TorchEsegeta cannot apply {'; '.join(problems)}; replace these steps in the "
            "card (--card), or run anyway with --allow-unapplied-preprocessing"
        )
    return loaded


def model_ref_from_string(
    text: str, network: str | None = None, network_kwargs: dict | None = None
) -> dict:
    """The model reference for a command-line value: 'demo', a bundle folder or a weight file."""
    if network_kwargs and not network:
        raise UserInputError(
            "--network-kwargs are the arguments of --network; give --network NAME too (a state-"
            "dict checkpoint), or drop them"
        )
    if text.strip().lower() == "demo":
        if network:
            raise UserInputError(
                f"--network {network} is for a state-dict checkpoint given with --model FILE; "
                "the demo model defines its own network: drop --network or give --model"
            )
        return {"kind": "demo"}
    path = Path(text).expanduser()
    if not path.exists():
        raise UserInputError(
            f"model {text!r} does not exist; give 'demo', a MONAI bundle folder, an nnU-Net "
            "model folder, a TorchScript file, or a state_dict checkpoint together with --network NAME"
        )
    refuse_special(path, "model file")
    if path.is_dir():
        from .nnunet import is_nnunet_folder

        # anything else is given as a bundle: loading it says what the folder looks like
        kind = "nnunet" if is_nnunet_folder(path) else "bundle"
        if network:
            raise UserInputError(
                f"{text} is {'an nnU-Net' if kind == 'nnunet' else 'a bundle'} folder, which "
                f"defines its own network; drop --network {network}"
            )
        return {"kind": kind, "path": str(path)}
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


def describe_folder(folder: Path) -> str:
    """What a folder looks like when it is not the model folder it was given as, and what to
    give instead (the end of a sentence starting "FOLDER is ...")."""
    from .nnunet import is_nnunet_folder

    if is_nnunet_folder(folder):
        return 'an nnU-Net v2 model folder, not a MONAI bundle: give it as "kind": "nnunet"'
    if _is_bundle_folder(folder):
        return 'a MONAI bundle, not an nnU-Net v2 model folder: give it as "kind": "bundle"'
    nnunet_files = ("dataset.json", "plans.json")
    present = [name for name in nnunet_files if (folder / name).is_file()]
    folds = any(p.is_dir() for p in folder.glob("fold_*"))
    if present or folds:
        missing = [name for name in nnunet_files if name not in present]
        missing += [] if folds else ["a fold_N/ folder with its checkpoint"]
        return (
            f"an incomplete nnU-Net v2 model folder: it lacks {' and '.join(missing)}; copy the "
            "whole Trainer__Plans__configuration folder that nnU-Net's training wrote"
        )
    if (folder / "configs").is_dir() or (folder / "models").is_dir():
        return (
            "an incomplete MONAI bundle: configs/inference.json (or .yaml) is missing; give the "
            "bundle's top folder, as downloaded"
        )
    if (folder / "run.json").is_file():
        return "a TorchEsegeta run folder, not a model; give the model the run was made with"
    from ..io.images import SUPPORTED_SUFFIXES

    names = sorted(p.name for p in folder.iterdir())
    if any(name.lower().endswith((*SUPPORTED_SUFFIXES, ".dcm")) for name in names):
        return (
            "a folder of images, not a model; give images with --image and the model with --model"
        )
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "nothing"
    return (
        f"neither a MONAI bundle (configs/inference.json) nor an nnU-Net v2 model folder "
        f"(dataset.json, plans.json, fold_N/); it holds {shown}: give a model folder, a "
        "TorchScript file or a checkpoint with --network"
    )


def _is_bundle_folder(folder: Path) -> bool:
    return any(
        (folder / "configs" / f"inference.{ext}").is_file() for ext in ("json", "yaml", "yml")
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


# --- the four kinds ---------------------------------------------------------------------------


def _load_demo(ref: dict) -> tuple[torch.nn.Module, dict, dict, str | None]:
    from .demo import DEMO_NETWORK, DEMO_NETWORK_KWARGS, demo_card, demo_weights_path

    path = existing_path(demo_weights_path(), "demo weights")
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
        path = existing_path(ref["checkpoint"], "checkpoint")
        load_state_dict_file(network, path)
        source["checkpoint"], sha = str(path), sha256_file(path)
    defaults = {k: kwargs[k] for k in ("in_channels", "out_channels") if k in kwargs}
    defaults["name"] = network_class.__name__
    defaults["size_divisible"] = network_size_divisible(network_class.__name__, kwargs)
    return network, defaults, source, sha


def _load_torchscript(ref: dict) -> tuple[torch.nn.Module, dict, dict, str | None]:
    path = existing_path(ref.get("path"), "TorchScript file")
    network = jit_load(path)
    source = {"kind": "torchscript", "path": str(path)}
    # size_divisible None: measured on the network once the card says its input channels
    return network, {"name": path.stem, "size_divisible": None}, source, sha256_file(path)


# --- helpers ----------------------------------------------------------------------------------


def _make_card(defaults: dict, overrides: dict | None, network: torch.nn.Module) -> ModelCard:
    data = dict(defaults)
    overrides = dict(overrides or {})
    if {"out_channels", "activation"} & set(overrides) and "class_names" not in overrides:
        data.pop("class_names", None)  # names derived for another channel count or activation
    data.update(overrides)
    if data.get("size_divisible", 1) is None:
        whole = data.get("roi_size") is None
        data["size_divisible"] = (
            probe_size_divisible(network, int(data.get("in_channels", 1))) if whole else 1
        )
    return ModelCard.from_dict(data)


def probe_size_divisible(network: torch.nn.Module, in_channels: int, largest: int = 32) -> int:
    """The smallest power of two ``k`` such that the network maps a cube of side ``3 k`` onto
    an output of the same size (what its down-sampling needs of the input), found by running
    it on such cubes; 1 when no cube up to ``3 * largest`` works (the first real input then
    says what is wrong)."""
    k = 1
    while k <= largest:
        x = torch.zeros((1, in_channels, 3 * k, 3 * k, 3 * k))
        try:
            with torch.no_grad():
                out = network(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            if tuple(out.shape[2:]) == tuple(x.shape[2:]):
                return k
        except Exception:  # a size it cannot take (TorchScript raises its own error types)
            pass
        k *= 2
    return 1


def _build_network(network_class: type, kwargs: Any) -> torch.nn.Module:
    if not isinstance(kwargs, Mapping):
        raise UserInputError(f"network kwargs must be a JSON object, not {kwargs!r}")
    try:
        return network_class(**kwargs)
    except Exception as error:
        accepted = [p for p in inspect.signature(network_class).parameters if p != "self"]
        raise UserInputError(
            f"cannot build {network_class.__name__} from kwargs {dict(kwargs)} ({error}); "
            f"fix the network kwargs (accepted: {', '.join(accepted)})"
        ) from error


def _load_nnunet(ref: dict) -> tuple[torch.nn.Module, dict, dict, str | None]:
    from .nnunet.folder import load_nnunet

    return load_nnunet(ref)
