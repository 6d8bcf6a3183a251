"""Progress of a run on stderr: a bar on a terminal, a few lines in a log."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

#: The stages whose events carry ``index``/``total``/``fraction`` of one item (a method, or a
#: metric of one method); the other stages (load, segment, write, done) are one event each.
ITEM_STAGES = ("method", "evaluate")


class ProgressBar:
    """A tqdm bar over the whole run: one unit per method, advanced by each method's fraction."""

    def __init__(self, enabled: bool, stage: str = "method", stream: TextIO | None = None):
        self.enabled = enabled
        self.bar: Any = None
        self.stage = stage
        self.stream = stream or sys.stderr

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            if event.get("warning"):  # a long run is announced even without a progress bar
                print(f"torchesegeta: {event.get('message', '')}", file=self.stream)
            return
        if event.get("stage") == "evaluate" and self.stage != "evaluate":
            self.close()  # a second bar, one unit per (metric, method)
            self.bar, self.stage = None, "evaluate"
        if event.get("stage") != self.stage:
            if self.bar is None:
                print(f"torchesegeta: {event.get('message', '')}", file=self.stream)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=float(event["total"]),
                unit="method",
                file=self.stream,
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.2f}/{total:.0f} "
                + ("methods" if self.stage == "method" else "evaluations")
                + " [{elapsed}<{remaining}]",
            )
        self.bar.n = event["index"] + event["fraction"]
        self.bar.set_description(event.get("message", "")[:48], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ProgressLines:
    """Progress for a log (CI, Slicer's log, batch mode): a line when a method (or a metric of
    a method) starts and ends, and in between at most one line per ``step`` of its progress or
    per ``interval`` seconds, never a line per batch."""

    def __init__(
        self,
        stream: TextIO | None = None,
        step: float = 0.1,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream or sys.stderr
        self.step, self.interval, self.clock = step, interval, clock
        self.item: tuple[Any, ...] | None = None
        self.fraction = 0.0
        self.printed_at = 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        message = event.get("message", "")
        if event.get("stage") not in ITEM_STAGES:
            self._line(message)
            return
        item = (event["stage"], event.get("metric"), event.get("method"))
        fraction, now = float(event.get("fraction", 0.0)), self.clock()
        new_item = item != self.item
        if not (
            new_item
            or event.get("phase") in ("start", "end")
            or abs(fraction - self.fraction) >= self.step
            or now - self.printed_at >= self.interval
        ):
            return
        self.item, self.fraction, self.printed_at = item, fraction, now
        self._line(f"[{event['index'] + 1}/{event['total']}] {fraction:4.0%} {message}")

    def _line(self, text: str) -> None:
        print(f"torchesegeta: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


def progress_display(quiet: bool, stage: str = "method") -> ProgressBar | ProgressLines:
    """A bar when stderr is a terminal, lines otherwise (a bar's redraws would flood a log)."""
    if not quiet and not sys.stderr.isatty():
        return ProgressLines()
    return ProgressBar(enabled=not quiet, stage=stage)
