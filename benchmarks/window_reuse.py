"""Exact window reuse against recomputing every window (issue 22, goals 1 to 3).

    python benchmarks/bench.py --cases window-reuse      # MONAI sliding windows: a few minutes
    python benchmarks/bench.py --cases nnunet-reuse      # nnU-Net example folder: about 10 min

MONAI: occlusion on a sliding-window model against captum's Occlusion through MONAI's inferer,
feature ablation and Kernel SHAP against themselves recomputing every window. nnU-Net: occlusion
on the example folder (two folds, mirroring along three axes) against our own occlusion through
the full pipeline, and the network inputs each would run on larger inputs (counted, not timed).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from measure import Table, WholeInference, max_rel_diff, peak_mb, reset_peak, sync

from TorchEsegetaLib.engine.context import Context
from TorchEsegetaLib.methods import create_method
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import SegmentationForward
from TorchEsegetaLib.targets.bound import BoundTarget


class Float64Sum(BoundTarget):
    """The target with its voxel shares summed in float64 (for the references: a float32 sum
    over the whole volume rounds by more than 1e-5 of the largest score drop)."""

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.voxel_scores(logits).double().flatten(1).sum(dim=1)

    @classmethod
    def of(cls, target: BoundTarget) -> Float64Sum:
        """The same fields as ``target`` (a bound target of a prepared case)."""
        import dataclasses

        return cls(**{f.name: getattr(target, f.name) for f in dataclasses.fields(target)})


def window_reuse_cases(device: torch.device, table: Table, smoke: bool = False) -> None:
    """Issue 22, goals 1 and 3: perturbation methods on a MONAI sliding-window model (128 x 128
    x 64, 32^3 windows, overlap 0.25; a small UNet so that the references take minutes on a
    CPU), whole-volume class target. Occlusion (window 16, stride 16) against captum's
    Occlusion through MONAI's inferer; feature ablation over supervoxels and Kernel SHAP
    against the same methods recomputing every window. One run each (no warm-up)."""
    from captum.attr import Occlusion
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    network = UNet(3, 1, 2, channels=(2, 4), strides=(2,), num_res_units=0).eval().to(device)
    shape, roi, box = ((48, 48, 32), (16, 16, 16), 8) if smoke else ((128, 128, 64), (32,) * 3, 16)
    card = ModelCard(in_channels=1, out_channels=2, roi_size=roi, overlap=0.25, sw_batch_size=8)
    forward = SegmentationForward(network, card)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand((1, 1, *shape), generator=generator).to(device)
    with torch.no_grad():
        logits = forward(x)
    region = logits[0].argmax(dim=0) == 1
    target = BoundTarget(1, region, "logits", "softmax", "mean")
    reference_target = Float64Sum(1, region, "logits", "softmax", "mean")
    print(f"  window reuse: class target of {int(region.sum()):,} voxels", flush=True)

    def inferer(v: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(v, roi, card.sw_batch_size, network, overlap=0.25)

    def run(method: Any, model: Any, bound: BoundTarget) -> tuple[float, torch.Tensor, Context]:
        context = Context(device=device)
        reset_peak(device)
        began = time.perf_counter()
        result = method.attribute(model, x, bound, context)
        sync(device)
        context.facts["peak_mb"] = peak_mb(device)
        return time.perf_counter() - began, result, context

    def skipped(context: Context) -> str:
        record = context.facts["window_reuse"]
        ran, skip = record["windows_run"], record["windows_skipped"]
        cache = record["cache_bytes"] / 2**20
        return f"{skip / (ran + skip):.1%} of windows skipped ({ran:,} run), cache {cache:.1f} MB"

    occlusion = create_method("occlusion", {"window": box, "stride": box, "cover_edges": False})
    t_ours, ours, context = run(occlusion, forward, target)
    reset_peak(device)
    began = time.perf_counter()
    reference = Occlusion(lambda v: reference_target(inferer(v))).attribute(
        x,
        sliding_window_shapes=(1, box, box, box),
        strides=(1, box, box, box),
        baselines=0.0,
        perturbations_per_eval=4,
    )
    sync(device)
    t_reference = time.perf_counter() - began
    table.add(
        f"occlusion {box}/{box}, class, {'x'.join(map(str, shape))}, reuse",
        t_ours,
        t_reference,
        "captum Occlusion through inferer",
        None,
        context.facts["peak_mb"],
        max_rel_diff(ours, reference),
    )
    table.add("  reference memory", t_reference, t_reference, "", None, peak_mb(device), None)
    print(f"  speed-up {t_reference / t_ours:.1f}x; {skipped(context)}", flush=True)

    for name, params in (
        ("feature_ablation", {"features": "supervoxels", "feature_size": 32}),
        ("kernel_shap", {"features": "supervoxels", "feature_size": 32, "n_samples": 64}),
    ):
        method = create_method(name, params)
        t_ours, ours, context = run(method, forward, target)
        t_full, full, _ = run(method, WholeInference(forward), reference_target)
        table.add(
            f"{name}, supervoxels 32, reuse",
            t_ours,
            t_full,
            "same, every window recomputed",
            None,
            context.facts["peak_mb"],
            max_rel_diff(ours, full),
        )
        print(f"  saving {1 - t_ours / t_full:.0%}; {skipped(context)}", flush=True)


def nnunet_reuse_cases(
    device: torch.device,
    table: Table,
    folder: Path | None = None,
    smoke: bool = False,
    shape: tuple[int, int, int] | None = None,
) -> None:
    """Issue 22, goal 2: occlusion (window 16, stride 16; smoke: 8 on a small folder) with a
    whole-volume class target on the nnU-Net example folder's model and input (2 folds,
    mirroring along three axes), against our occlusion through the full pipeline (every
    window of both folds in all eight mirrorings per box). One run each. ``shape``: instead of
    the folder's input, a synthetic vessel volume of that shape at the folder input's spacing.
    Then, for the same model on larger inputs, the network inputs each would run (the
    estimate, which is exact without resampling): window reuse saves more as an input spans
    more windows."""
    import numpy as np

    from TorchEsegetaLib.io.images import read_volume
    from TorchEsegetaLib.io.volume import Geometry, Volume
    from TorchEsegetaLib.models.demo.synthetic import make_vessel_volume
    from TorchEsegetaLib.models.loading import load_model
    from TorchEsegetaLib.runs.case import prepare_case
    from TorchEsegetaLib.targets.spec import TargetSpec

    keep = tempfile.TemporaryDirectory(prefix="torchesegeta-bench-nnunet-")
    if folder is None:
        folder = build_example(Path(keep.name), smoke)
    model_folder = next(folder.glob("nnUNetTrainer__*"))
    volume = read_volume(folder / "input" / "image.nii.gz")
    if shape is not None:
        image, _ = make_vessel_volume(shape, 7)
        volume = Volume(image, Geometry(shape, volume.geometry.spacing))
    model = load_model({"kind": "nnunet", "path": str(model_folder), "folds": [0, 1]})
    case = prepare_case(volume, model, TargetSpec.parse("class:vessel"), device)
    pipeline = case.forward.network
    spatial = tuple(case.x.shape[2:])
    print(
        f"  nnU-Net reuse: input {'x'.join(map(str, spatial))}, {len(pipeline.case.windows)} windows "
        f"of {'x'.join(map(str, pipeline.plan.patch_size))}, folds {pipeline.explained()[0]}, "
        f"mirror axes {pipeline.mirror_axes}, class target of {case.bound.voxel_count:,} voxels",
        flush=True,
    )
    box = 8 if smoke else 16
    occlusion = create_method("occlusion", {"window": box, "stride": box})
    boxes, _ = occlusion.boxes(spatial, case.forward)
    per_pass = case.forward.windows_per_pass(spatial)
    estimated = case.forward.reused_windows(spatial, boxes)

    def run(model: Any, target: Any) -> tuple[float, torch.Tensor, Context]:
        context = Context(device=device)
        reset_peak(device)
        began = time.perf_counter()
        result = occlusion.attribute(model, case.x, target, context)
        sync(device)
        context.facts["peak_mb"] = peak_mb(device)
        return time.perf_counter() - began, result, context

    t_ours, ours, context = run(case.forward, case.bound)
    t_full, full, full_context = run(WholeInference(case.forward), Float64Sum.of(case.bound))
    record = context.facts["window_reuse"]
    table.add(
        f"occlusion {box}/{box}, nnU-Net 2 folds x 8 mirrorings, reuse",
        t_ours,
        t_full,
        "ours through the full pipeline",
        None,
        context.facts["peak_mb"],
        max_rel_diff(ours, full),
    )
    table.add(
        "  full pipeline memory", t_full, t_full, "", None, full_context.facts["peak_mb"], None
    )
    ran, skipped = record["windows_run"], record["windows_skipped"]
    print(
        f"  speed-up {t_full / t_ours:.2f}x; network inputs: {ran + per_pass:,} with reuse (estimate "
        f"{estimated:,}) against {per_pass * (len(boxes) + 1):,} ({len(boxes)} boxes + the "
        f"unoccluded input, {per_pass} each); {skipped / (ran + skipped):.1%} skipped",
        flush=True,
    )
    # the same model on larger inputs at the plans' spacing: the count of network inputs
    spacing = volume.geometry.spacing
    larger = ((20, 40, 40),) if smoke else ((96, 96, 64), (128, 128, 80), (192, 192, 120))
    for shape in larger:
        image, _ = make_vessel_volume(shape, 7)
        grown = Volume(image, Geometry(shape, spacing))
        pipeline.bind_geometry(grown.geometry)
        pipeline.freeze_statistics(torch.from_numpy(np.asarray(grown.array))[None].float())
        boxes, _ = occlusion.boxes(shape, case.forward)
        per_pass = case.forward.windows_per_pass(shape)
        reused = case.forward.reused_windows(shape, boxes)
        full_count = per_pass * (len(boxes) + 1)
        print(
            f"  {'x'.join(map(str, shape))}: {len(pipeline.case.windows)} windows, {len(boxes)} boxes; "
            f"network inputs {reused:,} with reuse against {full_count:,}: {full_count / reused:.1f}x",
            flush=True,
        )
    keep.cleanup()


def build_example(root: Path, smoke: bool) -> Path:
    """The README's nnU-Net example folder (``python -m TorchEsegetaLib.models.nnunet.example``),
    or for the smoke run a folder on the test suite's small volumes."""
    import subprocess

    from TorchEsegetaLib.models.nnunet.example import build_model_folder, vessel_cases

    if not smoke:
        command = [sys.executable, "-m", "TorchEsegetaLib.models.nnunet.example", str(root)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return root
    from TorchEsegetaLib.io.images import write_volume
    from TorchEsegetaLib.io.volume import Geometry
    from TorchEsegetaLib.models.demo.synthetic import make_vessel_volume

    cases = vessel_cases(3, (10, 16, 18), (2.0, 0.7, 0.6))
    model = build_model_folder(root / "work", cases, (0, 1), base_features=2, max_features=8)
    image, _ = make_vessel_volume((10, 30, 34), 5)
    write_volume(image, Geometry((10, 30, 34), (2.0, 0.7, 0.6)), root / "input" / "image.nii.gz")
    (root / model.name).symlink_to(model)
    return root
