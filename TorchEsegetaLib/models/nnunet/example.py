"""Build a small nnU-Net v2 trained-model folder with nnU-Net's own code, here, without downloads.

``python -m TorchEsegetaLib.models.nnunet.example DIR`` writes
``DIR/nnUNetTrainer__nnUNetPlans__3d_fullres/`` (dataset.json, plans.json,
dataset_fingerprint.json, fold_N/checkpoint_final.pth) and ``DIR/input/image.nii.gz``, a demo-like
vessel volume to explain it on. Every file comes from nnU-Net v2's own code: its raw-dataset
format, its fingerprint extractor, its experiment planner (with fewer features per stage so the
network is small), its trainer's network construction, weight initialisation and
``save_checkpoint``. With ``--train-iterations N`` the network is trained for N steps on the
synthetic vessel volumes through nnU-Net's own preprocessing and training step; without it the
weights are nnU-Net's random initialisation, and the segmentation is meaningless (but it is
exactly what nnU-Net computes with those weights, which is what the tests check).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...io.volume import Geometry, Volume

DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID:03d}_TorchEsegetaVessels"


@contextlib.contextmanager
def nnunet_environment(root: Path) -> Iterator[dict[str, Path]]:
    """nnU-Net's three folders (raw, preprocessed, results) under ``root``, set in the
    environment variables nnU-Net reads for the duration of the block."""
    folders = {
        name: root / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    }
    settings = {name: str(folder) for name, folder in folders.items()}
    saved = {name: os.environ.get(name) for name in settings}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    os.environ.update(settings)
    try:
        yield folders
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _in_process_pools() -> Iterator[None]:
    """Run nnU-Net's ``multiprocessing.get_context('spawn').Pool`` as a thread pool: a spawned
    worker re-imports torch and nnU-Net (many seconds on a small machine) for a job that takes
    milliseconds on these tiny volumes. The pool's interface, workers included, stays the same."""
    import multiprocessing
    from multiprocessing.pool import ThreadPool

    class _Context:
        Pool = ThreadPool

    original = multiprocessing.get_context
    multiprocessing.get_context = lambda method=None: _Context()  # type: ignore[assignment]
    try:
        yield
    finally:
        multiprocessing.get_context = original


def write_raw_dataset(
    raw: Path,
    cases: Sequence[tuple[Volume, np.ndarray]],
    labels: dict[str, int],
    channel_names: Sequence[str],
) -> Path:
    """nnU-Net's raw dataset format: imagesTr/case_XXX_000C.nii.gz, labelsTr/case_XXX.nii.gz,
    dataset.json."""
    from ...io.images import write_volume

    folder = raw / DATASET_NAME
    for index, (volume, label) in enumerate(cases):
        for channel in range(volume.channels):
            write_volume(
                volume.array[channel],
                volume.geometry,
                folder / "imagesTr" / f"case_{index:03d}_{channel:04d}.nii.gz",
            )
        write_volume(
            label, volume.geometry, folder / "labelsTr" / f"case_{index:03d}.nii.gz", np.uint8
        )
    dataset = {
        "channel_names": {str(i): name for i, name in enumerate(channel_names)},
        "labels": dict(labels),
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    return folder


def plan_dataset(base_features: int = 4, max_features: int = 16) -> dict[str, Any]:
    """nnU-Net's fingerprint and experiment planning of the raw dataset; returns the plans.

    The planner is nnU-Net's default one with fewer features per stage (nnU-Net's defaults are 32
    to 320, far too large for the test volumes)."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
        ExperimentPlanner,
    )

    with _in_process_pools():
        extractor = DatasetFingerprintExtractor(DATASET_ID, num_processes=1)
        extractor.show_progress_bar = False
        extractor.run()
    planner = ExperimentPlanner(DATASET_ID)
    planner.UNet_base_num_features = base_features
    planner.UNet_max_features_3d = max_features
    planner.UNet_max_features_2d = max_features
    with contextlib.redirect_stdout(sys.stderr):
        planner.plan_experiment()
    return json.loads(_plans_file().read_text(encoding="utf-8"))


def _plans_file() -> Path:
    return Path(os.environ["nnUNet_preprocessed"]) / DATASET_NAME / "nnUNetPlans.json"


def save_fold(
    folder: Path,
    plans: dict[str, Any],
    dataset_json: dict[str, Any],
    configuration: str,
    fold: int | str,
    trainer_name: str = "nnUNetTrainer",
    seed: int = 0,
    train_iterations: int = 0,
) -> Path:
    """One fold's checkpoint_final.pth written by nnU-Net's trainer: its network, its weight
    initialisation (seeded), its checkpoint format; trained for ``train_iterations`` steps."""
    import torch

    from .analysis import trainer_class

    trainer_type = trainer_class(trainer_name)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(sys.stderr):
        trainer = trainer_type(
            dict(plans, continue_training=False),
            configuration,
            fold,
            dataset_json,
            device=torch.device("cpu"),
        )
        if train_iterations:
            # nnU-Net's own training loop, shortened: one epoch of that many steps, one
            # validation step; it writes checkpoint_final.pth (and checkpoint_best.pth)
            trainer.num_epochs = 1
            trainer.num_iterations_per_epoch = train_iterations
            trainer.num_val_iterations_per_epoch = 1
            os.environ["nnUNet_n_proc_DA"] = "0"  # augmentation in this process, no workers
            try:
                trainer.run_training()
            finally:
                os.environ.pop("nnUNet_n_proc_DA")
        else:
            trainer.initialize()
            # sets inference_allowed_mirroring_axes exactly as training would
            trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            Path(trainer.output_folder).mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
    path = Path(trainer.output_folder) / "checkpoint_final.pth"
    return path


def build_model_folder(
    root: Path,
    cases: Sequence[tuple[Volume, np.ndarray]],
    folds: Sequence[int | str] = (0,),
    trainer_name: str = "nnUNetTrainer",
    configuration: str = "3d_fullres",
    labels: dict[str, int] | None = None,
    channel_names: Sequence[str] = ("MRA",),
    base_features: int = 4,
    max_features: int = 16,
    seed: int = 0,
    train_iterations: int = 0,
    plans_edit: Any = None,
) -> Path:
    """An nnU-Net v2 trained-model folder under ``root``/nnUNet_results, made by nnU-Net's code.

    ``plans_edit(plans)`` may change the planner's plans (e.g. a smaller patch size) before the
    networks are built. Returns the model folder (``Trainer__Plans__configuration``).
    """
    root = Path(root)
    labels = labels or {"background": 0, "vessel": 1}
    with nnunet_environment(root) as env:
        raw = write_raw_dataset(env["nnUNet_raw"], cases, labels, channel_names)
        plans = plan_dataset(base_features, max_features)
        if plans_edit is not None:
            plans_edit(plans)
        preprocessed = env["nnUNet_preprocessed"] / DATASET_NAME
        _plans_file().write_text(json.dumps(plans, indent=2), encoding="utf-8")
        dataset_json = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
        _preprocess(configuration)  # the trainer reads the preprocessed cases' format
        checkpoint = None
        for index, fold in enumerate(folds):
            checkpoint = save_fold(
                preprocessed,
                plans,
                dataset_json,
                configuration,
                fold,
                trainer_name,
                seed + index,
                train_iterations,
            )
        assert checkpoint is not None, "at least one fold"
        model = checkpoint.parent.parent
        # What nnU-Net's training writes next to the folds (nnUNetTrainer.on_train_start).
        (model / "dataset.json").write_text(json.dumps(dataset_json, indent=2), encoding="utf-8")
        (model / "plans.json").write_text(json.dumps(plans, indent=2), encoding="utf-8")
        fingerprint = (preprocessed / "dataset_fingerprint.json").read_text(encoding="utf-8")
        (model / "dataset_fingerprint.json").write_text(fingerprint, encoding="utf-8")
    return model


def _preprocess(configuration: str) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    with _in_process_pools(), contextlib.redirect_stdout(sys.stderr):
        preprocess_dataset(
            DATASET_ID, configurations=(configuration,), num_processes=(1,), show_progress_bar=False
        )


def vessel_cases(
    count: int, shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 100
) -> list[tuple[Volume, np.ndarray]]:
    """Synthetic MRA-like vessel volumes (the demo's generator) with their labels."""
    from ..demo.synthetic import make_vessel_volume

    cases = []
    for index in range(count):
        image, label = make_vessel_volume(shape, seed + index)
        cases.append((Volume(image, Geometry(size=shape, spacing=spacing)), label))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m TorchEsegetaLib.models.nnunet.example",
        description="Build a small nnU-Net v2 model folder with nnU-Net's own code (no downloads).",
    )
    parser.add_argument("out", type=Path, help="folder to write (the model folder goes inside)")
    parser.add_argument("--folds", default="0,1", help="comma-separated folds (default 0,1)")
    parser.add_argument(
        "--train-iterations",
        type=int,
        default=0,
        help="nnU-Net training steps on synthetic vessel volumes (default 0: random weights)",
    )
    parser.add_argument(
        "--no-mirroring",
        action="store_true",
        help="train with nnUNetTrainerNoMirroring (no test-time mirroring)",
    )
    args = parser.parse_args(argv)
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        print('this example needs nnU-Net v2: pip install "torchesegeta[nnunet]"', file=sys.stderr)
        return 2
    from ...io.images import write_volume

    out = args.out.expanduser().absolute()
    shape, spacing = (48, 48, 32), (0.6, 0.6, 0.9)
    with tempfile.TemporaryDirectory() as work:
        model = build_model_folder(
            Path(work),
            vessel_cases(5, shape, spacing),  # nnU-Net splits 5 folds
            folds=[int(f) if f != "all" else f for f in args.folds.split(",")],
            trainer_name="nnUNetTrainerNoMirroring" if args.no_mirroring else "nnUNetTrainer",
            train_iterations=args.train_iterations,
        )
        target = out / model.name
        if target.exists():
            print(f"{target} already exists; choose another folder", file=sys.stderr)
            return 2
        target.parent.mkdir(parents=True, exist_ok=True)
        import shutil

        shutil.copytree(model, target)
    ((volume, _label),) = vessel_cases(1, (64, 64, 40), spacing, seed=7)
    write_volume(volume.array[0], volume.geometry, out / "input" / "image.nii.gz")
    weights = (
        f"trained {args.train_iterations} steps" if args.train_iterations else "RANDOM weights"
    )
    print(f"wrote {target} ({weights}) and {out / 'input' / 'image.nii.gz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
