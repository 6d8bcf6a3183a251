"""A model folder runs no code without consent (docs/safety.md).

Every case is a real folder, built by the project's own code (the demo's bundle export,
nnU-Net's own planner and trainer through ``models.nnunet.example``), with a payload that
creates a marker file if it ever runs. Without consent loading is refused before anything is
parsed: one line naming the file, the key and the value, and no marker. With consent the same
folder runs: the marker appears (and the model loads where the payload returns something
loadable). The issue's four routes run through the real ``torchesegeta`` command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry
from TorchEsegetaLib.models.loading import load_model

CONSENT = "--trust-model"


def touch_expression(marker: Path) -> str:
    """A ``$`` expression that creates ``marker`` and is 1 (a valid in_channels)."""
    return f"$__import__('pathlib').Path({str(marker)!r}).touch() or 1"


def touch_command(marker: Path) -> list[str]:
    return [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def demo_bundle(folder: Path) -> Path:
    """The demo network as a bundle with network_def + state dict (the export's "pt" form)."""
    from TorchEsegetaLib.models.demo.export import write_bundle

    return write_bundle(folder, "pt")


HUBCONF = """import pathlib
MARKER = {marker!r}


def net(**kwargs):
    pathlib.Path(MARKER).touch()
    from {module} import {name}
    return {name}(**kwargs)


def act(**kwargs):
    pathlib.Path(MARKER).touch()
    import torch
    return torch.nn.LeakyReLU(**kwargs)
"""


def write_hubconf(folder: Path, marker: Path, network: str) -> None:
    """A torch.hub entry file in the model folder: code that loads from a path."""
    module, name = network.rsplit(".", 1)
    text = HUBCONF.format(marker=str(marker), module=module, name=name)
    (folder / "hubconf.py").write_text(text)


# --- the four routes ------------------------------------------------------------------


def metadata_expression(tmp: Path) -> tuple[Path, Path, str]:
    """Route 1: a ``$`` expression in metadata.json, reached through an ``@`` reference."""
    root, marker = demo_bundle(tmp / "metadata_route"), tmp / "metadata_route.marker"
    edit_json(
        root / "configs" / "metadata.json", lambda m: m.update(channels=touch_expression(marker))
    )
    edit_json(
        root / "configs" / "inference.json",
        lambda c: c["network_def"].update(in_channels="@_meta_::channels"),
    )
    return root, marker, "configs/metadata.json, key channels"


def macro_from_another_file(tmp: Path) -> tuple[Path, Path, str]:
    """Route 2: a ``%`` macro pulling a ``$`` expression in from a file outside the bundle."""
    root, marker = demo_bundle(tmp / "macro_route"), tmp / "macro_route.marker"
    outside = tmp / "shared_settings.json"
    outside.write_text(json.dumps({"channels": touch_expression(marker)}))
    edit_json(
        root / "configs" / "inference.json",
        lambda c: c["network_def"].update(in_channels=f"%{outside}::channels"),
    )
    return root, marker, f"{outside}, key channels"


def nested_target(tmp: Path) -> tuple[Path, Path, str]:
    """Route 3: a ``_target_`` nested inside an allowed one (the activation's, in network_def)."""
    root, marker = demo_bundle(tmp / "nested_route"), tmp / "nested_route.marker"
    call = {"_target_": "subprocess.call", "args": touch_command(marker)}  # returns 0
    edit_json(
        root / "configs" / "inference.json",
        lambda c: c["network_def"].update(act=["relu", {"inplace": call}]),
    )
    return root, marker, "configs/inference.json, key network_def::act::1::inplace::_target_"


def nnunet_network_class(folder: Path, tmp: Path) -> tuple[Path, Path, str]:
    """Route 4: plans.json's network_class_name names an importable callable that loads code
    from a path (torch.hub.load runs the folder's hubconf.py, which returns a real network)."""
    copy, marker = nnunet_copy(folder, tmp / "nnunet_route"), tmp / "nnunet_route.marker"

    def change(architecture: dict) -> None:
        network = architecture["network_class_name"]
        architecture["network_class_name"] = "torch.hub.load"
        architecture["arch_kwargs"].update(repo_or_dir=str(copy), model="net", source="local")
        write_hubconf(copy, marker, network)

    edit_architecture(copy, change)
    key = "plans.json, key configurations::3d_fullres::architecture::network_class_name"
    return copy, marker, key


def nnunet_copy(folder: Path, target: Path) -> Path:
    return Path(shutil.copytree(folder, target))


def edit_architecture(
    folder: Path, change: Callable[[dict], None], name: str = "3d_fullres"
) -> None:
    edit_json(folder / "plans.json", lambda p: change(p["configurations"][name]["architecture"]))


# --- folders and inputs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nnunet_folder(nnunet_model_folder) -> Path:
    return nnunet_model_folder


def image_file(path: Path, shape=(16, 16, 16), spacing=(1.0, 1.0, 1.0)) -> Path:
    from TorchEsegetaLib.models.demo.synthetic import make_vessel_volume

    image, _ = make_vessel_volume(shape, 3)
    return write_volume(image, Geometry(size=shape, spacing=spacing), path)


def torchesegeta() -> list[str]:
    """The installed console script (falling back to the module where none is installed)."""
    script = Path(sys.executable).with_name("torchesegeta")
    found = str(script) if script.is_file() else shutil.which("torchesegeta")
    return [found] if found else [sys.executable, "-m", "TorchEsegetaLib.cli"]


def explain_args(model: Path, image: Path, out: Path) -> list[str]:
    arguments = ["explain", "--image", str(image), "--model", str(model), "--out", str(out)]
    # a voxel target: the nnU-Net folder's random weights may predict no vessel at all
    return [
        *arguments,
        "--target",
        "voxel:6,7,8",
        "--method",
        "saliency",
        "--no-figures",
        "--quiet",
    ]


@pytest.fixture(scope="module")
def routes(tmp_path_factory, nnunet_folder):
    """Each route's folder refused by a real `torchesegeta explain` process (all at once)."""
    tmp = tmp_path_factory.mktemp("routes")
    bundle_image = image_file(tmp / "image.nii.gz")
    nnunet_image = image_file(tmp / "nnunet_image.nii.gz", (12, 14, 18), (2.3, 0.75, 0.62))
    made = {
        "metadata": (*metadata_expression(tmp), bundle_image),
        "macro": (*macro_from_another_file(tmp), bundle_image),
        "nested": (*nested_target(tmp), bundle_image),
        "nnunet": (*nnunet_network_class(nnunet_folder, tmp), nnunet_image),
    }
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = {
        name: subprocess.Popen(
            [*torchesegeta(), *explain_args(folder, image, tmp / f"{name}.refused")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            cwd=tmp,
        )
        for name, (folder, _, _, image) in made.items()
    }
    results = {name: process.communicate(timeout=600) for name, process in processes.items()}
    codes = {name: process.returncode for name, process in processes.items()}
    return {name: (made[name], codes[name], *results[name], tmp) for name in made}


@pytest.mark.parametrize("route", ["metadata", "macro", "nested", "nnunet"])
def test_each_route_is_refused_by_the_command_and_runs_with_consent(routes, route, capsys):
    from TorchEsegetaLib.cli import main

    (folder, marker, where, image), code, stdout, stderr, tmp = routes[route]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert where in lines[0] and CONSENT in lines[0]
    assert not marker.exists() and not (tmp / f"{route}.refused").exists()

    out = tmp / f"{route}.trusted"
    assert main([*explain_args(folder, image, out), CONSENT]) == 0, capsys.readouterr().err
    assert marker.exists()
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert json.loads((out / "run.json").read_text())["job"]["model"]["trust"] is True


def test_trust_bundle_is_kept_as_an_alias(tmp_path):
    from TorchEsegetaLib.cli import main

    root, marker, _ = metadata_expression(tmp_path)
    out = tmp_path / "run"
    assert (
        main([*explain_args(root, image_file(tmp_path / "i.nii.gz"), out), "--trust-bundle"]) == 0
    )
    assert marker.exists()


def test_a_job_file_consents_with_trust_in_its_model_reference(tmp_path, capsys):
    from TorchEsegetaLib.cli import main

    root, marker, _ = nested_target(tmp_path)
    job = {
        "images": [str(image_file(tmp_path / "image.nii.gz"))],
        "model": {"kind": "bundle", "path": str(root)},
        "methods": ["saliency"],
        "figures": False,
    }
    (tmp_path / "refused.json").write_text(json.dumps({**job, "output": str(tmp_path / "a")}))
    assert main(["run", str(tmp_path / "refused.json"), "--quiet"]) == 2
    assert "network_def::act" in capsys.readouterr().err and not marker.exists()
    job["model"]["trust"] = True
    (tmp_path / "trusted.json").write_text(json.dumps({**job, "output": str(tmp_path / "b")}))
    assert main(["run", str(tmp_path / "trusted.json"), "--quiet"]) == 0
    assert marker.exists()


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


def inference(root: Path) -> Path:
    return root / "configs" / "inference.json"


def set_network_def(root: Path, **values) -> None:
    edit_json(inference(root), lambda c: c["network_def"].update(values))


def touch_call(marker: Path, target: str = "subprocess.call") -> dict:
    return {"_target_": target, "args": touch_command(marker)}


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


# --- variants of the route, in nnU-Net folders ----------------------------------------------------

ARCHITECTURE_KEY = "configurations::3d_fullres::architecture"


def hub_network(copy: Path, marker: Path, architecture: dict, name: str) -> None:
    write_hubconf(copy, marker, architecture["network_class_name"])
    architecture["network_class_name"] = name
    architecture["arch_kwargs"].update(repo_or_dir=str(copy), model="net", source="local")


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
def test_nnunet_variant_is_refused_and_runs_with_consent(nnunet_folder, name, tmp_path):
    copy, marker = nnunet_copy(nnunet_folder, tmp_path / "model"), tmp_path / "marker"
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


def test_nnunets_own_names_pass_and_others_are_found(nnunet_folder):
    from TorchEsegetaLib.models.nnunet.analysis import analyse_plans

    plans = json.loads((nnunet_folder / "plans.json").read_text())
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


def test_a_moved_network_class_passes_as_nnunets_fallback_finds_it(nnunet_folder):
    """nnU-Net looks a network class that is not where the plans say up by its last name among
    dynamic_network_architectures' architectures (modules in order: abstract_arch comes first,
    before any that needs timm)."""
    from TorchEsegetaLib.models.nnunet.analysis import analyse_plans

    plans = json.loads((nnunet_folder / "plans.json").read_text())
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    architecture["network_class_name"] = (
        "dynamic_network_architectures.architectures.moved.AbstractDynamicNetworkArchitectures"
    )
    assert analyse_plans(plans) == []
    architecture["network_class_name"] = "dynamic_network_architectures.architectures.moved.load"
    assert [f.value for f in analyse_plans(plans)] == [architecture["network_class_name"]]


def test_a_checkpoint_naming_no_trainer_is_refused_even_with_consent(nnunet_folder, tmp_path):
    import torch

    copy = nnunet_copy(nnunet_folder, tmp_path / "model")
    path = copy / "fold_0" / "checkpoint_final.pth"
    from TorchEsegetaLib.models.nnunet.folder import load_checkpoint

    checkpoint = load_checkpoint(path)
    checkpoint["trainer_name"] = "load_json"  # a function nnU-Net's trainer modules import
    torch.save(checkpoint, path)
    for trust in (False, True):
        with pytest.raises(UserInputError, match="'load_json' names no nnU-Net trainer class"):
            load_model({"kind": "nnunet", "path": str(copy), "folds": [0], "trust": trust})
