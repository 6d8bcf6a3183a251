"""MONAI bundles: variants of the routes by which a bundle's configs would run code, each
refused without consent (one line naming file, key and value; no marker) and run with it; the
allow-list rule by rule; config files read as data only (docs/safety.md)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from consent_payloads import (
    CONSENT,
    demo_bundle,
    edit_json,
    inference,
    set_network_def,
    touch_call,
    touch_command,
    touch_expression,
    write_hubconf,
)

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.models.loading import load_model

# --- variants of the routes, in bundles -----------------------------------------------------------

#: name -> (builder(root, marker, tmp) -> the refusal's "file, key" part, what consent gives:
#: "loads" the model, "runs" the payload (what it returns is no part of a network), "reparse"
#: (the payload runs when MONAI's parser parses a second time), or "unreadable" (MONAI's reader
#: does not read it: refused with consent too, nothing runs))
BUNDLE_VARIANTS: dict[str, tuple[Callable[[Path, Path, Path], str], str]] = {}
HOOK_MODULE = "consent_hook_module"


def variant(outcome: str):
    def register(build):
        BUNDLE_VARIANTS[build.__name__] = (build, outcome)
        return build

    return register


@variant("loads")
def macro_to_a_file_inside_the_bundle(root, marker, tmp):
    (root / "configs" / "extra.json").write_text(json.dumps({"n": touch_expression(marker)}))
    set_network_def(root, in_channels=f"%{root}/configs/extra.json::n")
    return "configs/extra.json, key n"


@variant("loads")
def macro_to_a_symlinked_file(root, marker, tmp):
    elsewhere = tmp / "elsewhere.json"
    elsewhere.write_text(json.dumps({"n": touch_expression(marker)}))
    (root / "configs" / "linked.json").symlink_to(elsewhere)
    set_network_def(root, in_channels=f"%{root}/configs/linked.json::n")
    return f"configs/linked.json (a link to {elsewhere.resolve()}), key n"


@variant("reparse")
def macro_inside_pasted_content(root, marker, tmp):
    """MONAI pastes macros once per parse: the inner one is pasted when the parser parses again
    (as its ``get_parsed_content(lazy=False)`` does)."""
    (tmp / "inner.json").write_text(json.dumps({"n": touch_expression(marker)}))
    (tmp / "outer.json").write_text(json.dumps({"n": f"%{tmp}/inner.json::n"}))
    set_network_def(root, in_channels=f"%{tmp}/outer.json::n")
    return f"{tmp}/inner.json, key n"


@variant("loads")
def target_through_a_reference(root, marker, tmp):
    edit_json(inference(root), lambda c: c.update(command="subprocess.call"))
    set_network_def(root, _requires_={**touch_call(marker), "_target_": "@command"})
    return "key network_def::_requires_::_target_: '@command'"


@variant("loads")
def target_through_a_macro(root, marker, tmp):
    (tmp / "names.json").write_text(json.dumps({"t": "subprocess.call"}))
    set_network_def(root, _requires_={**touch_call(marker), "_target_": f"%{tmp}/names.json::t"})
    return f"{tmp}/names.json, key t: 'subprocess.call'"


@variant("loads")
def bare_name_monai_maps_to_run_cmd(root, marker, tmp):
    set_network_def(root, _requires_={"_target_": "run_cmd", "cmd_list": touch_command(marker)})
    return "key network_def::_requires_::_target_: 'run_cmd'"


@variant("loads")
def attribute_chain_under_monai(root, marker, tmp):
    """``monai.networks.nets.unet.torch.hub.load`` starts in MONAI and ends in torch.hub.load,
    which runs the bundle's hubconf.py (a network comes back: the weights load)."""
    write_hubconf(root, marker, "monai.networks.nets.UNet")
    chain = "monai.networks.nets.unet.torch.hub.load"
    set_network_def(root, _target_=chain, repo_or_dir=str(root), model="net", source="local")
    return f"key network_def::_target_: '{chain}'"


@variant("loads")
def top_level_key_merged_into_a_nested_place(root, marker, tmp):
    # MONAI merges "network_def#_requires_" (# is its old separator) into network_def
    edit_json(inference(root), lambda c: c.update({"network_def#_requires_": touch_call(marker)}))
    return "key network_def::_requires_::_target_: 'subprocess.call'"


@variant("loads")
def duplicate_json_keys(root, marker, tmp):
    # json and MONAI's reader keep the last of two equal keys: the second network_def runs
    config = json.loads(inference(root).read_text())
    second = {**config["network_def"], "_requires_": touch_call(marker)}
    text = json.dumps(config)[:-1] + f', "network_def": {json.dumps(second)}}}'
    inference(root).write_text(text)
    return "key network_def::_requires_::_target_: 'subprocess.call'"


@variant("loads")
def yaml_alias(root, marker, tmp):
    config = json.loads(inference(root).read_text())
    network = json.dumps(config.pop("network_def"))[:-1] + ', "_requires_": *hook}'
    text = json.dumps(config)[1:-1].replace('}, "', '}\n"')  # flow YAML, one id a line
    hook = json.dumps(touch_call(marker))
    yaml_text = f"{text}\nhooks: [&hook {hook}]\nnetwork_def: {network}\n"
    inference(root).unlink()
    (root / "configs" / "inference.yaml").write_text(yaml_text)
    return "configs/inference.yaml, key hooks::0::_target_: 'subprocess.call'"


@variant("unreadable")
def yaml_python_tag(root, marker, tmp):
    config = json.loads(inference(root).read_text())
    command = json.dumps(touch_command(marker))
    text = json.dumps(config)[1:-1].replace('}, "', '}\n"')
    inference(root).unlink()
    (root / "configs" / "inference.yaml").write_text(
        f"{text}\nhook: !!python/object/apply:subprocess.call [{command}]\n"
    )
    return "cannot read configs/inference.yaml"


@variant("loads")
def import_via_getattr_and_concatenation(root, marker, tmp):
    expression = touch_expression(marker).replace(
        "__import__", "getattr(__builtins__, '__getitem__')('__imp' + 'ort__')"
    )
    set_network_def(root, in_channels=expression)
    return "key network_def::in_channels"


@variant("loads")
def unicode_look_alike_identifiers(root, marker, tmp):
    # Python reads ＿＿ｉｍｐｏｒｔ＿＿ (full-width letters) as __import__ (NFKC)
    expression = touch_expression(marker).replace("__import__", "__ｉｍｐｏｒｔ__")
    set_network_def(root, in_channels=expression)
    return "key network_def::in_channels"


@variant("runs")
def lambda_shaped_expression(root, marker, tmp):
    hook = touch_expression(marker)[1:].removesuffix(" or 1")
    set_network_def(root, in_channels=f"$lambda x, hook={hook}: x")
    return "key network_def::in_channels"


@variant("loads")
def expression_in_a_disabled_flag(root, marker, tmp):
    set_network_def(root, _disabled_=touch_expression(marker).replace(" or 1", " or False"))
    return "key network_def::_disabled_"


@variant("loads")
def import_statement_nothing_refers_to(root, marker, tmp):
    """MONAI runs every ``$import`` of the config as soon as it resolves anything."""
    (tmp / f"{HOOK_MODULE}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    )
    edit_json(
        root / "configs" / "metadata.json", lambda m: m.update(imports=[f"$import {HOOK_MODULE}"])
    )
    return "configs/metadata.json, key imports::0"


@pytest.mark.parametrize("name", list(BUNDLE_VARIANTS))
def test_bundle_variant_is_refused_and_runs_with_consent(name, tmp_path, monkeypatch):
    build, outcome = BUNDLE_VARIANTS[name]
    monkeypatch.syspath_prepend(str(tmp_path))  # where the import variant's module lies
    monkeypatch.delitem(sys.modules, HOOK_MODULE, raising=False)
    root, marker = demo_bundle(tmp_path / "bundle"), tmp_path / "marker"
    where = build(root, marker, tmp_path)
    with pytest.raises(UserInputError) as refused:
        load_model({"kind": "bundle", "path": str(root)})
    message = str(refused.value)
    assert where in message and "\n" not in message, message
    assert not marker.exists()
    trusted = {"kind": "bundle", "path": str(root), "trust": True}
    if outcome == "unreadable":
        with pytest.raises(UserInputError, match=where):
            load_model(trusted)
        assert not marker.exists()
        return
    assert CONSENT in message
    if outcome == "loads":
        assert load_model(trusted).source["trust"] is True
    elif outcome == "reparse":
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(inference(root)))
        for _ in range(2):
            parser.get_parsed_content("network_def::in_channels", lazy=False)
    else:
        with pytest.raises(UserInputError, match="cannot build the network_def"):
            load_model(trusted)
    assert marker.exists()


def test_keys_are_not_code(tmp_path):
    """MONAI never evaluates a key: a ``$`` key is text, the bundle loads without consent and
    nothing runs."""
    root, marker = demo_bundle(tmp_path / "bundle"), tmp_path / "marker"
    key = touch_expression(marker)
    edit_json(inference(root), lambda c: c.update(notes={key: "a key, not an expression"}))
    load_model({"kind": "bundle", "path": str(root)})
    assert not marker.exists()


def test_what_the_allow_list_holds(tmp_path):
    """Each rule of the bundle analysis on one config: MONAI's own classes by name or path and
    the two lambda forms pass; everything else is found, where it is."""
    from TorchEsegetaLib.models.bundles.analysis import analyse_bundle

    (tmp_path / "configs").mkdir()
    config = {
        "allowed": [
            {"_target_": "LoadImaged", "keys": "image", "reader": "ITKReader"},
            {"_target_": "monai.transforms.Lambdad", "keys": "image", "func": "$lambda x: x / 2"},
            {"_target_": "torch.nn.PReLU", "_mode_": "callable"},
            {"_target_": "SaveImage", "writer": "NibabelWriter"},
            {"_target_": "PatchInferer", "merger_cls": "AvgMerger"},
            {"_target_": "CropForegroundd", "keys": "image", "select_fn": "$lambda x: x > 0"},
        ],
        "found": [
            {"_target_": "LoadImaged", "keys": "image", "reader": "monai.bundle.scripts.run"},
            {"_target_": "SaveImage", "writer": "@named"},
            {"_target_": "PatchInferer", "merger_cls": "os.system"},
            {"_target_": "Compose", "_mode_": "debug"},
            {"_target_": "Compose", "_debug_": True},
            {"_target_": {"_target_": "Compose"}},
            {"_target_": "$monai.transforms.Compose"},
            {"_target_": "monai.transforms.utils.os.system"},
            {"_target_": "ｍｏｎａｉ.transforms.Compose"},
            {"_target_": "monai.bundle.scripts.run"},
            {"_target_": "instantiate"},
            {"_target_": "Dataset"},
            "$lambda x: x ** 2",
        ],
    }
    (tmp_path / "configs" / "inference.json").write_text(json.dumps(config))
    analysis = analyse_bundle(tmp_path, tmp_path / "configs" / "inference.json", [])
    keys = [finding.key for finding in analysis.findings]
    assert all(key.startswith("found::") for key in keys), keys
    assert keys == [
        "found::0::reader",
        "found::1::writer",
        "found::2::merger_cls",
        "found::3::_mode_",
        "found::4::_debug_",
        "found::5::_target_",
        "found::6::_target_",
        "found::7::_target_",
        "found::8::_target_",
        "found::9::_target_",
        "found::10::_target_",
        "found::11::_target_",
        "found::12",
    ]
    # what runs is what was checked: the classes by their full paths
    targets = [component["_target_"] for component in analysis.config["allowed"]]
    assert targets[:3] == [
        "monai.transforms.io.dictionary.LoadImaged",
        "monai.transforms.utility.dictionary.Lambdad",
        "torch.nn.modules.activation.PReLU",
    ]


def test_config_files_are_read_as_data_only(tmp_path):
    """What MONAI's parser would hang on or loop over is refused in one line."""
    root = demo_bundle(tmp_path / "bundle")
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    set_network_def(root, in_channels=f"%{fifo}::n")
    with pytest.raises(UserInputError, match="pipe.json is not a regular file"):
        load_model({"kind": "bundle", "path": str(root)})
    (tmp_path / "loop.json").write_text(json.dumps({"n": f"%{tmp_path}/loop.json::n"}))
    set_network_def(root, in_channels=f"%{tmp_path}/loop.json::n")
    with pytest.raises(UserInputError, match="macros nest deeper than 16 levels"):
        load_model({"kind": "bundle", "path": str(root)})
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(6)
    )
    inference(root).unlink()
    (root / "configs" / "inference.yaml").write_text(bomb)
    with pytest.raises(UserInputError, match="over 1000000 values"):
        load_model({"kind": "bundle", "path": str(root)})
    (root / "configs" / "inference.yaml").write_text("a: &a [1, *a]\n")
    with pytest.raises(UserInputError, match="contains itself"):
        load_model({"kind": "bundle", "path": str(root)})
