"""nnU-Net v2 folders: variants of the route by which plans.json would make nnU-Net import and
call code, each refused without consent and run with it; nnU-Net's own names pass; the
checkpoint's trainer (docs/safety.md)."""

from __future__ import annotations

import json

import pytest
from consent_payloads import (
    ARCHITECTURE_KEY,
    CONSENT,
    edit_architecture,
    edit_json,
    hub_network,
    nnunet_copy,
    write_hubconf,
)

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.models.loading import load_model

pytest.importorskip("nnunetv2")


def attribute_chain(copy, marker):
    chain = "dynamic_network_architectures.architectures.unet.torch.hub.load"
    edit_architecture(copy, lambda a: hub_network(copy, marker, a, chain))
    return f"{ARCHITECTURE_KEY}::network_class_name: '{chain}'", "loads"


def located_layer(copy, marker):
    def change(architecture):
        write_hubconf(copy, marker, architecture["network_class_name"])
        architecture["arch_kwargs"]["nonlin"] = "torch.hub.load"
        hub = {"repo_or_dir": str(copy), "model": "act", "source": "local"}
        architecture["arch_kwargs"]["nonlin_kwargs"] = {**hub, "inplace": True}

    edit_architecture(copy, change)
    return f"{ARCHITECTURE_KEY}::arch_kwargs::nonlin: 'torch.hub.load'", "loads"


def inherited_configuration(copy, marker):
    def change(plans):
        configurations = plans["configurations"]
        base = configurations.pop("3d_fullres")
        hub_network(copy, marker, base["architecture"], "torch.hub.load")
        configurations["3d_fullres"] = {"inherits_from": "3d_fullres_base"}
        configurations["3d_fullres_base"] = base

    edit_json(copy / "plans.json", change)
    return "configurations::3d_fullres_base::architecture::network_class_name", "loads"


def duplicate_plans_keys(copy, marker):
    plans = json.loads((copy / "plans.json").read_text())
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    original = json.dumps(architecture["network_class_name"])
    hub_network(copy, marker, architecture, "torch.hub.load")
    architecture["network_class_name"] = "REPLACED"
    text = json.dumps(plans).replace(
        '"network_class_name": "REPLACED"',
        f'"network_class_name": {original}, "network_class_name": "torch.hub.load"',
    )
    (copy / "plans.json").write_text(text)
    return f"{ARCHITECTURE_KEY}::network_class_name: 'torch.hub.load'", "loads"


def unicode_look_alike(copy, marker):
    edit_architecture(copy, lambda a: hub_network(copy, marker, a, "ｔｏｒｃｈ.hub.load"))
    return f"{ARCHITECTURE_KEY}::network_class_name: 'ｔｏｒｃｈ.hub.load'", "unresolvable"


NNUNET_VARIANTS = {
    f.__name__: f
    for f in (
        attribute_chain,
        located_layer,
        inherited_configuration,
        duplicate_plans_keys,
        unicode_look_alike,
    )
}


@pytest.mark.parametrize("name", list(NNUNET_VARIANTS))
def test_nnunet_variant_is_refused_and_runs_with_consent(nnunet_model_folder, name, tmp_path):
    copy, marker = nnunet_copy(nnunet_model_folder, tmp_path / "model"), tmp_path / "marker"
    where, outcome = NNUNET_VARIANTS[name](copy, marker)
    with pytest.raises(UserInputError) as refused:
        load_model({"kind": "nnunet", "path": str(copy)})
    message = str(refused.value)
    assert f"plans.json, key {where}" in message and CONSENT in message and "\n" not in message
    assert not marker.exists()
    trusted = {"kind": "nnunet", "path": str(copy), "trust": True}
    if outcome == "loads":
        assert load_model(trusted).network is not None and marker.exists()
    else:  # nnU-Net itself finds nothing of that name: one line, nothing ran
        with pytest.raises(UserInputError, match="nnU-Net cannot build the network"):
            load_model(trusted)
        assert not marker.exists()


def test_nnunets_own_names_pass_and_others_are_found(nnunet_model_folder):
    from TorchEsegetaLib.models.nnunet.analysis import analyse_plans

    plans = json.loads((nnunet_model_folder / "plans.json").read_text())
    assert analyse_plans(plans) == []
    configuration = plans["configurations"]["3d_fullres"]
    architecture = configuration["architecture"]
    architecture["network_class_name"] = (
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    )
    assert analyse_plans(plans) == []
    architecture["arch_kwargs"]["conv_op"] = "torch.hub.load"  # located by nnUNetTrainerBN
    architecture["_kw_requires_import"].remove("conv_op")
    configuration["normalization_schemes"] = ["SomethingElse"]
    configuration["resampling_fn_data"] = "os.system"
    configuration["preprocessor_name"] = "MyPreprocessor"
    plans.update(label_manager="load_json", image_reader_writer="Tool", plans_name="../../x")
    found = [(f.key, f.value) for f in analyse_plans(plans)]
    assert found == [
        (f"{ARCHITECTURE_KEY}::arch_kwargs::conv_op", "torch.hub.load"),
        ("configurations::3d_fullres::normalization_schemes::0", "SomethingElse"),
        ("configurations::3d_fullres::resampling_fn_data", "os.system"),
        ("configurations::3d_fullres::preprocessor_name", "MyPreprocessor"),
        ("label_manager", "load_json"),
        ("image_reader_writer", "Tool"),
        ("plans_name", "../../x"),
    ]
    architecture["_kw_requires_import"].append("missing")
    with pytest.raises(UserInputError, match="names 'missing', which arch_kwargs lacks"):
        analyse_plans(plans)


def test_a_moved_network_class_passes_as_nnunets_fallback_finds_it(nnunet_model_folder):
    """nnU-Net looks a network class that is not where the plans say up by its last name among
    dynamic_network_architectures' architectures (modules in order: abstract_arch comes first,
    before any that needs timm)."""
    from TorchEsegetaLib.models.nnunet.analysis import analyse_plans

    plans = json.loads((nnunet_model_folder / "plans.json").read_text())
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    architecture["network_class_name"] = (
        "dynamic_network_architectures.architectures.moved.AbstractDynamicNetworkArchitectures"
    )
    assert analyse_plans(plans) == []
    architecture["network_class_name"] = "dynamic_network_architectures.architectures.moved.load"
    assert [f.value for f in analyse_plans(plans)] == [architecture["network_class_name"]]


def test_a_checkpoint_naming_no_trainer_is_refused_even_with_consent(nnunet_model_folder, tmp_path):
    import torch

    copy = nnunet_copy(nnunet_model_folder, tmp_path / "model")
    path = copy / "fold_0" / "checkpoint_final.pth"
    from TorchEsegetaLib.models.nnunet.folder import load_checkpoint

    checkpoint = load_checkpoint(path)
    checkpoint["trainer_name"] = "load_json"  # a function nnU-Net's trainer modules import
    torch.save(checkpoint, path)
    for trust in (False, True):
        with pytest.raises(UserInputError, match="'load_json' names no nnU-Net trainer class"):
            load_model({"kind": "nnunet", "path": str(copy), "folds": [0], "trust": trust})


def test_a_trainer_nnunet_does_not_have_is_one_line():
    """nnU-Net imports its trainer modules one by one looking for the name; one that needs an
    absent package (timm, for the Primus trainers, searched before the variants) is named, not
    an internal error."""
    pytest.importorskip("nnunetv2")
    from TorchEsegetaLib.models.nnunet.analysis import trainer_class

    with pytest.raises(UserInputError, match="NoSuchTrainer") as refused:
        trainer_class("NoSuchTrainer")
    assert "\n" not in str(refused.value)
    assert trainer_class("nnUNetTrainer").__name__ == "nnUNetTrainer"
