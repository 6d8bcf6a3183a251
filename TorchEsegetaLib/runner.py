"""One runner for every front end: explain a volume in memory, or run a Job into a run folder.

A run folder is written into a hidden temporary sibling and renamed into place only when it is
complete, so a failed or cancelled run leaves nothing half-written, and inputs are only read.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BudgetExceededError, UserInputError
from .job import Job, MethodSpec
from .targets import TargetSpec

if TYPE_CHECKING:
    from .engine import CancelToken
    from .models import LoadedModel
    from .volume import Geometry, Volume

#: progress(event) with event = {"stage", "fraction", "message", ["method", "index", "total"]}.
ProgressHandler = Callable[[dict[str, Any]], None]
RUN_FORMAT_VERSION = 1


@dataclass
class MethodResult:
    """One method's outcome. ``attribution`` is (C, I, J, K) on the input grid, None unless ok."""

    spec: MethodSpec
    status: str
    seconds: float
    signed: bool
    shared_channels: bool
    attribution: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    message: str = ""
    #: {"peak_memory_mb", "memory_kind"} of the method's run (see :mod:`.memory`).
    memory: dict[str, Any] = field(default_factory=dict)

    @property
    def map(self) -> np.ndarray | None:
        """The (I, J, K) map: channels summed, or the common map of channel-shared methods."""
        if self.attribution is None:
            return None
        return self.attribution[0] if self.shared_channels else self.attribution.sum(axis=0)


@dataclass
class ExplainResult:
    """Everything :func:`explain_volume` computed, on the input grid."""

    geometry: Geometry
    image: np.ndarray
    probabilities: np.ndarray
    labelmap: np.ndarray
    target: dict[str, Any]
    region: np.ndarray
    methods: list[MethodResult]
    device: str
    seed: int
    timings: dict[str, float]
    warnings: list[str]
    #: What the run was computed from, kept so it can be evaluated (:func:`.evaluation.evaluate_result`).
    volume: Volume | None = None
    model: LoadedModel | None = None
    target_spec: TargetSpec | None = None
    max_batch: int | None = None

    @property
    def maps(self) -> dict[str, np.ndarray]:
        """label -> (I, J, K) map for every method that succeeded."""
        return {m.spec.label: m.map for m in self.methods if m.attribution is not None}

    def centre(self) -> tuple[int, int, int]:
        """Voxel at the centre of mass of the target region (for slices through it)."""
        points = np.argwhere(self.region)
        if len(points) == 0:
            return tuple(s // 2 for s in self.region.shape)
        centre = np.round(points.mean(axis=0)).astype(int)
        # The centroid of a curved region may fall outside it: take the region voxel nearest to it.
        nearest = points[np.argmin(((points - centre) ** 2).sum(axis=1))]
        return tuple(int(v) for v in nearest)


def _emit(progress: ProgressHandler | None, **event: Any) -> None:
    if progress is not None:
        progress(event)


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def region_on_model_grid(region: np.ndarray, info: Any) -> np.ndarray:
    """Map a bool input-grid region onto the model grid, never losing it to the resampling."""
    if info.identity:
        return region
    import torch
    import torch.nn.functional as F

    mask = torch.from_numpy(region.astype(np.float32))[None, None]
    resized = F.interpolate(mask, size=info.model_shape, mode="trilinear", align_corners=True)[
        0, 0
    ].numpy()
    for threshold in (0.5, 1e-6):
        mapped = resized >= threshold
        if mapped.any():
            return mapped
    # A region smaller than a model voxel: keep the model voxel nearest to its centre.
    centre = np.argwhere(region).mean(axis=0)
    scale = (np.asarray(info.model_shape) - 1) / np.maximum(np.asarray(info.input_shape) - 1, 1)
    mapped = np.zeros(info.model_shape, dtype=bool)
    mapped[
        tuple(np.clip(np.round(centre * scale).astype(int), 0, np.asarray(info.model_shape) - 1))
    ] = True
    return mapped


@dataclass
class PreparedCase:
    """One case ready to be explained or evaluated: the model-grid input, the frozen forward
    and the bound target, exactly as every method sees them."""

    segmentation: Any
    x: Any
    info: Any
    bound: Any
    forward: Any
    input_region: np.ndarray
    target_info: dict[str, Any]


def prepare_case(
    volume: Volume, model: LoadedModel, target: TargetSpec, torch_device: Any
) -> PreparedCase:
    """Segment ``volume``, fix the target on the unperturbed prediction, freeze the statistics."""
    from .inference import (
        SegmentationForward,
        resample_to_model_grid,
        restore_input_grid,
        segment,
    )
    from .targets import bind_target, region_in_input_grid

    segmentation = segment(model, volume, torch_device)
    x, info = resample_to_model_grid(volume, model.card)
    if target.kind == "class":
        model_region = None
    else:
        model_region = region_on_model_grid(region_in_input_grid(target, volume.geometry), info)
    bound = bind_target(target, model.card, segmentation.logits, model_region)
    if target.kind == "class":
        input_region = np.asarray(
            restore_input_grid(bound.region[None, None].float(), info)[0, 0] >= 0.5
        )
    else:
        input_region = region_in_input_grid(target, volume.geometry)
    target_info = {**target.to_dict(), **bound.describe(model.card)}
    forward = SegmentationForward(model.network, model.card).to(torch_device)
    x = x.to(torch_device)
    forward.freeze_statistics(x)
    # Sliding-window models: only the windows that touch the target run (exact; see windows.py).
    forward.restrict_to(bound.region.cpu().numpy())
    if forward.sliding:
        target_info["windows"] = forward.window_usage(x.shape[2:])
    bound.region = bound.region.to(torch_device)
    return PreparedCase(segmentation, x, info, bound, forward, input_region, target_info)


def explain_volume(
    volume: Volume,
    model: LoadedModel,
    target: TargetSpec,
    methods: list[MethodSpec],
    device: str = "auto",
    seed: int = 0,
    max_batch: int | None = None,
    method_budget_s: float | None = None,
    progress: ProgressHandler | None = None,
    cancel: CancelToken | None = None,
    precision: str = "float32",
    crop_margin: int | None = None,
) -> ExplainResult:
    """Segment ``volume``, fix the target, and run each method; all results on the input grid.

    ``crop_margin``: explain a whole-volume model on the target's box grown by this many voxels,
    an approximation measured and recorded (see :mod:`TorchEsegetaLib.cropping`).
    """
    import torch

    from .engine import Context, measure_sample_bytes
    from .inference import PRECISIONS, check_input, resolve_device, restore_input_grid
    from .memory import PeakMemory
    from .methods import ScoreModel

    if precision not in PRECISIONS:
        raise UserInputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if crop_margin is not None and int(crop_margin) < 0:
        raise UserInputError(f"crop_margin must be 0 or more voxels, got {crop_margin}")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    warnings = [
        f"preprocessing step not applied: {step}" for step in model.card.ignored_preprocessing
    ]
    torch_device = resolve_device(device)
    if torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotuned kernels pay off
    check_input(volume, model.card)
    instances = [spec.create() for spec in methods]
    seed_everything(seed)

    _emit(progress, stage="segment", fraction=0.0, message="segmenting")
    case = prepare_case(volume, model, target, torch_device)
    timings["segment"] = time.perf_counter() - started
    segmentation, x, info, bound, forward = (
        case.segmentation,
        case.x,
        case.info,
        case.bound,
        case.forward,
    )
    forward.precision = precision
    for method in instances:  # a method that cannot explain this model fails the run now
        method.preflight(forward, x, bound)
    crop = None
    if crop_margin is not None:
        from .cropping import measure_crop, plan_crop

        crop, why_not = plan_crop(forward, bound.region.cpu().numpy(), int(crop_margin))
        if crop is None:
            warnings.append(why_not)
        else:
            measured = measure_crop(crop, forward, x, bound, torch_device)
            case.target_info["crop"] = measured
            warnings.append(
                f"approximation: explained on a crop of {crop.share:.0%} of the volume (target "
                f"box + {crop.margin} voxels); the target score changes by "
                f"{measured['score']['relative_change']:.1%} and the saliency map by "
                f"{measured['saliency']['relative_l2']:.1%} (relative L2) against the whole "
                "volume; maps are zero outside the crop"
            )
    x_run, bound_run = (x, bound) if crop is None else (crop.take(x), crop.target(bound))
    forward_run = forward if crop is None else forward.on_crop(crop.padding)
    # One sample's memory, measured once, sizes every method's batches to the free memory.
    sample_bytes = (
        None if max_batch else measure_sample_bytes(ScoreModel(forward_run, bound_run), x_run)
    )
    tuned: dict[str, int] = {}  # the fastest batch size, found by the first method, kept for all

    def on_input_grid(method: Any, context: Any) -> np.ndarray:
        attribution = method.attribute(forward_run, x_run, bound_run, context).detach().float()
        if crop is not None:
            attribution = crop.paste(attribution)
        return restore_input_grid(attribution, info)[0].cpu().numpy()

    results: list[MethodResult] = []
    try:
        for index, (spec, method) in enumerate(zip(methods, instances)):

            def report(fraction: float, message: str, spec=spec, index=index) -> None:
                _emit(
                    progress,
                    stage="method",
                    method=spec.label,
                    index=index,
                    total=len(methods),
                    fraction=fraction,
                    message=message,
                )

            report(0.0, f"{spec.label}: starting")

            context = Context(
                device=torch_device,
                max_batch=max_batch,
                progress=report,
                cancel=cancel,
                budget_s=method_budget_s,
                seed=seed + index,
                sample_bytes=sample_bytes,
                tuned=tuned,
            )
            seed_everything(seed + index)
            t0 = time.perf_counter()
            result = MethodResult(spec, "ok", 0.0, bool(method.signed), method.shared_channels)
            try:
                with PeakMemory(torch_device) as peak:
                    restored = on_input_grid(method, context)
                    if precision != "float32" and not np.isfinite(restored).all():
                        context.notes.append(
                            f"non-finite values in {precision}: recomputed in float32"
                        )
                        forward_run.precision = "float32"
                        try:
                            restored = on_input_grid(method, context)
                        finally:
                            forward_run.precision = precision
                result.memory = peak.record()
                if not np.isfinite(restored).all():
                    raise UserInputError(
                        f"method {spec.label} produced NaN or Inf values; check the model and input, "
                        "or lower the method's noise/step parameters"
                    )
                result.attribution = restored.astype(np.float32)
            except BudgetExceededError as e:
                result.status, result.message = "timed out", str(e)
            result.seconds = time.perf_counter() - t0
            result.notes = list(context.notes)
            results.append(result)
            timings[spec.label] = result.seconds
            report(1.0, f"{spec.label}: {result.status} in {result.seconds:.1f} s")
    finally:
        model.network.to("cpu")
    timings["total"] = time.perf_counter() - started
    return ExplainResult(
        geometry=volume.geometry,
        image=volume.array[0],
        probabilities=segmentation.probabilities,
        labelmap=segmentation.labelmap,
        target=case.target_info,
        region=case.input_region,
        methods=results,
        device=str(torch_device),
        seed=seed,
        timings=timings,
        warnings=warnings + [f"{m.spec.label}: {note}" for m in results for note in m.notes],
        volume=volume,
        model=model,
        target_spec=target,
        max_batch=max_batch,
    )


def library_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("torchesegeta", "torch", "monai", "captum", "numpy", "SimpleITK"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _suffix(fmt: str) -> str:
    return "." + fmt


def write_run_folder(
    result: ExplainResult,
    out: Path,
    record: dict[str, Any],
    fmt: str = "nii.gz",
    figures: bool = True,
) -> dict[str, Any]:
    """Write maps, segmentation, figures and run.json into the (empty, temporary) folder ``out``."""
    from .io import write_volume

    out.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(fmt)
    write_volume(result.labelmap, result.geometry, out / f"segmentation{suffix}", dtype=np.uint8)
    method_records = []
    for m in result.methods:
        entry: dict[str, Any] = {
            "label": m.spec.label,
            "name": m.spec.name,
            "title": m.spec.create().title,
            "params": m.spec.create().config,
            "status": m.status,
            "seconds": round(m.seconds, 4),
            **m.memory,
            "signed": m.signed,
            "notes": m.notes,
        }
        if m.message:
            entry["message"] = m.message
        if m.attribution is not None:
            entry["file"] = f"{m.spec.label}{suffix}"
            write_volume(m.map, result.geometry, out / entry["file"], dtype=np.float32)
            if m.attribution.shape[0] > 1 and not m.shared_channels:
                entry["channel_files"] = []
                for channel, channel_map in enumerate(m.attribution):
                    name = f"{m.spec.label}.channel{channel}{suffix}"
                    write_volume(channel_map, result.geometry, out / name, dtype=np.float32)
                    entry["channel_files"].append(name)
        method_records.append(entry)
    figure_files: list[str] = []
    if figures and result.maps:
        from .figures import write_overview_figures

        signed = {m.spec.label: m.signed for m in result.methods}
        paths = write_overview_figures(
            result.image,
            result.maps,
            result.geometry.spacing,
            result.centre(),
            out,
            signed=signed,
            segmentation=result.labelmap,
            title=record.get("title", ""),
        )
        figure_files = [str(Path(p).relative_to(out)) for p in paths]
    statuses = {m.status for m in result.methods}
    document = {
        "format_version": RUN_FORMAT_VERSION,
        "status": "complete" if statuses == {"ok"} else "partial",
        **record,
        "device": result.device,
        "seed": result.seed,
        "target": result.target,
        "segmentation": {
            "file": f"segmentation{suffix}",
            "voxels_per_label": {
                str(int(v)): int(c) for v, c in zip(*np.unique(result.labelmap, return_counts=True))
            },
        },
        "methods": method_records,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "figures": figure_files,
        "warnings": result.warnings,
        "versions": library_versions(),
        "geometry": {
            "size": list(result.geometry.size),
            "spacing": list(result.geometry.spacing),
            "origin_lps": list(result.geometry.origin),
            "direction_lps": list(result.geometry.direction),
        },
    }
    (out / "run.json").write_text(
        json.dumps(document, indent=2, default=_json_default), encoding="utf-8"
    )
    return document


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def check_output_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise UserInputError(
            f"output folder {out} already exists; choose another --out or pass --overwrite"
        )
    if out.exists() and not out.is_dir():
        raise UserInputError(f"output path {out} is a file; choose a folder path for --out")


def publish(temporary: Path, out: Path) -> None:
    """Move a complete temporary folder to ``out``, replacing an old run only at the last moment."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        out.rename(old)
    temporary.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_run(out: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(folder)`` on a hidden temporary sibling of ``out``, then publish it.

    Whatever goes wrong (an error, a cancel, Ctrl-C), the temporary folder is removed and
    ``out`` is left as it was.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        write(temporary)
        publish(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def run_job(
    job: Job, progress: ProgressHandler | None = None, cancel: CancelToken | None = None
) -> Path:
    """Execute ``job`` and return its run folder. Nothing is left behind when it fails."""
    from .io import read_channels
    from .models import load_model

    if not job.output:
        raise UserInputError("the job has no output folder; give one (--out FOLDER)")
    out = Path(job.output).expanduser().absolute()
    check_output_folder(out, job.overwrite)
    started = time.perf_counter()
    _emit(progress, stage="load", fraction=0.0, message="reading inputs and model")
    volume = read_channels(job.images)
    model = load_model(job.model, job.card)
    load_seconds = time.perf_counter() - started
    result = explain_volume(
        volume,
        model,
        job.target,
        job.methods,
        device=job.device,
        seed=job.seed,
        max_batch=job.max_batch,
        method_budget_s=job.method_budget_s,
        progress=progress,
        cancel=cancel,
        precision=job.precision,
        crop_margin=job.crop_margin,
    )
    result.timings["load"] = load_seconds
    _emit(progress, stage="write", fraction=0.0, message=f"writing {out}")
    record = {
        "title": f"{model.card.name}: {result.target.get('class')} ({job.target.kind})",
        "job": job.to_dict(),
        "model": model.record(),
        "inputs": [str(Path(p).absolute()) for p in job.images],
    }

    def write(folder: Path) -> None:
        document = write_run_folder(result, folder, record, job.format, job.figures)
        if job.metrics:
            from .evaluation import evaluate_result, write_evaluation

            evaluation = evaluate_result(result, job.metrics, progress=progress, cancel=cancel)
            write_evaluation(folder, evaluation, document)

    save_run(out, write)
    _emit(progress, stage="done", fraction=1.0, message=str(out))
    return out
