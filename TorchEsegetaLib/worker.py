"""Run a Job in a child process and report progress as JSON lines on stdout.

``python -m TorchEsegetaLib.worker JOB.json`` is what the Slicer module (and any other front
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
import traceback
from typing import Any

from .errors import CancelledError, UserInputError


def emit(event: dict[str, Any], stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(event) + "\n")
    stream.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        emit(
            {
                "event": "error",
                "kind": "input",
                "message": "usage: python -m TorchEsegetaLib.worker JOB.json",
            }
        )
        return 2
    from .engine import CancelToken

    token = CancelToken()

    def cancel(signum, frame) -> None:
        token.cancel()

    signal.signal(signal.SIGTERM, cancel)
    signal.signal(signal.SIGINT, cancel)
    try:
        from .job import Job
        from .runner import run_job

        job = Job.load(args[0])
        out = run_job(job, progress=lambda e: emit({"event": "progress", **e}), cancel=token)
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
