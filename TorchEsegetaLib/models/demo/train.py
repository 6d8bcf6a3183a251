"""Reproduce the demo weights: ``python -m TorchEsegetaLib.models.demo.train``.

Trains the demo UNet on synthetic volumes (seeds ``TRAIN_SEEDS``) with random patches,
z-scored as the model card prescribes, Dice + cross-entropy, Adam with a cosine schedule and a
fixed number of iterations; then measures the vessel Dice on held-out volumes (seeds
``HELDOUT_SEEDS``) run whole, as the engine runs the demo. Writes ``weights/demo_unet.pt``
(a float32 state_dict) and ``weights/demo_unet.json`` (how it was made, and how good it is).
A few minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from . import (
    DEMO_INTENSITY,
    DEMO_NETWORK,
    DEMO_NETWORK_KWARGS,
    DEMO_SEED,
    DEMO_SHAPE,
    demo_weights_path,
)
from .synthetic import make_vessel_volume

SEED = 0
TRAIN_SEEDS = range(1000, 1040)
HELDOUT_SEEDS = range(2000, 2010)
ITERATIONS = 600
BATCH_SIZE = 4
PATCH_SIZE = (40, 40, 40)
LEARNING_RATE = 3e-3
THREADS = 2


def zscore(image: np.ndarray) -> np.ndarray:
    """The model card's intensity preprocessing, as the engine applies it to a whole volume."""
    from monai.transforms import NormalizeIntensity

    normalise = NormalizeIntensity(
        nonzero=DEMO_INTENSITY["nonzero"], channel_wise=DEMO_INTENSITY["channel_wise"]
    )
    return np.asarray(normalise(image[None]), dtype=np.float32)


def vessel_dice(prediction: np.ndarray, label: np.ndarray) -> float:
    """Dice of two binary masks (1.0 when both are empty)."""
    total = int(prediction.sum()) + int(label.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(prediction, label).sum()) / total


def segment(network, image: np.ndarray) -> np.ndarray:
    """Argmax labelmap of one raw (I, J, K) volume, run whole."""
    import torch

    with torch.no_grad():
        logits = network(torch.from_numpy(zscore(image))[None])
    return logits.argmax(1)[0].numpy().astype(np.uint8)


def evaluate(network, seeds) -> dict[int, float]:
    """Vessel Dice of the network on the synthetic volumes of ``seeds``."""
    network.eval()
    scores = {}
    for seed in seeds:
        image, label = make_vessel_volume(DEMO_SHAPE, seed)
        scores[seed] = vessel_dice(segment(network, image), label)
    return scores


def _patches(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray):
    """A batch of random patches with random flips and axis permutations."""
    batch_images, batch_labels = [], []
    for _ in range(BATCH_SIZE):
        index = rng.integers(len(images))
        corner = [rng.integers(s - p + 1) for s, p in zip(DEMO_SHAPE, PATCH_SIZE)]
        window = (slice(None),) + tuple(slice(c, c + p) for c, p in zip(corner, PATCH_SIZE))
        image, label = images[index][window], labels[index][window]
        flips = tuple(1 + axis for axis in range(3) if rng.random() < 0.5)
        order = (0, *(1 + rng.permutation(3)))
        batch_images.append(np.flip(image, flips).transpose(order))
        batch_labels.append(np.flip(label, flips).transpose(order))
    return np.ascontiguousarray(batch_images), np.ascontiguousarray(batch_labels)


def training_set() -> tuple[np.ndarray, np.ndarray]:
    """The z-scored training images (N, 1, *DEMO_SHAPE) and their labels, as :func:`fit` takes them."""
    volumes = [make_vessel_volume(DEMO_SHAPE, seed) for seed in TRAIN_SEEDS]
    images = np.stack([zscore(image) for image, _ in volumes])
    labels = np.stack([label[None].astype(np.int64) for _, label in volumes])
    return images, labels


def fit(network, iterations: int = ITERATIONS, data: tuple | None = None) -> float:
    """Train ``network`` (2 output channels) as the demo is trained; returns the seconds it took.

    The patch sampler is seeded with :data:`SEED`; call :func:`seed_training` before building
    the network so that its initial weights are reproducible too. ``benchmarks/artefacts.py``
    trains other architectures with it.
    """
    import torch
    from monai.losses import DiceCELoss

    rng = np.random.default_rng(SEED)
    images, labels = data if data is not None else training_set()
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=iterations)

    start = time.perf_counter()
    network.train()
    for iteration in range(1, iterations + 1):
        batch_images, batch_labels = _patches(rng, images, labels)
        optimiser.zero_grad()
        loss = loss_function(
            network(torch.from_numpy(batch_images)), torch.from_numpy(batch_labels)
        )
        loss.backward()
        optimiser.step()
        schedule.step()
        if iteration % 50 == 0 or iteration == iterations:
            print(f"iteration {iteration}/{iterations}: loss {loss.item():.4f}", flush=True)
    return time.perf_counter() - start


def seed_training() -> None:
    """The demo training's torch settings: its seed, deterministic algorithms, its threads."""
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)


def train(iterations: int = ITERATIONS, output: Path | None = None) -> dict:
    """Train the demo network, save its weights and record; returns the record."""
    import monai
    import torch
    from monai.networks.nets import UNet

    seed_training()
    output = Path(output) if output is not None else demo_weights_path()
    data = training_set()
    network = UNet(**DEMO_NETWORK_KWARGS)
    training_seconds = fit(network, iterations, data)

    heldout = evaluate(network, HELDOUT_SEEDS)
    demo = evaluate(network, [DEMO_SEED])[DEMO_SEED]
    output.parent.mkdir(parents=True, exist_ok=True)
    state = {
        name: value.detach().float() if value.is_floating_point() else value.detach()
        for name, value in network.state_dict().items()
    }
    torch.save(state, output)
    record = {
        "network": DEMO_NETWORK,
        "network_kwargs": {
            k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_NETWORK_KWARGS.items()
        },
        "parameters": sum(p.numel() for p in network.parameters()),
        "intensity": DEMO_INTENSITY,
        "seed": SEED,
        "train_seeds": [TRAIN_SEEDS.start, TRAIN_SEEDS.stop - 1],
        "heldout_seeds": [HELDOUT_SEEDS.start, HELDOUT_SEEDS.stop - 1],
        "demo_seed": DEMO_SEED,
        "iterations": iterations,
        "batch_size": BATCH_SIZE,
        "patch_size": list(PATCH_SIZE),
        "learning_rate": LEARNING_RATE,
        "loss": "DiceCELoss(to_onehot_y=True, softmax=True)",
        "threads": THREADS,
        "training_seconds": round(training_seconds, 1),
        "heldout_vessel_dice_mean": round(float(np.mean(list(heldout.values()))), 4),
        "heldout_vessel_dice": {str(seed): round(score, 4) for seed, score in heldout.items()},
        "demo_vessel_dice": round(demo, 4),
        "weights_sha256": hashlib.sha256(output.read_bytes()).hexdigest(),
        "torch": torch.__version__,
        "monai": monai.__version__,
    }
    output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument(
        "--output", type=Path, default=None, help="weights file (default: the package's)"
    )
    args = parser.parse_args(argv)
    record = train(args.iterations, args.output)
    print(
        f"held-out vessel Dice {record['heldout_vessel_dice_mean']:.3f}, demo {record['demo_vessel_dice']:.3f}, "
        f"{record['training_seconds']:.0f} s of training"
    )


if __name__ == "__main__":
    main()
