"""Run a Job in a worker process and follow its JSON-line protocol. Pure Python: no slicer, no Qt.

The worker (``python -m TorchEsegetaLib.runs.worker JOB.json``, see its docstring) prints one JSON
object per line: progress events, then one "done" or "error" event. :class:`WorkerProtocol` turns
those lines into the panel's state (progress fraction, message, run folder or error);
:class:`WorkerProcess` starts the worker and hands its lines to the protocol whenever
:meth:`WorkerProcess.poll` is called: the panel calls it from a ``qt.QTimer``, so Slicer's
main thread never blocks and the scene is only touched there.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
# Share of the progress bar for each stage; method progress fills the "method" share.
_STAGE_SPANS = {
    "load": (0.0, 0.05),
    "segment": (0.05, 0.1),
    "method": (0.1, 0.95),
    "write": (0.95, 1.0),
    "done": (1.0, 1.0),
}
_STDERR_LINES_KEPT = 20


class WorkerProtocol:
    """State machine of one worker run, fed line by line.

    Attributes:
        state: "running", then "done", "failed" or "cancelled".
        fraction: overall progress in [0, 1], never decreasing.
        message: the latest progress message.
        method: label of the method being computed, or None.
        runFolder: the finished run folder (state "done").
        errorKind: "input", "internal" or "cancelled" as the worker reported it.
        errorMessage: the engine's message (states "failed" and "cancelled").
        log: every line received, for the panel's log area.
    """

    def __init__(self) -> None:
        self.state = RUNNING
        self.fraction = 0.0
        self.message = "starting"
        self.method: str | None = None
        self.runFolder: str | None = None
        self.errorKind: str | None = None
        self.errorMessage = ""
        self.log: list[str] = []
        self._stderrTail: list[str] = []

    @property
    def finished(self) -> bool:
        return self.state != RUNNING

    def feedLine(self, line: str) -> dict[str, Any] | None:
        """Take one stdout line; returns its event, or None for a line that is not one."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return None
        self.log.append(line)
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(event, dict) or "event" not in event:
            return None
        if self.finished:
            return event
        kind = event["event"]
        if kind == "progress":
            self._progress(event)
        elif kind == "done":
            self.state, self.fraction = DONE, 1.0
            self.runFolder = event.get("run_folder")
            self.message = f"finished: {self.runFolder}"
        elif kind == "error":
            self.errorKind = event.get("kind", "internal")
            self.errorMessage = event.get("message", "the worker reported an error")
            self.state = CANCELLED if self.errorKind == "cancelled" else FAILED
            self.message = self.errorMessage
        return event

    def feedStderr(self, line: str) -> None:
        """Take one stderr line (library warnings, tracebacks): logged, kept for error reports."""
        line = line.rstrip("\r\n")
        if line.strip():
            self.log.append(line)
            self._stderrTail = [*self._stderrTail, line][-_STDERR_LINES_KEPT:]

    def finish(self, returnCode: int, cancelRequested: bool = False) -> None:
        """The process ended: settle the state if no final event arrived (killed, crashed)."""
        if self.finished:
            return
        if cancelRequested:
            self.state, self.errorKind = CANCELLED, "cancelled"
            self.errorMessage = "cancelled; no run folder was written"
        else:
            self.state, self.errorKind = FAILED, "internal"
            details = "\n".join(self._stderrTail) or "no message"
            self.errorMessage = (
                f"the worker stopped with exit status {returnCode} before finishing:\n{details}"
            )
        self.message = self.errorMessage

    def _progress(self, event: dict[str, Any]) -> None:
        stage = event.get("stage", "")
        low, high = _STAGE_SPANS.get(stage, (self.fraction, self.fraction))
        within = _clip(float(event.get("fraction", 0.0)))
        if stage == "method" and event.get("total"):
            total, index = int(event["total"]), int(event.get("index", 0))
            within = _clip((index + within) / max(total, 1))
            self.method = event.get("method")
        self.fraction = max(self.fraction, low + (high - low) * within)
        self.message = event.get("message", self.message)


class WorkerProcess:
    """The worker as a child process whose output is read by background threads.

    Args:
        jobFile: the job.json to run.
        python: the interpreter (default: :func:`pythonExecutable`).
        engineFolder: folder holding the TorchEsegetaLib package, put first on PYTHONPATH.
    """

    def __init__(self, jobFile, python: str | None = None, engineFolder=None) -> None:
        self.jobFile = Path(jobFile)
        self.python = python or pythonExecutable()
        self.engineFolder = engineFolder
        self.protocol = WorkerProtocol()
        self.cancelRequested = False
        self._process: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._readers: list[threading.Thread] = []

    def start(self) -> WorkerProcess:
        env = dict(os.environ)
        if self.engineFolder is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.engineFolder), env.get("PYTHONPATH", "")) if p
            )
        env["PYTHONUNBUFFERED"] = "1"
        self._process = subprocess.Popen(
            [self.python, "-m", "TorchEsegetaLib.runs.worker", str(self.jobFile)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
            cwd=str(self.jobFile.parent),
            **_ownProcessGroup(),
        )
        for stream, name in ((self._process.stdout, "stdout"), (self._process.stderr, "stderr")):
            reader = threading.Thread(target=self._read, args=(stream, name), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    @property
    def finished(self) -> bool:
        return self.protocol.finished

    def poll(self) -> list[dict[str, Any]]:
        """Hand the lines received so far to the protocol; returns the new events.

        When the process has ended and all its output is read, the protocol is finished.
        """
        events = []
        while True:
            try:
                name, line = self._lines.get_nowait()
            except queue.Empty:
                break
            if name == "stdout":
                event = self.protocol.feedLine(line)
                if event is not None:
                    events.append(event)
            else:
                self.protocol.feedStderr(line)
        if (
            self._process is not None
            and self._process.poll() is not None
            and not any(reader.is_alive() for reader in self._readers)
            and self._lines.empty()
        ):
            self.protocol.finish(self._process.returncode, self.cancelRequested)
        return events

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> WorkerProtocol:
        """Poll until the run ends (for scripts and tests; the panel polls from a timer)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not finish within {timeout} s")
            self.poll()
            time.sleep(interval)
        return self.protocol

    def cancel(self) -> None:
        """Ask the worker to stop: it cancels at the next batch and removes its partial output."""
        self.cancelRequested = True
        if self._process is None or self._process.poll() is not None:
            return
        if os.name == "posix":
            # PythonSlicer is a launcher with the real interpreter as its child: signal both.
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
                return
            except (ProcessLookupError, PermissionError):
                pass
        for child in _children(self._process.pid):
            child.terminate()
        self._process.terminate()

    def kill(self) -> None:
        """Stop the worker at once (when the panel closes); its partial output may remain."""
        self.cancelRequested = True
        if self._process is not None and self._process.poll() is None:
            self._process.kill()

    def _read(self, stream, name: str) -> None:
        for line in stream:
            self._lines.put((name, line))
        stream.close()


def pythonExecutable() -> str:
    """The interpreter that runs the worker: Slicer's PythonSlicer inside Slicer, else this one."""
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    candidates = [Path(sysconfig.get_path("scripts")) / name, shutil.which("PythonSlicer")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return sys.executable


def _children(pid: int) -> list:
    """The launcher's child processes where psutil is available (Windows has no process groups
    to signal; terminating only the launcher would leave the worker running)."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _ownProcessGroup() -> dict[str, Any]:
    if os.name == "posix":
        return {"start_new_session": True}
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))
