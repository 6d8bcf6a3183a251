"""One runner for every front end: explain a volume in memory, or run a Job into a run folder
(written by :mod:`.run_folder`)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.seeding import seed_everything
from ..errors import BudgetExceededError, UserInputError
from ..targets.spec import TargetSpec
from .case import ExplainResult, MethodResult, ProgressHandler, prepare_case
from .job import Job, MethodSpec
from .preflight import preflight

if TYPE_CHECKING:
    from ..engine.context import CancelToken
    from ..engine.denormals import DenormalFlush
    from ..io.volume import Volume
    from ..models.loading import LoadedModel
    from ..models.uncertainty import UncertaintySpec
    from .destination import Destination, Input
    from .structures import Structures


def _emit(progress: ProgressHandler | None, **event: Any) -> None:
    if progress is not None:
        progress(event)


def _estimates(
    specs: list[MethodSpec],
    instances: list[Any],
    score: Any,
    x: Any,
    times: Any,
    context: Any,
    warn_after_s: float,
    hints: list[str],
    denormals: DenormalFlush,
) -> list[Any]:
    """Each method's cost from its declared passes and measured passes (see :mod:`.cost`)."""
    from .cost import estimate, measure_pass_times

    shape = tuple(x.shape[1:])
    passes = [method.passes(shape, score.forward) for method in instances]
    batches = {}
    for kind in ("forward", "backward"):
        most = max(getattr(p, kind) for p in passes)
        if most:
            batch = context.batch_limit(kind)
            # a batch is timed only where it costs little next to the work it predicts
            batches[kind] = batch if most >= 4 * batch else 1
    measure_pass_times(score, x, times, batches, denormals)
    return [
        estimate(spec.label, method, p, times, warn_after_s, hints)
        for spec, method, p in zip(specs, instances, passes)
    ]


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
    warn_after_s: float | None = None,
    uncertainty: Sequence[UncertaintySpec | str | dict[str, Any]] = (),
    denormals: DenormalFlush | None = None,
) -> ExplainResult:
    """Segment ``volume``, fix the target, and run each method; all results on the input grid.

    The arguments are those of a validated :class:`~TorchEsegetaLib.runs.job.Job` (front ends go
    through :func:`explain_job`). ``crop_margin``: explain a whole-volume model on the target's box grown by this many voxels,
    an approximation measured and recorded (see :mod:`TorchEsegetaLib.runs.cropping`).
    ``warn_after_s``: before the methods run, each one's cost is estimated (reported as
    progress events of stage "estimate"); a method estimated to take longer is warned about,
    with cheaper settings (default :data:`~.cost.WARN_AFTER_S`). ``uncertainty``: the kinds
    whose maps are computed before the methods (``result.uncertainty``, see :mod:`.uncertainty`).
    ``denormals``: whether CPU passes flush denormal floats to zero (checked on the first pass;
    None: they do, as a job's default); :func:`explain_job` gives the job's and holds its scope
    around the whole run.
    """
    import torch

    from ..engine.context import Context, measure_sample_bytes
    from ..engine.denormals import DenormalFlush
    from ..engine.memory import PeakMemory
    from ..methods import ScoreModel
    from ..models.grids import restore_input_grid
    from ..models.inference import resolve_device
    from ..models.uncertainty import uncertainty_specs
    from ..models.uncertainty.members import check_available
    from ..targets.uncertainty import resolve_members
    from .cost import WARN_AFTER_S, PassTimes, general_hints, measure_window_batch
    from .uncertainty import compute_uncertainty, estimates, plan_members

    started = time.perf_counter()
    timings: dict[str, float] = {}
    warnings = list(model.source.get("warnings", [])) + [
        f"preprocessing step not applied: {step}" for step in model.card.ignored_preprocessing
    ]
    instances = [spec.create() for spec in methods]
    preflight(volume, model, target, methods, instances)  # before any network pass
    specs = uncertainty_specs(uncertainty)
    target = resolve_members(target, specs)
    for kind in [*specs, *([target.uncertainty] if target.uncertainty else [])]:
        check_available(kind, model)  # no dropout layers, no ensemble: fail before any pass
    torch_device = resolve_device(device)
    if torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotuned kernels pay off
    denormals = denormals if denormals is not None else DenormalFlush(True, torch_device)
    seed_everything(seed)

    _emit(progress, stage="segment", fraction=0.0, message="segmenting")
    case = prepare_case(volume, model, target, torch_device, denormals, seed, specs)
    warnings.extend(case.warnings)
    warnings.extend(denormals.warnings(model.denormal_weights()["share"]))
    timings["segment"] = time.perf_counter() - started
    warnings += [f"preprocessing: {note}" for note in case.segmentation.input.warnings]
    segmentation, x, info, bound, forward = (
        case.segmentation,
        case.x,
        case.info,
        case.bound,
        case.forward,
    )
    forward.precision = precision
    with denormals.scope():  # free inside explain_job's; here for direct callers
        for method in instances:  # what the prepared case decides (a default layer) fails it now
            method.preflight(forward, x, bound)
        crop = (
            None if crop_margin is None else _crop(case, int(crop_margin), torch_device, warnings)
        )
    x_run, bound_run = (x, bound) if crop is None else (crop.take(x), crop.target(bound))
    forward_run = forward if crop is None else forward.on_crop(crop.padding)
    # One sample's memory, measured once, sizes every method's batches to the free memory.
    score_run = ScoreModel(forward_run, bound_run)
    times = PassTimes()
    began = time.perf_counter()  # the estimate's time includes sizing the batches
    with denormals.scope():
        # windowed models: one window batch timed and sized, not the whole pipeline run again
        window_bytes = measure_window_batch(forward_run, x_run, bound_run, times)
        sample_bytes = None if max_batch else window_bytes
        if sample_bytes is None and not max_batch:
            sample_bytes = measure_sample_bytes(score_run, x_run, times)
    limit = WARN_AFTER_S if warn_after_s is None else float(warn_after_s)
    method_estimates = _estimates(
        methods,
        instances,
        score_run,
        x_run,
        times,
        Context(device=torch_device, max_batch=max_batch, sample_bytes=sample_bytes),
        limit,
        general_hints(
            torch_device,
            forward_run,
            target.kind,
            # an uncertainty target is never cropped: no --crop-margin hint for it
            crop is not None or target.uncertainty is not None,
        ),
        denormals,
    )
    planned = plan_members(specs, case, model, seed)
    costs = estimates(planned, timings["segment"], limit)  # a member pass: a segmentation
    timings["estimate"] = time.perf_counter() - began
    _report_estimates(costs + method_estimates, progress, warnings)
    tuned: dict[str, int] = {}  # the fastest batch size, found by the first method, kept for all

    def on_input_grid(method: Any, context: Any) -> np.ndarray:
        attribution = method.attribute(forward_run, x_run, bound_run, context).detach().float()
        if crop is not None:
            attribution = crop.paste(attribution)
        return restore_input_grid(attribution, info)[0].cpu().numpy()

    results: list[MethodResult] = []
    try:
        with denormals.scope():
            uncertainty_results = compute_uncertainty(planned, case, model, progress, cancel)
        for found, cost in zip(uncertainty_results, costs):
            found.estimate = cost.record()
            timings[f"uncertainty {found.spec.kind}"] = found.seconds
        del planned  # the members' noise and networks: not kept while the methods run
        for index, (spec, method) in enumerate(zip(methods, instances)):

            def report(fraction: float, message: str, spec=spec, index=index, **phase: str) -> None:
                _emit(
                    progress,
                    stage="method",
                    method=spec.label,
                    index=index,
                    total=len(methods),
                    fraction=fraction,
                    message=message,
                    **phase,
                )

            report(0.0, f"{spec.label}: starting", phase="start")

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
            result.estimate = method_estimates[index].record()
            try:
                with PeakMemory(torch_device) as peak, denormals.scope():
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
                result.attribution = _finite(restored, spec.label)
            except BudgetExceededError as e:
                result.status, result.message = "timed out", str(e)
            result.seconds = time.perf_counter() - t0
            result.notes = list(context.notes)
            result.facts = dict(context.facts)
            results.append(result)
            timings[spec.label] = result.seconds
            report(1.0, f"{spec.label}: {result.status} in {result.seconds:.1f} s", phase="end")
    finally:
        for network in (model.network, *model.ensemble):
            network.to("cpu")
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
        uncertainty=uncertainty_results,
        denormals=denormals,
    )


def _crop(case: Any, margin: int, torch_device: Any, warnings: list[str]) -> Any:
    """The crop that ``crop_margin`` asks for, measured against the whole volume (the
    measurement goes to the target record, a warning says what it changes); None when the
    model cannot be cropped (a warning says why)."""
    from .cropping import measure_crop, plan_crop

    forward, x, bound = case.forward, case.x, case.bound
    crop, why_not = plan_crop(forward, bound.region.cpu().numpy(), margin)
    if crop is None:
        warnings.append(why_not)
        return None
    measured = measure_crop(crop, forward, x, bound, torch_device)
    case.target_info["crop"] = measured
    warnings.append(
        f"approximation: explained on a crop of {crop.share:.0%} of the volume (target "
        f"box + {crop.margin} voxels); the target score changes by "
        f"{measured['score']['relative_change']:.1%} and the saliency map by "
        f"{measured['saliency']['relative_l2']:.1%} (relative L2) against the whole "
        "volume; maps are zero outside the crop"
    )
    return crop


def _report_estimates(
    estimates: list[Any], progress: ProgressHandler | None, warnings: list[str]
) -> None:
    """Each method's cost estimate as a progress event; those past the limit also warned."""
    for found in estimates:
        _emit(progress, stage="estimate", fraction=0.0, message=f"estimate {found.describe()}")
        if found.too_long:
            warnings.append(found.warning())
            _emit(
                progress,
                stage="estimate",
                fraction=0.0,
                warning=True,
                message=f"warning: {found.warning()}",
            )


def _finite(restored: np.ndarray, label: str) -> np.ndarray:
    if not np.isfinite(restored).all():
        raise UserInputError(
            f"method {label} produced NaN or Inf values; check the model and input, "
            "or lower the method's noise/step parameters"
        )
    return restored.astype(np.float32)


def explain_job(
    job: Job,
    volume: Volume,
    model: LoadedModel,
    progress: ProgressHandler | None = None,
    cancel: CancelToken | None = None,
) -> ExplainResult:
    """Explain ``volume`` with ``model`` as ``job`` says, and evaluate the maps when the job
    asks for metrics (``result.evaluation``); nothing is written. On the CPU the work runs with
    denormal floats flushed to zero unless the job says otherwise (``flush_denormals``), and
    every thread gets its own setting back afterwards."""
    from ..engine.denormals import DenormalFlush
    from ..models.inference import resolve_device

    denormals = DenormalFlush(job.flush_denormals, resolve_device(job.device))
    with denormals.scope():
        return _explain_job(job, volume, model, denormals, progress, cancel)


def _explain_job(
    job: Job,
    volume: Volume,
    model: LoadedModel,
    denormals: DenormalFlush,
    progress: ProgressHandler | None,
    cancel: CancelToken | None,
) -> ExplainResult:
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
        warn_after_s=job.warn_after_s,
        uncertainty=job.uncertainty,
        denormals=denormals,
    )
    if job.metrics:
        from .evaluation import evaluate_result

        result.evaluation = evaluate_result(result, job.metrics, progress=progress, cancel=cancel)
    return result


def claim_output(job: Job, inputs: Iterable[Input] = ()) -> Destination:
    """The job's run folder as it is before any work: absent, or a run folder this tool wrote
    and ``overwrite`` replaces; apart from every input of the job and from ``inputs`` (what the
    job itself was read from: its file, a card file). See
    :func:`~TorchEsegetaLib.runs.destination.check_output_folder`."""
    from .destination import check_output_folder

    if not job.output:
        raise UserInputError("the job has no output folder; give one (--out FOLDER)")
    return check_output_folder(
        Path(job.output), job.overwrite, [*job.input_paths(), *inputs], "run folder"
    )


def save_result(
    job: Job,
    result: ExplainResult,
    destination: Destination,
    record: dict[str, Any],
    progress: ProgressHandler | None = None,
    structures: Structures | None = None,
) -> Path:
    """Write ``result`` as ``job``'s run folder, published only when complete; with the
    ``structures`` of the job, its structures.csv (:mod:`.structures`)."""
    from .destination import save_run
    from .run_folder import write_run_folder

    _emit(progress, stage="write", fraction=0.0, message=f"writing {destination.path}")
    model = result.model.record() if result.model is not None else {}
    record = {"job": job.to_dict(), "model": model, **record}

    def write(folder: Path) -> None:
        document = write_run_folder(result, folder, record, job.format, job.figures)
        if structures is not None:
            from .structures import write_structures

            titles = {e["label"]: e.get("title") or e["label"] for e in document["methods"]}
            maps = {label: (titles[label], m) for label, m in result.maps.items()}
            write_structures(folder, maps, structures, document, job.figures)
        if result.evaluation is not None:
            from .evaluation import write_evaluation

            write_evaluation(folder, result.evaluation, document)

    save_run(destination, write)
    return destination.path


def run_job(
    job: Job,
    progress: ProgressHandler | None = None,
    cancel: CancelToken | None = None,
    inputs: Iterable[Input] = (),
) -> Path:
    """Execute ``job`` and return its run folder. Nothing is left behind when it fails.

    ``inputs``: what the job was read from besides its own fields, as (what, path), e.g.
    ``[("job file", "job.json")]``: the run folder keeps apart from them too.
    """
    from ..io.images import read_channels
    from ..models.loading import load_model

    destination = claim_output(job, inputs)
    reference = job.model_to_load()
    started = time.perf_counter()
    _emit(progress, stage="load", fraction=0.0, message="reading inputs and model")
    volume = read_channels(job.images)
    structures = None
    if job.structures:
        from .structures import load_structures

        # checked now, before the methods' work, not when the results are written
        structures = load_structures(job.structures, volume.geometry)
    model = load_model(reference, job.card)
    load_seconds = time.perf_counter() - started
    result = explain_job(job, volume, model, progress, cancel)
    result.timings["load"] = load_seconds
    record = {
        "title": f"{model.card.name}: {result.target.get('class')} ({job.target.kind})",
        "inputs": [str(Path(p).absolute()) for p in job.images],
    }
    out = save_result(job, result, destination, record, progress, structures)
    _emit(progress, stage="done", fraction=1.0, message=str(out))
    return out
