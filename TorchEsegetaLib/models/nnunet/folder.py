"""Loading an nnU-Net v2 trained-model folder (``Trainer__Plans__configuration``).

The folder holds ``dataset.json``, ``plans.json`` and one ``fold_N/`` per trained fold with
``checkpoint_final.pth`` (and ``checkpoint_best.pth``). The networks are built by nnU-Net's own
code exactly as ``nnUNetPredictor.initialize_from_trained_model_folder`` builds them (the
trainer class the checkpoint names, its ``build_network_architecture``), so architectures nnU-Net
knows are supported as they are.

How loading differs from nnU-Net's: nnU-Net unpickles checkpoints with
``torch.load(weights_only=False)``, which can run arbitrary code from the file. Here they are
read with ``weights_only=True``; the only non-tensor types allowed besides PyTorch's defaults are
numpy scalars and dtypes (nnU-Net stores its training log and best EMA Dice as numpy floats), so
a checkpoint holding any other pickled object is refused. Of a checkpoint we use
``network_weights`` (the state dict), ``trainer_name``, ``init_args["configuration"]`` and
``inference_allowed_mirroring_axes``; the optimizer state, grad scaler and training log are
loaded but ignored.

The plans name code: nnU-Net imports and calls the classes they name. Before anything is built,
:mod:`.analysis` holds those names against nnU-Net's own classes; a folder naming anything else
loads only with consent (``"trust": true`` in the reference, ``--trust-model``).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import UserInputError
from ..files import torch_load_weights_only
from ..trust import require_consent
from . import CHECKPOINTS, require_nnunetv2
from .analysis import analyse_plans, trainer_class
from .pipeline import NnUNetPipeline, Plan


def load_nnunet(ref: dict) -> tuple[torch.nn.Module, dict, dict, str]:
    """The model a ``{"kind": "nnunet", "path", "folds", "checkpoint_name", ...}`` reference names:
    (pipeline module, card defaults, source record, sha256 of plans + dataset.json + checkpoints)."""
    folder = Path(ref.get("path") or "").expanduser().resolve()
    if not (folder / "plans.json").is_file() or not (folder / "dataset.json").is_file():
        from ..loading import describe_folder

        raise UserInputError(f"{folder} is {describe_folder(folder)}")
    checkpoint_name = ref.get("checkpoint_name") or CHECKPOINTS[0]
    if checkpoint_name not in CHECKPOINTS:
        raise UserInputError(
            f"unknown nnU-Net checkpoint {checkpoint_name!r}; use one of {', '.join(CHECKPOINTS)}"
        )
    folds = _folds(folder, ref.get("folds"), checkpoint_name)
    require_nnunetv2()
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json, plans = _json(folder / "dataset.json"), _json(folder / "plans.json")
    _check_labels(dataset_json, folder / "dataset.json")
    paths = [folder / f"fold_{fold}" / checkpoint_name for fold in folds]
    checkpoints = [load_checkpoint(path) for path in paths]
    first = checkpoints[0]
    try:
        trainer_name = str(first["trainer_name"])
        configuration = str(first["init_args"]["configuration"])
    except (KeyError, TypeError) as error:
        raise UserInputError(
            f"{paths[0]} is not an nnU-Net v2 checkpoint (no trainer_name / init_args); check the file"
        ) from error
    for path, checkpoint in zip(paths[1:], checkpoints[1:]):
        other = (
            checkpoint.get("trainer_name"),
            checkpoint.get("init_args", {}).get("configuration"),
        )
        if other != (trainer_name, configuration):
            raise UserInputError(
                f"{path} was trained as {other}, fold {folds[0]} as {(trainer_name, configuration)}; "
                "give folds of one model"
            )
    require_consent(f"nnU-Net folder {folder.name}", analyse_plans(plans), bool(ref.get("trust")))
    trainer = trainer_class(trainer_name)
    manager = PlansManager(plans)
    try:
        config = manager.get_configuration(configuration)
    except Exception as error:
        raise UserInputError(
            f"plans.json has no configuration {configuration!r} (the checkpoint's); check the folder"
        ) from error
    if config.previous_stage_name is not None:
        raise UserInputError(
            f"{folder.name} is a cascade stage (it needs the segmentation of {config.previous_stage_name}); "
            "cascades are not supported: use a 3d_fullres, 3d_lowres or 2d model"
        )
    labels = manager.get_label_manager(dataset_json)
    if labels.has_regions:
        raise UserInputError(
            f"{folder.name} is trained on regions (overlapping labels); region-based nnU-Net models "
            "are not supported yet: use a model trained on plain labels"
        )
    in_channels = determine_num_input_channels(manager, config, dataset_json)
    out_channels = labels.num_segmentation_heads
    networks = [
        _build_network(trainer, manager, config, in_channels, out_channels, c, p)
        for c, p in zip(checkpoints, paths)
    ]
    explain_fold = ref.get("explain_fold")
    if explain_fold is not None and explain_fold not in folds:
        raise UserInputError(
            f"explain_fold {explain_fold} is not among the folds used ({_fold_list(folds)}); pick one of them"
        )
    mirror_axes = (
        first.get("inference_allowed_mirroring_axes") if ref.get("mirroring", True) else None
    )
    pipeline = NnUNetPipeline(
        networks,
        _plan(manager, config, labels.has_regions),
        tuple(mirror_axes) if mirror_axes else None,
        tile_step_size=float(ref.get("tile_step_size", 0.5)),
        explain_fold=None if explain_fold is None else folds.index(explain_fold),
    )
    names = {int(v): str(k) for k, v in dataset_json["labels"].items() if k != "ignore"}
    card = {
        "name": f"nnU-Net {manager.dataset_name} {configuration}",
        "in_channels": in_channels,
        "out_channels": out_channels,
        "class_names": [names.get(label, f"label {label}") for label in labels.all_labels],
        "activation": "softmax",
    }
    digests = {str(p.relative_to(folder)): _sha256(p) for p in paths}
    source = {
        "kind": "nnunet",
        "path": str(folder),
        "folds": folds,
        "checkpoint_name": checkpoint_name,
        "trainer": trainer_name,
        "configuration": configuration,
        "mirroring_axes": list(pipeline.mirror_axes) if pipeline.mirror_axes else None,
        "tile_step_size": pipeline.tile_step_size,
        "explain_fold": explain_fold,
        "checkpoints_sha256": digests,
    }
    if ref.get("trust"):
        source["trust"] = True
    if explain_fold is not None:
        source["warnings"] = [
            f"explanations use fold {explain_fold} alone without test-time mirroring; the "
            f"segmentation uses folds {_fold_list(folds)}"
            + (" with mirroring" if pipeline.mirror_axes else "")
        ]
    combined = hashlib.sha256()
    for name in ("plans.json", "dataset.json"):
        combined.update(_sha256(folder / name).encode())
    for digest in digests.values():
        combined.update(digest.encode())
    return pipeline, card, source, combined.hexdigest()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """An nnU-Net checkpoint read with ``weights_only=True`` (numpy scalars allowed, see above)."""
    import importlib

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    scalar = multiarray.scalar
    allowed: list[Any] = [scalar, np.dtype]
    allowed += [type(np.dtype(code)) for code in "?bhilqBHILQefdFD"]
    try:
        with torch.serialization.safe_globals(allowed):
            checkpoint = torch_load_weights_only(path)
    except pickle.UnpicklingError as error:
        raise UserInputError(
            f"{path} holds pickled objects other than tensors, numbers and numpy scalars, which "
            "are not loaded for safety (torch.load weights_only=True refused them); re-save the "
            "checkpoint with nnU-Net v2's trainer"
        ) from error
    except Exception as error:
        raise UserInputError(
            f"{path} is not a readable PyTorch checkpoint ({error}); check the file"
        ) from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise UserInputError(
            f"{path} holds no 'network_weights'; it is not an nnU-Net v2 checkpoint"
        )
    return checkpoint


def _folds(folder: Path, folds: Any, checkpoint: str) -> list[int | str]:
    """The folds to use: those given, or (like nnU-Net) every fold_N with the checkpoint."""
    if folds is None:
        found = sorted(
            int(p.name[5:])
            for p in folder.glob("fold_*")
            if p.name[5:].isdigit() and (p / checkpoint).is_file()
        )
        if not found:
            found_all = (folder / "fold_all" / checkpoint).is_file()
            if not found_all:
                raise UserInputError(
                    f"no fold_N/{checkpoint} in {folder}; train a fold, or choose the other "
                    f"checkpoint ({' or '.join(CHECKPOINTS)})"
                )
            return ["all"]
        return list(found)
    chosen: list[int | str] = []
    for fold in folds if isinstance(folds, (list, tuple)) else [folds]:
        fold = "all" if str(fold) == "all" else fold
        if fold != "all" and not str(fold).lstrip("-").isdigit():
            raise UserInputError(f"fold {fold!r} is neither a number nor 'all'; e.g. --folds 0,1")
        fold = fold if fold == "all" else int(fold)
        if not (folder / f"fold_{fold}" / checkpoint).is_file():
            present = sorted(p.name for p in folder.glob("fold_*/" + checkpoint))
            raise UserInputError(
                f"{folder / f'fold_{fold}' / checkpoint} does not exist (present: "
                f"{', '.join(present) or 'none'}); choose other folds"
            )
        if fold not in chosen:
            chosen.append(fold)
    if not chosen:
        raise UserInputError("the list of folds is empty; give at least one, e.g. --folds 0")
    return chosen


def _build_network(
    trainer: Any,
    manager: Any,
    config: Any,
    in_channels: int,
    out_channels: int,
    checkpoint: dict,
    path: Path,
) -> torch.nn.Module:
    """The fold's network, built as nnUNetPredictor builds it, with the checkpoint's weights."""
    import inspect

    try:
        if "plans_manager" in inspect.signature(trainer.build_network_architecture).parameters:
            network = trainer.build_network_architecture(
                manager, config, in_channels, out_channels, enable_deep_supervision=False
            )
        else:  # the older signature nnUNetPredictor still accepts
            network = trainer.build_network_architecture(
                config.network_arch_class_name,
                config.network_arch_init_kwargs,
                config.network_arch_init_kwargs_req_import,
                in_channels,
                out_channels,
                enable_deep_supervision=False,
            )
    except ImportError as error:  # an architecture (or nnU-Net's search for one) needs timm, ...
        raise UserInputError(
            f"nnU-Net cannot build the network the plans of {path.parent.parent.name} describe: "
            + _missing_package(error, "looking it up")
        ) from error
    except Exception as error:  # what the plans name (with consent) failed, or is missing
        problem = " ".join(str(error).split())
        raise UserInputError(
            f"nnU-Net cannot build the network the plans of {path.parent.parent.name} describe "
            f"({type(error).__name__}: {problem}); check plans.json"
        ) from error
    weights = checkpoint["network_weights"]
    if weights and all(k.startswith("module.") for k in weights):
        weights = {k[len("module.") :]: v for k, v in weights.items()}
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:
        raise UserInputError(
            f"the weights of {path} do not fit the network the plans describe "
            f"({str(error).splitlines()[0]}); check that plans.json belongs to this model"
        ) from error
    return network.eval()


def _missing_package(error: ImportError, doing: str) -> str:
    """The one line for a package that nnU-Net's code needs and this installation lacks."""
    package = (getattr(error, "name", None) or "").split(".")[0]
    if not package:
        return f"{doing} failed to import nnU-Net's code ({error}); check the nnunetv2 installation"
    return (
        f"{doing} needs the Python package {package!r}, which is not installed (nnU-Net's "
        f"code imports it); install it (pip install {package}) or use a model whose trainer "
        "does without it"
    )


def _check_labels(dataset: Any, path: Path) -> None:
    """dataset.json's labels as nnU-Net needs them: an object of name -> value (or list of
    values for regions) with "background": 0."""
    labels = dataset.get("labels") if isinstance(dataset, dict) else None
    example = '"labels": {"background": 0, "tumour": 1}'
    if not isinstance(labels, dict):
        got = "none" if labels is None else f"a {type(labels).__name__}"
        raise UserInputError(
            f"{path}'s labels must be an object of label names and values, e.g. {example}; got "
            f"{got}: fix the file"
        )
    if not _is_zero(labels.get("background")):
        background = labels.get("background")
        have = "no background" if background is None else f"background {background!r}"
        raise UserInputError(
            f'{path}\'s labels have {have}; nnU-Net needs "background": 0 among them, e.g. '
            f"{example}: fix the file"
        )
    for key in ("channel_names", "modality"):
        if isinstance(dataset.get(key), dict):
            return
    raise UserInputError(
        f'{path} has no channel_names (e.g. "channel_names": {{"0": "CT"}}); fix the file'
    )


def _is_zero(value: Any) -> bool:
    """Whether nnU-Net's LabelManager takes ``value`` as the background label (int 0)."""
    try:
        return not isinstance(value, (list, tuple)) and int(value) == 0
    except (TypeError, ValueError):
        return False


def _plan(manager: Any, config: Any, regions: bool) -> Plan:
    c = config.configuration
    return Plan(
        transpose_forward=tuple(manager.transpose_forward),
        transpose_backward=tuple(manager.transpose_backward),
        spacing=tuple(float(s) for s in config.spacing),
        patch_size=tuple(int(p) for p in config.patch_size),
        normalization_schemes=tuple(config.normalization_schemes),
        use_mask_for_norm=tuple(bool(u) for u in config.use_mask_for_norm),
        intensity_properties=dict(manager.foreground_intensity_properties_per_channel),
        resampling_data=(c["resampling_fn_data"], dict(c.get("resampling_fn_data_kwargs", {}))),
        resampling_probabilities=(
            c["resampling_fn_probabilities"],
            dict(c.get("resampling_fn_probabilities_kwargs", {})),
        ),
        regions=regions,
    )


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read {path} ({error}); check the model folder") from error


def _sha256(path: Path) -> str:
    from ..files import sha256_file

    return sha256_file(path)


def _fold_list(folds: list[int | str]) -> str:
    return ",".join(str(f) for f in folds)
