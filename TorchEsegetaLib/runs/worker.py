"""Run a Job in a child process and report progress as JSON lines on stdout.

``python -m TorchEsegetaLib.runs.worker JOB.json`` is what the Slicer module (and any other front
end that must stay responsive) launches. Every line on stdout is one JSON object:

* ``{"event": "progress", "stage": ..., "fraction": ..., "message": ..., ["method", "index", "total"]}``
* ``{"event": "done", "run_folder": PATH}`` then exit status 0
* ``{"event": "error", "kind": "input" | "internal" | "cancelled", "message": ...}`` then exit
  status 2, 1 or 130

SIGTERM and SIGINT cancel the run at the next batch; the temporary folder is removed and no
run folder appears. Nothing else is printed on stdout (library warnings go to stderr).
"""

from __future__ import annotations

import json
import signal
import sys
import time
import traceback
from typing import Any

from ..errors import CancelledError, UserInputError


def emit(event: dict[str, Any], stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(event) + "\n")
    stream.flush()


def throttled(send, interval: float = 0.1, clock=time.monotonic):
    """``send`` for progress events, at most one per ``interval`` seconds: a method's start and
    end (fractions 0 and 1) and the first event of each stage or method always go through,
    so the panel's log keeps every step while a run of thousands of small batches does not
    flood the pipe."""
    last: dict[str, Any] = {"time": None, "key": None}

    def progress(event: dict[str, Any]) -> None:
        now, key = clock(), (event.get("stage"), event.get("method"))
        due = last["time"] is None or now - last["time"] >= interval
        if event.get("fraction") in (0.0, 1.0) or key != last["key"] or due:
            last.update(time=now, key=key)
            send(event)

    return progress


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        emit(
            {
                "event": "error",
                "kind": "input",
                "message": "usage: python -m TorchEsegetaLib.runs.worker JOB.json",
            }
        )
        return 2
    from ..engine.context import CancelToken

    token = CancelToken()

    def cancel(signum, frame) -> None:
        token.cancel()

    signal.signal(signal.SIGTERM, cancel)
    signal.signal(signal.SIGINT, cancel)
    try:
        from .job import Job
        from .runner import run_job

        job = Job.load(args[0])
        send = throttled(lambda e: emit({"event": "progress", **e}))

        def progress(event: dict) -> None:
            if event.get("stage") == "estimate":  # the cost estimate, as a line of the log
                print(f"torchesegeta: {event.get('message', '')}", file=sys.stderr)
            send(event)

        out = run_job(job, progress=progress, cancel=token, inputs=[("job file", args[0])])
    except UserInputError as e:
        emit({"event": "error", "kind": "input", "message": str(e)})
        return 2
    except (CancelledError, KeyboardInterrupt):
        emit(
            {
                "event": "error",
                "kind": "cancelled",
                "message": "cancelled; no run folder was written",
            }
        )
        return 130
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        emit({"event": "error", "kind": "internal", "message": f"{type(e).__name__}: {e}"})
        return 1
    emit({"event": "done", "run_folder": str(out)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
