"""A local engine's worker process: ``python -m TorchEsegetaLib.cohort.worker``.

It reads tasks (:mod:`.execute`), one JSON object per line on stdin, runs them one after the
other and answers with JSON lines on stdout:

* ``{"event": "ready", "pid"}`` once the libraries are imported
* ``{"event": "start", "case"}``, ``{"event": "progress", "case", "stage", "fraction", ...}``
* ``{"event": "done", **outcome}`` for each case, ok or failed
* ``{"event": "cancelled", "case"}`` before exiting with 130 on SIGTERM or SIGINT

End of stdin ends the worker (status 0). SIGTERM and SIGINT cancel the running case at its
next batch (its temporary folder is removed, no run folder appears). If the parent process
dies (even by kill -9) the worker notices within a second and cancels in the same way, so no
orphan keeps computing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

from ..errors import CancelledError
from ..runs.worker import emit, throttled

EXIT_CANCELLED = 130


class _State:
    token: Any = None
    stopping = False


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def main() -> int:
    state = _State()

    def on_signal(signum: int, frame: Any) -> None:
        state.stopping = True
        if state.token is not None:
            state.token.cancel()
        else:  # waiting for a task: stop now
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    case = None
    try:
        # Imported before "ready", so that a case's time is its own.
        import monai.networks.nets  # noqa: F401

        from .. import methods, metrics  # noqa: F401
        from ..engine.context import CancelToken
        from ..figures import overview as figures  # noqa: F401
        from ..models import inference  # noqa: F401
        from ..models import loading as models  # noqa: F401
        from ..runs import evaluation, runner  # noqa: F401
        from .execute import execute_case

        emit({"event": "ready", "pid": os.getpid()})
        for line in sys.stdin:
            if not line.strip():
                continue
            task = json.loads(line)
            case = task["case"]
            state.token = CancelToken()
            emit({"event": "start", "case": case, "pid": os.getpid()})
            progress = throttled(
                lambda e, case=case: emit({"event": "progress", "case": case, **e})
            )
            outcome = execute_case(task, cancel=state.token, progress=progress)
            state.token = None
            emit({"event": "done", **outcome})
            case = None
            if state.stopping:  # the signal came as the case finished: it is kept, stop now
                raise CancelledError("stopped")
    except BrokenPipeError:  # the parent is gone: nobody to tell
        return EXIT_CANCELLED
    except (CancelledError, KeyboardInterrupt):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            emit({"event": "cancelled", "case": case})
        except BrokenPipeError:
            pass
        return EXIT_CANCELLED
    return 0


if __name__ == "__main__":
    sys.exit(main())
