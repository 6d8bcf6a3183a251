"""``run_cohort``: a job template over every case of a cohort, resumable, on an engine.

Up front: the cohort is read and checked, the template validated, the model loaded once (so a
bad model is one error, not one per case) and the output folder locked. Cases whose run folder
is already there for the same job are skipped; the rest go to the engine; every outcome is
counted, and the summary files are written at the end, also after Ctrl-C.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from ..runs.destination import TOOL
from ..runs.job import Job
from .cases import Case, check_cases, read_cohort
from .plan import (
    DONE,
    OutputLock,
    Template,
    check_cohort_output,
    cohort_inputs,
    comparable,
    plan_cases,
    remove_partial_folders,
)

EXIT_ALL_OK, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 0, 3, 130
ENGINES = ("local", "ray")


@dataclass
class CohortResult:
    """What a cohort run did.

    Attributes:
        out: the output folder (run folders, summary files, report).
        cases: one dict per case, in cohort order: case, status ("ok", "partial", "failed",
            "not run"), resumed, seconds, error, kind.
        counts: cases, ok, partial, failed, not_run, resumed.
        interrupted: the run was stopped (Ctrl-C) before every case ran.
    """

    out: Path
    cases: list[dict[str, Any]]
    counts: dict[str, int]
    interrupted: bool = False
    stats: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """0 every case has a run folder, 3 some case failed, 130 interrupted."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if self.counts["failed"] else EXIT_ALL_OK


class CohortInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the cohort; ``result`` holds what was done (and is in the summary)."""

    def __init__(self, result: CohortResult):
        super().__init__("cohort interrupted")
        self.result = result


def make_engine(
    engine: str,
    device: str,
    workers: int | None = None,
    address: str | None = None,
    cpus_per_case: float = 1.0,
    gpus_per_case: float | None = None,
    memory_per_case_gb: float = 2.0,
) -> Any:
    if engine == "local":
        from .local import LocalEngine

        return LocalEngine(workers, device)
    if engine == "ray":
        from .ray_engine import RayEngine, default_address, import_ray

        import_ray()  # a missing Ray is one line before anything starts
        return RayEngine(
            address or default_address(), cpus_per_case, gpus_per_case, memory_per_case_gb, device
        )
    raise UserInputError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")


def run_cohort(
    cohort: str | Path | Sequence[Case],
    template: str | Path | dict[str, Any] | Job,
    out: str | Path,
    engine: str = "local",
    workers: int | None = None,
    address: str | None = None,
    device: str | None = None,
    rerun_changed: bool = False,
    progress: bool = True,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    cpus_per_case: float = 1.0,
    gpus_per_case: float | None = None,
    memory_per_case_gb: float = 2.0,
) -> CohortResult:
    """Explain every case of a cohort with one job template: one run folder per case.

    Args:
        cohort: a cohort CSV, a folder of images (nnU-Net naming), or a list of :class:`Case`.
        template: a job template file (a job without images and output), a dict, or a Job.
        out: the output folder: ``<out>/<case_id>/`` run folders, ``summary.csv``,
            ``summary_stats.csv``, ``failures.csv``, ``cohort.json``, ``cohort_report.html``.
        engine: "local" (worker processes) or "ray" (one Ray task per case).
        workers: local engine: number of worker processes (default: one per visible GPU, or
            one on the CPU).
        address: Ray engine: "auto" (default, or RAY_ADDRESS), "host:port", "ray://host:port",
            or "local" for a new Ray instance on this machine.
        device: replaces the template's device ("auto", "cpu", "cuda", "cuda:N").
        rerun_changed: recompute cases whose run folder holds another job (otherwise refused).
        progress: show a progress bar (one line per case when stderr is not a terminal).
        on_event: receives every engine event ("start", "progress", "done"), in this thread.
        cpus_per_case, gpus_per_case, memory_per_case_gb: what each Ray task declares
            (gpus default: 1 when the cluster has GPUs and the device is not "cpu").

    Returns:
        A :class:`CohortResult`; ``exit_status`` is 0 when every case has a run folder, 3 when
        some case failed (its error is in ``failures.csv``).

    Raises:
        UserInputError: the cohort, template, model or output folder is unusable (nothing ran).
        CohortInterrupted: Ctrl-C; the summary of what finished is written first.
    """
    from ..models.loading import load_model
    from .progress import CohortProgress
    from .summary import write_summary

    out = Path(out).expanduser().absolute()
    if isinstance(cohort, (str, Path)):
        source, cases = str(cohort), read_cohort(cohort)
    else:
        source, cases = "the case list", list(cohort)
        check_cases(cases, source)
    job_template = Template.load(template)
    jobs = [job_template.case_job(case, out, device) for case in cases]
    path = Path(cohort).expanduser() if isinstance(cohort, (str, Path)) else None
    check_cohort_output(out, cohort_inputs(path, template, cases, jobs))
    if any(c.reference for c in cases) and not job_template.reference_metrics:
        print(
            "torchesegeta: note: the cohort's reference masks are used by relevance_rank_accuracy; "
            "add it to the template's metrics to score them",
            file=sys.stderr,
        )
    model = load_model(job_template.data["model"], job_template.data.get("card"))
    runner = make_engine(
        engine,
        device or job_template.data.get("device", "auto"),
        workers,
        address,
        cpus_per_case,
        gpus_per_case,
        memory_per_case_gb,
    )
    started = _now()
    with OutputLock(out) as lock:
        for case in cases:  # left by a run that was killed (nobody runs them: we hold the lock)
            remove_partial_folders(out, case.case_id)
        planned = plan_cases(cases, job_template, out, model.sha256, rerun_changed, device)
        todo = [p for p in planned if p.state != DONE]
        bar = CohortProgress(len(todo), enabled=progress)
        outcomes: dict[str, dict[str, Any]] = {}

        def handle(event: dict[str, Any]) -> None:
            lock.keep = True  # a case started: what the cohort wrote stays
            if event.get("event") == "done":
                outcomes[event["case"]] = event
                bar.case_done(event)
            if on_event is not None:
                on_event(event)

        interrupted = False
        try:
            runner.run(
                [{"case": p.case.case_id, "job": p.job.to_dict()} for p in todo], out, handle
            )
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
        record = {
            "format_version": 1,
            "tool": TOOL,  # what recognises the folder as ours (runs.destination.made_by_this_tool)
            "cohort": source,
            "template": job_template.source,
            "template_job": job_template.data,
            "template_sha256": _digest(job_template.data, model.sha256),
            "model_sha256": model.sha256,
            "engine": runner.describe(len(todo)),
            "started": started,
            "finished": _now(),
            "interrupted": interrupted,
            "cases": [_case_entry(p, outcomes.get(p.case.case_id), out) for p in planned],
        }
        record["counts"] = _counts(record["cases"])
        lock.keep = True
        summary = write_summary(out, record)
    result = CohortResult(out, record["cases"], record["counts"], interrupted, summary["stats"])
    if interrupted:
        raise CohortInterrupted(result)
    return result


def _case_entry(planned: Any, outcome: dict[str, Any] | None, out: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"case": planned.case.case_id}
    if planned.state == DONE:
        record = json.loads((out / planned.case.case_id / "run.json").read_text(encoding="utf-8"))
        status = "ok" if record.get("status") == "complete" else "partial"
        seconds = (record.get("timings_s") or {}).get("total")
        return {**entry, "status": status, "resumed": True, "seconds": seconds}
    if outcome is None:
        return {**entry, "status": "not run", "resumed": False}
    entry.update(status=outcome["status"], resumed=False, seconds=outcome.get("seconds"))
    for key in ("error", "kind", "traceback", "host"):
        if outcome.get(key):
            entry[key] = outcome[key]
    return entry


def _counts(cases: list[dict[str, Any]]) -> dict[str, int]:
    statuses = [c["status"] for c in cases]
    return {
        "cases": len(cases),
        "ok": statuses.count("ok"),
        "partial": statuses.count("partial"),
        "failed": statuses.count("failed"),
        "not_run": statuses.count("not run"),
        "resumed": sum(bool(c.get("resumed")) for c in cases),
    }


def _digest(template: dict[str, Any], model_sha256: str | None) -> str:
    text = json.dumps({"job": comparable(template), "model": model_sha256}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
