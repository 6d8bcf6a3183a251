"""Model loading: MONAI network + checkpoint, TorchScript, MONAI bundles, the demo."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import yaml
from monai.networks.nets import UNet

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.volume import Geometry, Volume
from TorchEsegetaLib.models.inference import segment
from TorchEsegetaLib.models.loading import load_model, model_ref_from_string

KWARGS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}


def make_net(seed: int = 0, **changes) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(**{**KWARGS, **changes}).eval()


def sample(size: int = 16) -> torch.Tensor:
    return torch.rand((1, 1, size, size, size), generator=torch.Generator().manual_seed(1))


def monai_ref(path) -> dict:
    return {"kind": "monai", "network": "unet", "kwargs": KWARGS, "checkpoint": str(path)}


def same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    with torch.no_grad():
        return torch.equal(a(sample()), b(sample()))


def script(net: torch.nn.Module, path) -> None:
    torch.jit.script(net).save(str(path))


@pytest.mark.parametrize(
    "wrapper", ["plain", "state_dict", "model", "model_state_dict", "network", "module."]
)
def test_monai_checkpoint_wrappers_give_the_original_outputs(tmp_path, wrapper):
    net = make_net()
    state = net.state_dict()
    if wrapper == "plain":
        saved = state
    elif wrapper == "module.":
        saved = {f"module.{k}": v for k, v in state.items()}
    else:
        saved = {wrapper: state, "epoch": 3, "optimizer": {"lr": 0.1}}
    path = tmp_path / "model.pt"
    torch.save(saved, path)

    loaded = load_model(monai_ref(path))

    assert same_outputs(loaded.network, net)
    assert not loaded.network.training
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.source["network"] == "UNet"
    json.dumps(loaded.source)
    assert (loaded.card.in_channels, loaded.card.out_channels, loaded.card.size_divisible) == (
        1,
        2,
        2,
    )


def test_card_overrides_win(tmp_path):
    torch.save(make_net().state_dict(), tmp_path / "m.pt")
    loaded = load_model(
        monai_ref(tmp_path / "m.pt"), card={"class_names": ["bg", "vessel"], "roi_size": [8] * 3}
    )
    assert loaded.card.class_names == ["bg", "vessel"]
    assert loaded.card.roi_size == (8, 8, 8)


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    torch.save(make_net(channels=[4, 16]).state_dict(), tmp_path / "other.pt")
    with pytest.raises(UserInputError, match="does not fit the network UNet.*shape mismatches"):
        load_model(monai_ref(tmp_path / "other.pt"))
    torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(UserInputError, match="missing keys.*unexpected keys.*foo.weight"):
        load_model(monai_ref(tmp_path / "foreign.pt"))


def test_pickled_whole_model_is_refused_for_safety(tmp_path):
    torch.save(make_net(), tmp_path / "whole.pt")
    with pytest.raises(UserInputError, match="weights_only.*state_dict"):
        load_model(monai_ref(tmp_path / "whole.pt"))


def test_corrupt_and_cut_checkpoints_are_named_as_such(tmp_path):
    torch.save(make_net().state_dict(), tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    for name in ("cut.pt", "noise.pt"):
        with pytest.raises(UserInputError, match="corrupt.*cut short") as caught:
            load_model(monai_ref(tmp_path / name))
        assert "pickled" not in str(caught.value)  # not mistaken for a whole pickled model


def test_bad_network_name_kwargs_and_references():
    with pytest.raises(UserInputError, match="did you mean.*UNet"):
        load_model({"kind": "monai", "network": "UNett", "kwargs": KWARGS, "checkpoint": None})
    with pytest.raises(UserInputError, match="cannot build UNet.*in_channels"):
        load_model(
            {"kind": "monai", "network": "UNet", "kwargs": {"spatial_dims": 3}, "checkpoint": None}
        )
    with pytest.raises(UserInputError, match="needs 'checkpoint'"):
        load_model({"kind": "monai", "network": "UNet", "kwargs": KWARGS})
    with pytest.raises(UserInputError, match="unknown key"):
        load_model({"kind": "torchscript", "path": "x.ts", "weights": "y"})
    with pytest.raises(UserInputError, match="'kind'"):
        load_model({"path": "x.ts"})


def test_explicit_null_checkpoint_gives_random_weights_with_a_warning():
    loaded = load_model({"kind": "monai", "network": "UNet", "kwargs": KWARGS, "checkpoint": None})
    assert loaded.sha256 is None
    assert "random weights" in loaded.source["warnings"][0]


def test_torchscript_loads_with_the_same_outputs(tmp_path):
    net = make_net()
    script(net, tmp_path / "model.ts")
    loaded = load_model({"kind": "torchscript", "path": str(tmp_path / "model.ts")})
    assert same_outputs(loaded.network, net)
    assert (loaded.card.in_channels, loaded.card.out_channels) == (1, 2)


def test_model_ref_from_string_dispatch(tmp_path):
    net = make_net()
    script(net, tmp_path / "model.ts")
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    assert model_ref_from_string("demo") == {"kind": "demo"}
    assert model_ref_from_string(str(tmp_path)) == {"kind": "bundle", "path": str(tmp_path)}
    assert model_ref_from_string(str(tmp_path / "model.ts"))["kind"] == "torchscript"
    ref = model_ref_from_string(str(tmp_path / "weights.pt"), "UNet", KWARGS)
    assert ref == {
        "kind": "monai",
        "network": "UNet",
        "kwargs": KWARGS,
        "checkpoint": str(tmp_path / "weights.pt"),
    }
    assert same_outputs(load_model(ref).network, net)
    with pytest.raises(UserInputError, match="not a TorchScript file.*--network NAME"):
        model_ref_from_string(str(tmp_path / "weights.pt"))
    with pytest.raises(UserInputError, match="does not exist"):
        model_ref_from_string(str(tmp_path / "missing.pt"))


# --- bundles ----------------------------------------------------------------------------------

BUNDLE_CONFIG = {
    "imports": ["$import os"],
    "bundle_root": ".",
    "image_key": "image",
    "pixdim": [2.0, 2.0, 2.0],
    "network_def": {"_target_": "UNet", **KWARGS},
    "network": "$@network_def.to('cpu')",
    "preprocessing_transforms": [
        {"_target_": "LoadImaged", "keys": "@image_key"},
        {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
        {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@pixdim", "mode": "bilinear"},
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "@image_key",
            "a_min": -100,
            "a_max": 200,
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        },
        {"_target_": "EnsureTyped", "keys": "@image_key"},
    ],
    "preprocessing": {"_target_": "Compose", "transforms": "$@preprocessing_transforms"},
    "inferer": {
        "_target_": "SlidingWindowInferer",
        "roi_size": [8, 8, 8],
        "sw_batch_size": 2,
        "overlap": 0.5,
    },
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}],
    },
}
METADATA = {
    "name": "tiny test bundle",
    "network_data_format": {
        "inputs": {"image": {"num_channels": 1}},
        "outputs": {"pred": {"num_channels": 2, "channel_def": {"0": "background", "1": "vessel"}}},
    },
}


def write_bundle(root, config=None, suffix="json", weights="pt", net=None):
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = config or BUNDLE_CONFIG
    text = json.dumps(config) if suffix == "json" else yaml.safe_dump(config)
    (root / "configs" / f"inference.{suffix}").write_text(text)
    (root / "configs" / "metadata.json").write_text(json.dumps(METADATA))
    net = net or make_net()
    if weights == "pt":
        torch.save({"state_dict": net.state_dict()}, root / "models" / "model.pt")
    else:
        script(net, root / "models" / "model.ts")
    return root


@pytest.mark.parametrize("suffix, weights", [("json", "pt"), ("yaml", "pt"), ("json", "ts")])
def test_bundle_fills_the_card_and_segments(tmp_path, suffix, weights):
    net = make_net()
    root = write_bundle(tmp_path / "bundle", suffix=suffix, weights=weights, net=net)

    loaded = load_model({"kind": "bundle", "path": str(root), "trust": True})

    card = loaded.card
    assert card.spacing is None and card.intensity == {"kind": "none"}
    assert card.preprocessing == [
        {"kind": "spacing", "pixdim": [2.0, 2.0, 2.0], "mode": "bilinear"},
        {
            "kind": "scale_range",
            "a_min": -100,
            "a_max": 200,
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        },
    ]
    assert card.postprocessing == [
        {"kind": "transform", "name": "Activations", "args": {"softmax": True}}
    ]
    assert (card.roi_size, card.overlap, card.sw_batch_size) == ((8, 8, 8), 0.5, 2)
    assert card.class_names == ["background", "vessel"]
    assert card.name == "tiny test bundle"
    assert card.ignored_preprocessing == [] and card.size_divisible == 1
    assert same_outputs(loaded.network, net)
    assert loaded.source["weights"].endswith(f"model.{weights}")
    json.dumps(loaded.source)

    image = np.random.default_rng(0).uniform(-100, 200, (1, 16, 16, 16)).astype(np.float32)
    result = segment(loaded, Volume(image, Geometry(size=(16, 16, 16))))
    assert result.logits.shape == (1, 2, 8, 8, 8)  # MONAI's Spacing: 16 voxels of 1 mm -> 8 of 2
    assert result.probabilities.shape == (2, 16, 16, 16)
    assert result.labelmap.shape == (16, 16, 16)


def test_bundle_card_overrides_win(tmp_path):
    root = write_bundle(tmp_path / "bundle")
    loaded = load_model(
        {"kind": "bundle", "path": str(root), "trust": True},
        card={"preprocessing": [], "spacing": [4.0, 4.0, 4.0], "roi_size": None},
    )
    assert loaded.card.preprocessing == [] and loaded.card.spacing == (4.0, 4.0, 4.0)
    assert loaded.card.roi_size is None


def test_bundle_code_runs_only_when_trusted(tmp_path):
    root = write_bundle(tmp_path / "bundle")
    with pytest.raises(UserInputError, match="imports::0: '\\$import os'.*--trust-model"):
        load_model({"kind": "bundle", "path": str(root)})
    # A config without expressions holds no code: it loads without being trusted.
    plain = {
        key: value
        for key, value in BUNDLE_CONFIG.items()
        if key not in ("imports", "network", "preprocessing")
    }
    plain["network_def"] = {
        k: v for k, v in plain["network_def"].items() if not str(v).startswith("$")
    }
    plain_root = write_bundle(tmp_path / "plain", config=plain)
    from TorchEsegetaLib.models.bundles.analysis import analyse_bundle

    files = [plain_root / "configs" / "metadata.json"]
    assert (
        analyse_bundle(plain_root, plain_root / "configs" / "inference.json", files).findings == []
    )
    assert load_model({"kind": "bundle", "path": str(plain_root)}).card.roi_size == (8, 8, 8)


def test_not_a_bundle(tmp_path):
    with pytest.raises(UserInputError, match="neither a MONAI bundle .* it holds nothing"):
        load_model({"kind": "bundle", "path": str(tmp_path)})


def test_demo_loads(tmp_path, monkeypatch):
    demo = pytest.importorskip("TorchEsegetaLib.models.demo")
    if not demo.demo_weights_path().is_file():  # weights not trained yet: use random ones
        weights = tmp_path / "demo.pt"
        torch.save(UNet(**demo.DEMO_NETWORK_KWARGS).state_dict(), weights)
        monkeypatch.setattr(demo, "demo_weights_path", lambda: weights)
    loaded = load_model({"kind": "demo"})
    assert loaded.card.class_names == ["background", "vessel"]
    assert loaded.sha256 == hashlib.sha256(demo.demo_weights_path().read_bytes()).hexdigest()
    json.dumps(loaded.source)
