"""Evaluate the explanations of a run: in memory (an ExplainResult) or from a run folder.

Metrics that need the model run on the model grid with the same forward pass, frozen intensity
statistics and bound target as the explanations; the case is prepared exactly as the runner
prepares it (:func:`~TorchEsegetaLib.runs.case.prepare_case`). A run folder gains ``metrics.csv``,
a ``"metrics"`` entry in ``run.json`` (scores, curves, notes, timings) and figures; every file
is written to a temporary name and renamed, so none is ever half-written. Evaluating again
adds or replaces metrics and keeps the others.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserInputError
from ..io.atomic import atomic_write
from ..metrics.results import Evaluation, metrics_csv, rows_and_curves
from .destination import check_apart_from_inputs, check_run_folder_update
from .run_folder import json_default, row_title

__all__ = [
    "Evaluation",
    "evaluate_case",
    "evaluate_result",
    "evaluate_run",
    "metrics_csv",
    "rows_and_curves",
    "write_evaluation",
]

if TYPE_CHECKING:
    from ..engine.context import CancelToken
    from ..engine.denormals import DenormalFlush
    from ..io.volume import Volume
    from ..metrics import Case, MetricSpec, Subject
    from ..models.loading import LoadedModel
    from ..targets.spec import TargetSpec
    from .case import ExplainResult, ProgressHandler


def _clean(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def evaluate_case(
    case: Case,
    subjects: list[Subject],
    metrics: list[MetricSpec],
    progress: ProgressHandler | None = None,
) -> Evaluation:
    """Score every subject with every metric on a prepared case."""
    evaluation = Evaluation()
    total = len(metrics) * len(subjects)
    for m_index, spec in enumerate(metrics):
        metric = spec.create()
        # The declared parameters live in `torchesegeta metrics --json`; record the values used.
        evaluation.metrics[metric.name] = {**metric.describe(), "params": dict(metric.config)}
        started = time.perf_counter()
        for s_index, subject in enumerate(subjects):
            index = m_index * len(subjects) + s_index

            def report(
                fraction: float,
                message: str,
                index=index,
                name=metric.name,
                label=subject.label,
                **phase: str,
            ) -> None:
                if progress is not None:
                    progress(
                        {
                            "stage": "evaluate",
                            "metric": name,
                            "method": label,
                            "index": index,
                            "total": total,
                            "fraction": fraction,
                            "message": message,
                            **phase,
                        }
                    )

            report(0.0, f"{metric.name}: {subject.label}", phase="start")
            case.progress = report
            case.context().check()
            began = time.perf_counter()
            score = metric.evaluate(case, subject)
            spent = round(time.perf_counter() - began, 4)
            evaluation.method_seconds.setdefault(metric.name, {})[subject.label] = spent
            evaluation.scores.setdefault(subject.label, {})[metric.name] = _clean(score.value)
            if score.note:
                evaluation.notes.setdefault(subject.label, {})[metric.name] = score.note
            if score.curve is not None:
                evaluation.curves.setdefault(metric.name, {})[subject.label] = (
                    [float(v) for v in score.curve[0]],
                    [float(v) for v in score.curve[1]],
                )
            if score.details:
                evaluation.details.setdefault(metric.name, {})[subject.label] = score.details
            report(1.0, f"{metric.name}: {subject.label} done", phase="end")
        evaluation.seconds[metric.name] = round(time.perf_counter() - started, 4)
    case.progress = None
    return evaluation


def _evaluate(
    volume: Volume,
    model: LoadedModel,
    target: TargetSpec,
    subjects: list[Subject],
    metrics: Any,
    seed: int,
    device: Any,
    max_batch: int | None,
    reference_mask: np.ndarray | None,
    progress: ProgressHandler | None,
    cancel: CancelToken | None,
    flush_denormals: bool | DenormalFlush = True,
) -> Evaluation:
    from ..engine.denormals import DenormalFlush
    from ..metrics import Case, metric_specs
    from ..models.inference import resolve_device
    from ..targets.spec import score_phrase
    from .case import prepare_case

    specs = metric_specs(metrics)
    torch_device = resolve_device(device)
    denormals = DenormalFlush.of(flush_denormals, torch_device)
    try:
        prepared = prepare_case(volume, model, target, torch_device, denormals)
        case = Case(
            forward=prepared.forward,
            x=prepared.x,
            target=prepared.bound,
            info=prepared.info,
            region=prepared.input_region,
            spacing=volume.geometry.spacing,
            seed=seed,
            geometry=volume.geometry,
            reference_mask=reference_mask,
            card=model.card,
            max_batch=max_batch,
            cancel=cancel,
        )
        with denormals.scope():  # the run's arithmetic (the segmentation's check decided it)
            evaluation = evaluate_case(case, subjects, specs, progress)
        evaluation.score = score_phrase(prepared.target_info)
        return evaluation
    finally:
        model.network.to("cpu")


def evaluate_result(
    result: ExplainResult,
    metrics: list[str | dict[str, Any] | MetricSpec] | None = None,
    reference_mask: np.ndarray | None = None,
    device: str | None = None,
    progress: ProgressHandler | None = None,
    cancel: CancelToken | None = None,
) -> Evaluation:
    """Evaluate an in-memory :class:`~TorchEsegetaLib.runs.case.ExplainResult`.

    Args:
        result: what :func:`~TorchEsegetaLib.runs.runner.explain_volume` returned.
        metrics: names, ``{"name", "params"}`` dicts or specs; None: the default metrics;
            "all": every metric.
        reference_mask: (I, J, K) mask for relevance rank accuracy (input grid).
        device: where the model runs (default: the device of the run).

    Returns:
        An :class:`Evaluation`: ``rows()`` for a table, ``curves`` for plots.
    """
    from ..metrics import Subject

    if result.volume is None or result.model is None or result.target_spec is None:
        raise UserInputError(
            "this result does not carry its volume, model and target; evaluate it with "
            "explain_volume's result or from its run folder (evaluate_run)"
        )
    subjects = [
        Subject(m.spec.label, m.spec.create(), index, m.attribution, m.signed)
        for index, m in enumerate(result.methods)
        if m.attribution is not None
    ]
    evaluation = _evaluate(
        result.volume,
        result.model,
        result.target_spec,
        subjects,
        metrics,
        result.seed,
        device or result.device,
        result.max_batch,
        reference_mask,
        progress,
        cancel,
        result.denormals if result.denormals is not None else True,
    )
    evaluation.method_info = {
        m.spec.label: {
            "seconds": round(m.seconds, 4),
            **m.memory,
            "title": row_title(
                {"label": m.spec.label, "name": m.spec.name, "title": m.spec.create().title}
            ),
        }
        for m in result.methods
    }
    return evaluation


def read_record(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "run.json"
    if not path.is_file():
        raise UserInputError(
            f"{folder} is not a run folder (no run.json); give a folder written by `torchesegeta explain`"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserInputError(f"{path} is not valid JSON: {e}") from e


def _subjects_from_folder(
    folder: Path, record: dict[str, Any], channels: int, labels: list[str] | None
) -> list[Subject]:
    from ..io.images import read_volume
    from ..metrics import Subject
    from .job import MethodSpec

    available = [m["label"] for m in record["methods"] if m.get("file")]
    unknown = sorted(set(labels or []) - set(available))
    if unknown:
        raise UserInputError(
            f"method(s) {unknown} have no map in this run; choose among {', '.join(available)}"
        )
    subjects = []
    for index, entry in enumerate(record["methods"]):
        if not entry.get("file") or (labels and entry["label"] not in labels):
            continue
        spec = MethodSpec(entry["name"], entry.get("params") or {}, entry["label"])
        if entry.get("channel_files"):
            parts = [read_volume(folder / name).array[0] for name in entry["channel_files"]]
            attribution = np.stack(parts)
        else:
            single = read_volume(folder / entry["file"]).array[0]
            attribution = np.repeat(single[None], channels, axis=0)
        subjects.append(Subject(entry["label"], spec.create(), index, attribution, entry["signed"]))
    return subjects


def evaluate_run(
    run_folder: str | Path,
    metrics: list[str | dict[str, Any] | MetricSpec] | None = None,
    progress: ProgressHandler | None = None,
    cancel: CancelToken | None = None,
    methods: list[str] | None = None,
    device: str | None = None,
    reference_mask: np.ndarray | None = None,
) -> Evaluation:
    """Evaluate the maps of a run folder and write the scores, curves and figures into it.

    Reloads the inputs, the model (its sha256 must match) and the target from ``run.json``,
    evaluates ``methods`` (labels; default: every map) with ``metrics`` (default: the default
    metrics) and returns the folder's whole evaluation, earlier metrics included. Metric
    parameters recorded in the run's job (the demo's reference mask, say) apply again unless
    ``metrics`` gives others.
    """
    from ..io.images import read_channels, split_channel_selector
    from ..metrics import MetricSpec, metric_specs
    from ..models.loading import load_model
    from .job import Job

    folder = Path(run_folder).expanduser().absolute()
    record = read_record(folder)
    check_run_folder_update(folder, "the evaluation")
    recorded_params = {
        entry["name"]: entry.get("params") or {} for entry in record["job"].get("metrics") or []
    }
    specs = [  # bad names and parameters fail before any loading
        MetricSpec(spec.name, {**recorded_params.get(spec.name, {}), **spec.params})
        for spec in metric_specs(metrics)
    ]
    job = Job.from_dict({k: v for k, v in record["job"].items() if k != "metrics"})
    inputs = [*job.input_paths(), *(i for spec in specs for i in spec.input_files())]
    inputs += [("image", str(split_channel_selector(p)[0])) for p in record.get("inputs") or []]
    check_apart_from_inputs(folder, inputs)
    volume = read_channels(record.get("inputs") or job.images)
    model = load_model(job.model_to_load(), job.card)
    recorded = (record.get("model") or {}).get("sha256")
    if recorded and model.sha256 != recorded:
        raise UserInputError(
            f"the model's weights changed since this run (sha256 {model.sha256} != {recorded}); "
            "re-run the explanation to evaluate it"
        )
    subjects = _subjects_from_folder(folder, record, volume.channels, methods)
    evaluation = _evaluate(
        volume,
        model,
        job.target,
        subjects,
        specs,
        int(record.get("seed", job.seed)),
        device or job.device,
        job.max_batch,
        reference_mask,
        progress,
        cancel,
        job.flush_denormals,
    )
    evaluation.method_info = {
        m["label"]: {
            "seconds": m.get("seconds"),
            "peak_memory_mb": m.get("peak_memory_mb"),
            "title": row_title(m),
        }
        for m in record["methods"]
    }
    return write_evaluation(folder, evaluation, record)


def write_evaluation(
    folder: Path, evaluation: Evaluation, record: dict[str, Any] | None = None
) -> Evaluation:
    """Merge ``evaluation`` into the folder's earlier one; write metrics.csv, figures, run.json."""
    from ..figures.metric_figures import write_metric_figures

    folder = Path(folder)
    record = read_record(folder) if record is None else record
    if record.get("metrics"):
        evaluation = evaluation.over(Evaluation.from_json(record["metrics"]))
    atomic_write(folder / "metrics.csv", metrics_csv(evaluation))
    figures = [
        str(p.relative_to(folder)) for p in write_metric_figures(evaluation, folder / "figures")
    ]
    record["metrics"] = evaluation.to_json()
    record["figures"] = list(dict.fromkeys([*record.get("figures", []), *figures]))
    atomic_write(folder / "run.json", json.dumps(record, indent=2, default=json_default))
    return evaluation
