"""Our nnU-Net pipeline against nnU-Net's own nnUNetPredictor, and its explanations.

    python benchmarks/nnunet.py                        # about 20 minutes on 2 cores
    python benchmarks/nnunet.py --whole-steps 0        # agreement, speed, one fold: 5 minutes


A 2-fold, mirrored nnU-Net v2 model folder is made with nnU-Net's own code (random weights,
nnU-Net's planner with 8 to 32 features per stage) on synthetic vessel volumes, then run on an
anisotropic, obliquely oriented image (with a zero slab nnU-Net crops away) by nnUNetPredictor
and by TorchEsegeta. Printed: Dice of the labelmaps, the largest probability difference, the
segmentation time of each (best of three, same threads), and integrated gradients' completeness
error (sum of the map against the score change from the zero baseline) through the whole
pipeline (2 folds, mirroring; ``--whole-steps``, 0 skips it: each step runs every window of
both folds in all mirrorings, forward and backward) and through one fold without mirroring
(``explain_fold``, ``--fold-steps``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from TorchEsegetaLib.io.volume import Geometry, Volume  # noqa: E402
from TorchEsegetaLib.methods import ScoreModel  # noqa: E402
from TorchEsegetaLib.methods.baselines import make_baseline  # noqa: E402
from TorchEsegetaLib.models.demo.synthetic import make_vessel_volume  # noqa: E402
from TorchEsegetaLib.models.inference import segment  # noqa: E402
from TorchEsegetaLib.models.loading import load_model  # noqa: E402
from TorchEsegetaLib.models.nnunet.example import build_model_folder, vessel_cases  # noqa: E402
from TorchEsegetaLib.models.nnunet.reference import nnunet_predict  # noqa: E402
from TorchEsegetaLib.runs.job import MethodSpec  # noqa: E402
from TorchEsegetaLib.runs.runner import explain_volume, prepare_case  # noqa: E402
from TorchEsegetaLib.targets.spec import TargetSpec  # noqa: E402

SHAPE = (24, 40, 44)
SPACING = (2.2, 0.7, 0.62)


def test_volume() -> Volume:
    image, _ = make_vessel_volume(SHAPE, 11)
    image[:3] = 0
    c, s = np.cos(0.4), np.sin(0.4)
    direction = (c, 0, s, 0, 1, 0, -s, 0, c)
    return Volume(image, Geometry(SHAPE, SPACING, (10.0, -4.0, 2.5), direction))


def best_of(runs: int, function):
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def completeness(folder: Path, volume: Volume, steps: int, **ref) -> tuple[float, float]:
    model = load_model({"kind": "nnunet", "path": str(folder), "folds": [0, 1], **ref})
    target = TargetSpec.parse("class:vessel")
    method = MethodSpec.from_any({"name": "integrated_gradients", "params": {"n_steps": steps}})
    start = time.perf_counter()
    result = explain_volume(volume, model, target, [method], device="cpu")
    seconds = time.perf_counter() - start
    case = prepare_case(volume, model, target, torch.device("cpu"))
    score = ScoreModel(case.forward, case.bound)
    with torch.no_grad():
        delta = float(score(case.x) - score(make_baseline("zero", case.x)))
    total = float(result.maps["integrated_gradients"].sum())
    return abs(total - delta) / abs(delta), seconds


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--whole-steps", type=int, default=16, help="IG steps, whole pipeline")
    parser.add_argument("--fold-steps", type=int, default=128, help="IG steps, explain_fold 0")
    args = parser.parse_args(argv)
    volume = test_volume()
    with tempfile.TemporaryDirectory() as work:
        folder = build_model_folder(
            Path(work),
            vessel_cases(4, (20, 32, 36), (2.0, 0.7, 0.6)),
            folds=(0, 1),
            base_features=8,
            max_features=32,
        )
        model = load_model({"kind": "nnunet", "path": str(folder), "folds": [0, 1]})
        model.network.bind_geometry(volume.geometry)
        windows = len(model.network.analyse(volume.array).windows)
        theirs_s, (labels, probabilities) = best_of(
            3, lambda: nnunet_predict(folder, volume, [0, 1], mirroring=True)
        )
        ours_s, ours = best_of(3, lambda: segment(model, volume))
        overlap = np.logical_and(labels > 0, ours.labelmap > 0).sum()
        dice = 2 * overlap / ((labels > 0).sum() + (ours.labelmap > 0).sum())
        print(
            f"image {SHAPE} at {SPACING} mm (oblique), 2 folds, mirroring, {windows} windows, "
            f"{torch.get_num_threads()} threads"
        )
        print(
            f"labelmap Dice vs nnUNetPredictor: {dice:.6f}; voxels differing: {(labels != ours.labelmap).sum()}"
        )
        print(
            f"max |probability difference|: {np.abs(ours.probabilities - probabilities).max():.3g}"
        )
        print(
            f"segmentation: ours {ours_s:.2f} s, nnUNetPredictor {theirs_s:.2f} s "
            f"(ratio {ours_s / theirs_s:.2f})"
        )
        for label, ref, steps in (
            ("whole pipeline (2 folds, mirroring)", {}, args.whole_steps),
            ("explain_fold 0 (one fold, no mirroring)", {"explain_fold": 0}, args.fold_steps),
        ):
            if steps <= 0:
                continue
            error, seconds = completeness(folder, volume, steps, **ref)
            print(
                f"integrated gradients ({steps} steps), {label}: completeness error "
                f"{error:.2%}, {seconds:.1f} s"
            )


if __name__ == "__main__":
    main()
