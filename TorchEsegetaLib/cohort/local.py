"""The local engine: worker processes on this machine, one case at a time each.

By default one worker per visible GPU (each sees only its own GPU through
``CUDA_VISIBLE_DEVICES``), or one on the CPU; ``workers=N`` sets the number. CPU threads are
shared out evenly (``cores // workers`` each). A worker that dies (out of memory, kill -9)
fails the case it was running, its temporary folder is removed and a new worker takes over
the rest. Ctrl-C (KeyboardInterrupt in the caller) cancels every running case, waits for the
workers to clean up and exit (killing any that do not within ``grace_s``), and re-raises.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .execute import FAILED, make_task
from .plan import ENGINE_FOLDER, remove_partial_folders

Event = dict[str, Any]
#: A worker that dies before it is ready this many times in a row means workers cannot start.
MAX_START_FAILURES = 3


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [g.strip() for g in listed.split(",") if g.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_slots(workers: int | None, device: str) -> list[dict[str, Any]]:
    """One ``{"gpu", "threads"}`` per worker for a job ``device`` ("auto", "cpu", "cuda[:N]")."""
    gpus = visible_gpus() if device in ("auto", "cuda") else []
    count = workers or max(1, len(gpus))
    threads = max(1, (os.cpu_count() or 1) // count)
    return [
        {"gpu": gpus[i % len(gpus)] if gpus else None, "threads": threads} for i in range(count)
    ]


class _Worker:
    def __init__(self, index: int, slot: dict[str, Any], events: queue.Queue, log: Path):
        env = dict(os.environ, OMP_NUM_THREADS=str(slot["threads"]))
        if slot["gpu"] is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot["gpu"]
        self.index, self.slot = index, slot
        self.case: str | None = None
        self.ready = False
        self.log: IO[str] = open(log, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "TorchEsegetaLib.cohort.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            # Its own process group: a terminal's Ctrl-C reaches the engine only, which then
            # stops the workers in order.
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, args=(events,), daemon=True)
        self.reader.start()

    def _read(self, events: queue.Queue) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library printing on stdout
            if isinstance(event, dict):
                events.put((self, event))
        events.put((self, {"event": "exit"}))

    def send(self, task: dict[str, Any]) -> None:
        self.case = task["case"]
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(task) + "\n")
            self.process.stdin.flush()
        except OSError:
            pass  # it died: its "exit" event follows and fails the case

    def finish(self) -> None:
        """No more tasks: end of stdin lets it exit."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except OSError:
            pass

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self.finish()
        self.reader.join(timeout=5)
        self.process.wait()
        self.log.close()


class LocalEngine:
    """Worker processes on this machine (see the module)."""

    name = "local"

    def __init__(self, workers: int | None = None, device: str = "auto", grace_s: float = 20.0):
        if workers is not None and workers < 1:
            from ..errors import UserInputError

            raise UserInputError(f"--workers must be at least 1, got {workers}")
        self.workers, self.device, self.grace_s = workers, device, grace_s

    def describe(self, cases: int) -> dict[str, Any]:
        slots = worker_slots(self.workers, self.device)[: max(1, cases)]
        return {"engine": self.name, "workers": len(slots), "slots": slots}

    def run(
        self, tasks: list[dict[str, Any]], out: Path, on_event: Callable[[Event], None]
    ) -> None:
        """Run every task; ``on_event`` receives each worker event ("start", "progress",
        "done"), failures of dead workers included, in the calling thread."""
        if not tasks:
            return
        slots = worker_slots(self.workers, self.device)[: len(tasks)]
        events: queue.Queue = queue.Queue()
        logs = out / ENGINE_FOLDER
        pending = deque(tasks)
        workers: list[_Worker] = []
        start_failures = 0

        def start(index: int) -> None:
            workers.append(_Worker(index, slots[index], events, logs / f"worker-{index}.log"))

        def dispatch(worker: _Worker) -> None:
            if pending:
                task = pending.popleft()
                worker.send(make_task(task["case"], task["job"], worker.slot["threads"]))
            else:
                worker.case = None
                worker.finish()

        for index in range(len(slots)):
            start(index)
        try:
            while workers:  # each leaves on its "exit" event, which always comes
                try:
                    worker, event = events.get(timeout=0.5)
                except queue.Empty:
                    continue
                kind = event.get("event")
                if kind == "ready":
                    worker.ready, start_failures = True, 0
                    dispatch(worker)
                elif kind == "done":
                    remove_partial_folders(out, event["case"])
                    on_event(event)
                    dispatch(worker)
                elif kind in ("start", "progress"):
                    on_event(event)
                elif kind == "exit":
                    worker.close()
                    workers.remove(worker)
                    if worker.case is not None:
                        on_event(self._died(worker, out))
                    if not worker.ready:
                        start_failures += 1
                        if start_failures >= MAX_START_FAILURES:
                            log = logs / f"worker-{worker.index}.log"
                            raise RuntimeError(
                                f"worker processes exit before they are ready: {_tail(log)} "
                                f"(log: {log})"
                            )
                    if pending:
                        start(worker.index)
        except BaseException:
            self._stop(workers, events, out, on_event)
            raise
        finally:
            for worker in workers:
                worker.close()

    def _died(self, worker: _Worker, out: Path) -> Event:
        code = worker.process.returncode
        how = (
            f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        )
        if worker.case is not None:
            remove_partial_folders(out, worker.case)
        return {
            "event": "done",
            "case": worker.case,
            "status": FAILED,
            "kind": "internal",
            "error": f"the worker process died ({how}) while running this case; nothing was "
            "written for it (out of memory? see the worker log in the output's .cohort folder)",
            "seconds": None,
        }

    def _stop(
        self,
        workers: list[_Worker],
        events: queue.Queue,
        out: Path,
        on_event: Callable[[Event], None],
    ) -> None:
        """Cancel every running case, let workers clean up, kill those that do not stop."""
        for worker in workers:
            worker.signal(signal.SIGTERM)
            worker.finish()
        deadline = time.monotonic() + self.grace_s
        alive = list(workers)
        try:
            while alive and time.monotonic() < deadline:
                try:
                    worker, event = events.get(timeout=0.2)
                except queue.Empty:
                    alive = [w for w in alive if w.process.poll() is None]
                    continue
                if event.get("event") == "done":  # finished just before the signal: keep it
                    remove_partial_folders(out, event["case"])
                    worker.case = None
                    on_event(event)
                elif event.get("event") == "exit" and worker in alive:
                    alive.remove(worker)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting
        for worker in workers:
            if worker.process.poll() is None:
                worker.signal(signal.SIGKILL)
            worker.process.wait()
            if worker.case is not None:
                remove_partial_folders(out, worker.case)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])
