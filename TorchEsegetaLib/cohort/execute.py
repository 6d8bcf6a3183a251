"""Run one case: the same function in a local worker process and in a Ray task.

A task is a JSON-able dict ``{"case": id, "job": job dict, "threads": n}``; the outcome is a
dict ``{"case", "status", "seconds", "run_folder" | "error", "kind"}`` with status "ok" (run
folder complete), "partial" (complete, but a method ran past its time budget) or "failed"
(nothing published; ``kind`` is "input" for bad data such as a corrupt file or an empty
target, "internal" otherwise). A cancel (Ctrl-C, SIGTERM) is not an outcome: it propagates,
and ``run_job`` has already removed the case's temporary folder.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from ..errors import CancelledError, UserInputError

OK, PARTIAL, FAILED = "ok", "partial", "failed"


def make_task(case_id: str, job: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    return {"case": case_id, "job": job, "threads": threads}


def execute_case(task: dict[str, Any], cancel: Any = None, progress: Any = None) -> dict[str, Any]:
    """Run ``task``'s job into its run folder and describe what happened (see the module)."""
    started = time.perf_counter()
    outcome: dict[str, Any] = {
        "case": task["case"],
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    try:
        if task.get("threads"):
            import torch

            # The same thread count gives the same float reductions, so the engines agree bitwise.
            torch.set_num_threads(int(task["threads"]))
        from ..runs.job import Job
        from ..runs.runner import run_job

        folder = run_job(Job.from_dict(task["job"]), progress=progress, cancel=cancel)
        record = json.loads((Path(folder) / "run.json").read_text(encoding="utf-8"))
        late = [m["label"] for m in record["methods"] if m["status"] != "ok"]
        outcome.update(status=OK if not late else PARTIAL, run_folder=str(folder))
        if late:
            outcome["error"] = f"method(s) {', '.join(late)} ran past the time budget"
    except (CancelledError, KeyboardInterrupt):
        raise
    except UserInputError as e:
        outcome.update(status=FAILED, kind="input", error=str(e))
    except Exception as e:  # an internal error of one case must not stop the cohort
        outcome.update(
            status=FAILED,
            kind="internal",
            error=f"{type(e).__name__}: {e}",
            traceback=traceback.format_exc(limit=8),
        )
    outcome["seconds"] = round(time.perf_counter() - started, 3)
    return outcome
