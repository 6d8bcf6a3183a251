"""From a job template and the cases to one Job per case, and what is left to do.

A case's Job is the template with the case's images, ``output = <out>/<case_id>``, the case's
target when it gives one, and its reference mask in the metrics that take one. A case is
*done* when ``<out>/<case_id>`` is a published run folder whose recorded job equals the case's
Job and whose model weights have the same sha256: resuming skips it. Fields that say where or
on what a case runs (``output``, ``overwrite``, ``device``) are not compared. A run folder of a
different job (the template, the case's inputs or the weights changed) is never replaced
silently: planning refuses with the differing fields, unless asked to rerun changed cases.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from ..runs.destination import Input, check_apart_from_inputs, made_by_this_tool
from ..runs.job import Job, read_job_file
from .cases import Case

#: Job fields that say where or on what device a case runs, not what it computes (flushing
#: denormals is checked to leave the labelmap as it is, like a change of device).
NOT_COMPARED = ("output", "overwrite", "device", "flush_denormals")
#: The engine's own files inside the output folder (lock, worker logs, probes).
ENGINE_FOLDER = ".cohort"
TODO, DONE, CHANGED = "todo", "done", "changed"


@dataclass
class Template:
    """A validated job template: a job's fields without images and output, paths resolved."""

    data: dict[str, Any]
    source: str

    @classmethod
    def load(cls, source: str | Path | dict[str, Any] | Job) -> Template:
        """From a template file (JSON/YAML), a dict of job fields, or a Job (images dropped)."""
        if isinstance(source, Job):
            data, base, name = source.to_dict(), None, "the job"
            data.pop("images"), data.pop("output")
        elif isinstance(source, dict):
            data, base, name = dict(source), None, "the job template"
        else:
            path = Path(source).expanduser()
            data, base, name = read_job_file(path), path.parent, str(path)
            if not isinstance(data, dict):
                raise UserInputError(f"job template {name} must hold one object of job fields")
        for key, why in (
            ("images", "the cohort lists each case's images"),
            ("output", "--out names it"),
        ):
            if data.get(key):
                raise UserInputError(f"job template {name} has an {key!r} field; remove it: {why}")
        data.pop("images", None), data.pop("output", None)
        # A placeholder image validates everything else (model, target, methods, metrics) now.
        job = Job.from_dict({**data, "images": ["case-image"]}, base=base)
        resolved = job.to_dict()
        resolved.pop("images"), resolved.pop("output")
        return cls(resolved, name)

    @property
    def reference_metrics(self) -> list[str]:
        """Metrics that take a reference mask (a case's ``reference`` goes to them)."""
        from ..metrics import get_metric

        return [
            m["name"]
            for m in self.data.get("metrics", [])
            if any(p.name == "reference" for p in get_metric(m["name"]).params)
        ]

    def case_job(self, case: Case, out: Path, device: str | None = None) -> Job:
        """The Job of ``case``: the template with its images, output, target and reference."""
        data = copy.deepcopy(self.data)
        data["images"] = list(case.images)
        data["output"] = str(out / case.case_id)
        data["overwrite"] = False  # only a planned rerun of a changed case replaces a folder
        if device:
            data["device"] = device
        if case.target:
            from ..targets.spec import TargetSpec

            template = data["target"]
            keep = {k: template[k] for k in ("output", "coordinates", "reduction") if k in template}
            data["target"] = TargetSpec.parse(case.target, **keep).to_dict()
        if case.reference:
            for metric in data.get("metrics", []):
                if metric["name"] in self.reference_metrics and not metric["params"].get(
                    "reference"
                ):
                    metric["params"]["reference"] = case.reference
        try:
            return Job.from_dict(data)
        except UserInputError as e:
            raise UserInputError(f"case {case.case_id}: {e}") from e


@dataclass
class PlannedCase:
    """One case, its Job, and its state: "todo", "done" (skipped) or "changed"."""

    case: Case
    job: Job
    state: str
    #: done: the run folder's status ("complete" or "partial"); changed: the differing fields
    detail: str = ""


def comparable(job: dict[str, Any]) -> dict[str, Any]:
    """A job's fields that decide its results, as JSON would give them back."""
    kept = {k: v for k, v in job.items() if k not in NOT_COMPARED}
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def differences(recorded: dict[str, Any], planned: dict[str, Any]) -> list[str]:
    """The job fields (and "model weights") in which a run folder differs from the plan."""
    a, b = comparable(recorded.get("job") or {}), comparable(planned["job"])
    fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    recorded_sha = (recorded.get("model") or {}).get("sha256")
    if planned.get("model_sha256") and recorded_sha != planned["model_sha256"]:
        fields.append("model weights")
    return fields


def plan_cases(
    cases: list[Case],
    template: Template,
    out: Path,
    model_sha256: str | None,
    rerun_changed: bool = False,
    device: str | None = None,
) -> list[PlannedCase]:
    """Each case's Job and state. Refuses (UserInputError) when run folders of another job are
    in the way and ``rerun_changed`` is off, and when a folder there is not a run folder."""
    planned = []
    for case in cases:
        job = template.case_job(case, out, device)
        folder = out / case.case_id
        if not folder.exists():
            planned.append(PlannedCase(case, job, TODO))
            continue
        record = _run_record(folder)
        changed = differences(record, {"job": job.to_dict(), "model_sha256": model_sha256})
        if changed:
            planned.append(PlannedCase(case, job, CHANGED, ", ".join(changed)))
        else:
            planned.append(PlannedCase(case, job, DONE, str(record.get("status", ""))))
    rerun = [p for p in planned if p.state == CHANGED]
    if rerun and not rerun_changed:
        first = rerun[0]
        raise UserInputError(
            f"{len(rerun)} case(s) in {out} were run with a different job ({first.case.case_id}: "
            f"{first.detail} differ); pass --rerun-changed to recompute them, or choose another --out"
        )
    for p in rerun:
        p.job.overwrite = True  # replaced only when its new run folder is complete
    return planned


def _run_record(folder: Path) -> dict[str, Any]:
    path = folder / "run.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or "job" not in record:
        raise UserInputError(
            f"{folder} exists but is not a run folder (no readable run.json); move it out of the "
            "output folder or choose another --out"
        )
    return record


def remove_partial_folders(out: Path, case_id: str) -> list[Path]:
    """Remove the hidden temporary folders a run of ``case_id`` left when its process was killed
    (``save_run`` names them ``.<case_id>.partial-*``). Only for cases nobody is running."""
    removed = []
    for path in out.glob(f".{case_id}.partial-*"):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def cohort_inputs(
    cohort: str | Path | None, template: Any, cases: list[Case], jobs: list[Job]
) -> list[Input]:
    """(what, path) of everything a cohort reads: its cohort file or folder, the template file,
    and each case's inputs (images, reference and target masks, the model's files)."""
    found: list[Input] = []
    if cohort is not None:
        found.append(("cohort folder" if Path(cohort).is_dir() else "cohort file", str(cohort)))
    if isinstance(template, (str, Path)):
        found.append(("job template", str(template)))
    for case, job in zip(cases, jobs):
        found += [(f"{what} of case {case.case_id}", path) for what, path in job.input_paths()]
        if case.reference:  # listed, though only the metrics that take one read it
            found.append((f"reference mask of case {case.case_id}", case.reference))
    return list(dict.fromkeys(found))


def is_cohort_folder(folder: Path) -> bool:
    """Whether ``folder`` is a cohort's output folder this tool wrote: its ``cohort.json`` names
    the tool, or its engine folder (``.cohort/``, made when a cohort starts) is there."""
    return made_by_this_tool(folder, "cohort folder") or (folder / ENGINE_FOLDER).is_dir()


def check_cohort_output(out: Path, inputs: list[Input]) -> None:
    """Before any work: the cohort's output folder keeps apart from its inputs, and is new, empty
    or a cohort folder of ours (resumed); never another folder, whose files it would replace."""
    check_apart_from_inputs(out, inputs)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"output path {out} is a file; choose a folder for --out")
    if out.is_dir() and any(out.iterdir()) and not is_cohort_folder(out):
        raise UserInputError(
            f"output folder {out} already holds files that no torchesegeta cohort wrote (no "
            "cohort.json of ours); a cohort writes into a new or empty folder, or resumes its "
            "own: choose another --out"
        )


class OutputLock:
    """Holds ``<out>/.cohort/lock`` so that two cohort runs never write one folder at once;
    entering also proves the folder is writable.

    When the block ends with a :class:`UserInputError` before :attr:`keep` was set (a cohort
    refused before any case ran), what entering created (the lock, ``.cohort/``, the output
    folder itself) is removed again: a refused cohort leaves nothing behind.
    """

    def __init__(self, out: Path):
        self.path = out / ENGINE_FOLDER / "lock"
        self.handle: Any = None
        #: set once the cohort wrote something that must stay (a case ran, a summary)
        self.keep = False
        self._made: list[Path] = []  # what entering created, outermost first

    def __enter__(self) -> OutputLock:
        out = self.path.parent.parent
        try:
            for place in (out, self.path.parent):
                if not place.exists():
                    place.mkdir(parents=True)
                    self._made.append(place)
            if not self.path.exists():
                self._made.append(self.path)
            self.handle = open(self.path, "a+")  # noqa: SIM115 (held until __exit__)
        except OSError as e:
            self._undo()
            raise UserInputError(
                f"cannot write to the output folder {out}: {e.strerror or e}; choose a writable --out"
            ) from e
        if not _try_lock(self.handle) or not _same_file(self.handle, self.path):
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise UserInputError(
                f"another cohort run ({holder}) is writing to {out}; wait for it to finish or "
                "choose another --out"
            )
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}")
        self.handle.flush()
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if isinstance(error, UserInputError) and not self.keep:
            self._undo()  # still holding the lock: nobody else sees a half-removed folder
        self.handle.close()  # closing releases the lock

    def _undo(self) -> None:
        for place in reversed(self._made):
            with contextlib.suppress(OSError):  # a folder something else wrote into stays
                if place == self.path:
                    place.unlink()
                else:
                    place.rmdir()
        self._made.clear()


def _same_file(handle: Any, path: Path) -> bool:
    """Whether the locked handle is still the file at ``path`` (a refused run that made the
    lock removes it again; a lock taken on the removed file would not exclude anyone)."""
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _try_lock(handle: Any) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]  # Windows only
            return True
        except OSError:
            return False
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
