"""The built-in demo: synthetic generator, demo input, card and committed weights."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from TorchEsegetaLib.models.demo import (
    DEMO_NETWORK_KWARGS,
    DEMO_SEED,
    DEMO_SHAPE,
    build_demo_network,
    demo_card,
    demo_volume,
    demo_weights_path,
    make_vessel_volume,
)
from TorchEsegetaLib.models.demo.train import HELDOUT_SEEDS, TRAIN_SEEDS


@pytest.fixture(scope="module")
def demo():
    return demo_volume()


@pytest.fixture(scope="module")
def record():
    return json.loads(demo_weights_path().with_suffix(".json").read_text())


def test_generator_is_deterministic():
    first, second, other = (make_vessel_volume((32, 32, 32), seed) for seed in (3, 3, 4))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("seed", [0, 1000, 2000])
def test_generated_volume_looks_like_an_mra(seed):
    image, label = make_vessel_volume(DEMO_SHAPE, seed)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert image.shape == label.shape == DEMO_SHAPE
    assert set(np.unique(label)) == {0, 1}
    assert 0.015 <= label.mean() <= 0.07
    assert 0.0 <= image.min() and image.max() <= 1000.0
    assert image[label == 1].mean() > 2.5 * image[label == 0].mean()


def test_demo_volume_geometry(demo):
    volume, label = demo
    assert volume.array.shape == (1, *DEMO_SHAPE) and volume.array.dtype == np.float32
    assert label.shape == DEMO_SHAPE
    assert volume.geometry.size == DEMO_SHAPE
    assert volume.geometry.spacing == (0.6, 0.6, 0.8)
    assert any(volume.geometry.origin)
    np.testing.assert_array_equal(volume.geometry.direction_matrix, np.eye(3))
    np.testing.assert_array_equal(label, make_vessel_volume(DEMO_SHAPE, DEMO_SEED)[1])


def test_demo_input_was_never_trained_on():
    assert DEMO_SEED not in TRAIN_SEEDS and DEMO_SEED not in HELDOUT_SEEDS
    assert not set(TRAIN_SEEDS) & set(HELDOUT_SEEDS)


def test_demo_card():
    card = demo_card()
    assert card.class_names == ["background", "vessel"]
    assert card.activation == "softmax"
    assert card.intensity["kind"] == "zscore"
    assert card.roi_size is None and card.spacing is None
    assert card.size_divisible == int(np.prod(DEMO_NETWORK_KWARGS["strides"]))
    assert all(s % card.size_divisible == 0 for s in DEMO_SHAPE)


def test_weights_are_small_and_match_their_record(record):
    path = demo_weights_path()
    assert path.stat().st_size < 1_000_000
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["weights_sha256"]
    assert record["network_kwargs"] == {
        k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_NETWORK_KWARGS.items()
    }


def test_demo_network_segments_the_demo_volume(demo, record):
    import torch

    volume, label = demo
    network = build_demo_network()
    assert not network.training
    image = volume.array
    normalised = (image - image.mean()) / image.std()
    with torch.no_grad():
        logits = network(torch.from_numpy(normalised)[None])
    assert logits.shape == (1, 2, *DEMO_SHAPE)
    prediction = logits.argmax(1)[0].numpy()
    dice = (
        2.0
        * np.logical_and(prediction == 1, label == 1).sum()
        / ((prediction == 1).sum() + label.sum())
    )
    assert dice >= record["heldout_vessel_dice_mean"] - 0.1


def test_importing_the_demo_does_not_import_torch():
    code = "import sys, TorchEsegetaLib.models.demo; print('torch' in sys.modules or 'monai' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    assert result.stdout.strip() == "False"


def test_demo_scores_its_maps_against_its_ground_truth(tmp_path, capsys):
    from TorchEsegetaLib.cli import main
    from TorchEsegetaLib.io.images import read_volume

    out = tmp_path / "demo"
    command = ["demo", "--method", "saliency", "--evaluate", "relevance_rank_accuracy"]
    assert main([*command, "--out", str(out), "--quiet"]) == 0
    truth_path = tmp_path / "demo-input" / "vessels_truth.nii.gz"
    record = json.loads((out / "run.json").read_text())
    assert record["job"]["metrics"] == [
        {"name": "relevance_rank_accuracy", "params": {"reference": str(truth_path)}}
    ]
    score = record["metrics"]["scores"]["saliency"]["relevance_rank_accuracy"]
    assert "no reference mask" not in capsys.readouterr().out
    # The same number from the files: the share of the K largest |map| voxels inside the
    # K-voxel ground truth.
    truth = read_volume(truth_path).array[0] > 0
    values = np.abs(read_volume(out / "saliency.nii.gz").array[0]).ravel()
    top = np.argsort(-values, kind="stable")[: int(truth.sum())]
    assert score == pytest.approx(truth.ravel()[top].mean(), abs=2 / truth.sum())
    assert 3 * truth.mean() < score <= 1.0  # far above chance: K random voxels score the share
    # Evaluating the folder again reuses the reference the demo recorded.
    assert main(["evaluate", str(out), "--metric", "relevance_rank_accuracy", "--quiet"]) == 0
    again = json.loads((out / "run.json").read_text())["metrics"]["scores"]["saliency"]
    assert again["relevance_rank_accuracy"] == score
