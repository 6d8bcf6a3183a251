"""What an nnU-Net folder would make nnU-Net import and call, found before anything is built.

nnU-Net builds a network from names in ``plans.json``: ``pydoc.locate`` imports the module of
``architecture.network_class_name`` and calls what it finds with the plans' arguments (so any
installed function runs, ``torch.hub.load`` with code from a path included), and does the same
for every argument named in ``_kw_requires_import`` (a trainer such as nnUNetTrainerBN locates
``conv_op`` itself); other names are looked up among nnU-Net's own modules. So, for every
configuration of the plans (with its ``inherits_from`` resolved by nnU-Net's own PlansManager):

- ``network_class_name``: a network class of dynamic_network_architectures (nnU-Net's own
  networks; also when nnU-Net's fallback finds a moved class by its last name there);
- the located arguments (``_kw_requires_import``, ``conv_op``, ``norm_op``, ``dropout_op``,
  ``nonlin``): torch.nn or dynamic_network_architectures layer classes;
- normalisation schemes, resampling functions, the preprocessor: nnU-Net's own, those this
  package reproduces;

and for the plans: ``label_manager`` and ``image_reader_writer`` name nnU-Net's own classes,
``plans_name`` is a plain name (nnU-Net's trainer builds folder paths from it). Anything else is
a :class:`~TorchEsegetaLib.models.trust.Finding`. The checkpoint's trainer must be one of
nnU-Net's trainer classes whatever the consent, as nnU-Net itself requires.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...errors import UserInputError
from ..trust import Finding, is_class_from, locate_within
from .normalization import SCHEMES
from .resampling import SUPPORTED as RESAMPLINGS

NETWORK_PACKAGE = "dynamic_network_architectures"
LAYER_ROOTS = ("torch.nn", NETWORK_PACKAGE)
LAYER_HOMES = ("torch.nn.modules", NETWORK_PACKAGE)
#: Arguments a trainer may locate whether or not ``_kw_requires_import`` names them.
LAYER_ARGUMENTS = ("conv_op", "norm_op", "dropout_op", "nonlin")
PREPROCESSORS = ("DefaultPreprocessor",)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")


def analyse_plans(plans: dict) -> list[Finding]:
    """What the plans would make nnU-Net import or call that is not nnU-Net's own."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if not isinstance(plans, dict):
        raise UserInputError("plans.json must hold a JSON object; check the model folder")
    findings: list[Finding] = []

    def find(key: str, value: Any, what: str) -> None:
        text = value if isinstance(value, str) else repr(value)
        findings.append(Finding("plans.json", key, text, what))

    configurations = plans.get("configurations")
    if not isinstance(configurations, dict):
        raise UserInputError("plans.json has no 'configurations' object; check the model folder")
    manager = PlansManager(plans)
    for name in configurations:
        try:  # nnU-Net's own inheritance and old-format conversion; data only
            configuration = manager.get_configuration(name).configuration
        except Exception as error:
            raise UserInputError(
                f"plans.json: nnU-Net cannot read configuration {name!r} ({error}); fix the plans"
            ) from error
        _check_configuration(plans, name, configuration, find)
    label_manager = plans.get("label_manager", "LabelManager")
    if not _is_label_manager(label_manager):
        find("label_manager", label_manager, "is not one of nnU-Net's label manager classes")
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if not _is_reader(reader):
        find("image_reader_writer", reader, "is not one of nnU-Net's image readers")
    plans_name = plans.get("plans_name", "nnUNetPlans")
    if not (
        isinstance(plans_name, str) and _PLAIN_NAME.match(plans_name) and ".." not in plans_name
    ):
        find("plans_name", plans_name, "is not a plain name; nnU-Net builds folder paths from it")
    return findings


def trainer_class(name: Any) -> type:
    """nnU-Net's trainer class of that name, found as nnU-Net finds it; one line when the
    name is none of nnU-Net's trainers (nnU-Net itself refuses those too)."""
    import nnunetv2
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    found = None
    if isinstance(name, str) and name.isidentifier():
        try:  # nnU-Net imports its trainer modules one by one until one has the name
            found = recursive_find_python_class(
                str(Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"),
                name,
                "nnunetv2.training.nnUNetTrainer",
            )
        except ImportError as error:
            raise UserInputError(
                f"looking up the checkpoint's trainer {name!r}, nnU-Net imports a trainer module "
                f"that needs {error.name or error}, which is not installed; install it (pip "
                f"install {error.name or '...'}) or use a folder trained with another trainer"
            ) from error
    if found is None:
        raise UserInputError(
            f"the checkpoint was trained with {name!r}, which this nnunetv2 installation does "
            "not have; install the nnU-Net version (or plug-in) that defines it"
        )
    if not is_class_from(found, ("nnunetv2.training",), nnUNetTrainer):
        raise UserInputError(
            f"the checkpoint's trainer_name {name!r} names no nnU-Net trainer class (it finds "
            f"{found!r}); the checkpoint is not an nnU-Net v2 checkpoint"
        )
    return found


def _check_configuration(plans: dict, name: str, configuration: dict, find: Any) -> None:
    def key(field: str, *rest: str) -> str:
        return "::".join(("configurations", _defined_in(plans, name, field), field, *rest))

    architecture = configuration.get("architecture")
    if not isinstance(architecture, dict):
        raise UserInputError(f"plans.json: configuration {name!r} has no architecture; fix it")
    network = architecture.get("network_class_name")
    if not _is_network_class(network):
        find(
            key("architecture", "network_class_name"),
            network,
            f"is not a network class of {NETWORK_PACKAGE}; nnU-Net would import and call "
            "whatever it names",
        )
    arguments = architecture.get("arch_kwargs")
    located = architecture.get("_kw_requires_import", [])
    if not isinstance(arguments, dict) or not isinstance(located, (list, tuple)):
        raise UserInputError(
            f"plans.json: configuration {name!r}'s arch_kwargs / _kw_requires_import are not an "
            "object and a list; fix the plans"
        )
    missing = [a for a in located if not isinstance(a, str) or a not in arguments]
    if missing:
        raise UserInputError(
            f"plans.json: configuration {name!r}'s _kw_requires_import names {missing[0]!r}, "
            "which arch_kwargs lacks; fix the plans"
        )
    layers = {a: arguments[a] for a in located if arguments[a] is not None}
    layers.update({a: arguments[a] for a in LAYER_ARGUMENTS if isinstance(arguments.get(a), str)})
    for argument, value in layers.items():
        if not is_class_from(locate_within(value, LAYER_ROOTS), LAYER_HOMES, _module_class()):
            find(
                key("architecture", "arch_kwargs", argument),
                value,
                "is not a torch.nn or dynamic_network_architectures layer class; nnU-Net would "
                "import and call whatever it names",
            )
    for index, scheme in enumerate(configuration.get("normalization_schemes") or []):
        if scheme not in SCHEMES:
            find(
                key("normalization_schemes", str(index)),
                scheme,
                f"is not one of nnU-Net's normalisation classes ({', '.join(SCHEMES)})",
            )
    for field in ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities"):
        if field in configuration and configuration[field] not in RESAMPLINGS:
            find(
                key(field),
                configuration[field],
                f"is not one of nnU-Net's resampling functions ({', '.join(RESAMPLINGS)})",
            )
    preprocessor = configuration.get("preprocessor_name", PREPROCESSORS[0])
    if preprocessor not in PREPROCESSORS:
        find(key("preprocessor_name"), preprocessor, "is not nnU-Net's DefaultPreprocessor")


def _is_network_class(name: Any) -> bool:
    import importlib

    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    found = locate_within(name, (NETWORK_PACKAGE,))
    moved = found is None and isinstance(name, str) and name.startswith(f"{NETWORK_PACKAGE}.")
    last = name.rsplit(".", 1)[-1] if moved else ""
    if moved and last.isidentifier():
        # nnU-Net's fallback for classes that moved: the last name among the architectures
        try:
            found = recursive_find_python_class(
                str(Path(importlib.import_module(NETWORK_PACKAGE).__path__[0]) / "architectures"),
                last,
                f"{NETWORK_PACKAGE}.architectures",
            )
        except ImportError:  # an architecture needing an absent package: nnU-Net fails too
            found = None
    return is_class_from(found, (NETWORK_PACKAGE,), _module_class())


def _is_label_manager(name: Any) -> bool:
    from nnunetv2.utilities.label_handling import label_handling

    found = getattr(label_handling, name, None) if isinstance(name, str) else None
    return is_class_from(found, ("nnunetv2.utilities.label_handling",), label_handling.LabelManager)


def _is_reader(name: Any) -> bool:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    return any(name == io_class.__name__ for io_class in LIST_OF_IO_CLASSES)


def _defined_in(plans: dict, name: str, field: str) -> str:
    """The configuration whose own entry gives ``field`` to ``name`` through inherits_from."""
    seen: list[str] = []
    current = name
    while current not in seen:
        seen.append(current)
        entry = plans["configurations"].get(current) or {}
        if field in entry or "inherits_from" not in entry:
            return current
        current = entry["inherits_from"]
    return name


def _module_class() -> type:
    import torch

    return torch.nn.Module
