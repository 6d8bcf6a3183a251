"""Progress of a cohort: a bar on a terminal, one line per finished case otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import IO, Any


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class CohortProgress:
    """Counts finished cases; shows cases done, failed, rate (cases per minute) and time left."""

    def __init__(self, total: int, enabled: bool = True, stream: IO[str] | None = None):
        self.total, self.enabled = total, enabled and total > 0
        self.stream = stream or sys.stderr
        self.done = self.failed = 0
        self.started = time.monotonic()
        self.bar: Any = None
        if self.enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                unit="case",
                file=self.stream,
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n}/{total} cases [{elapsed}<{remaining}{postfix}]",
            )

    def rate(self) -> float:
        """Cases per minute since the start."""
        elapsed = time.monotonic() - self.started
        return 60.0 * self.done / elapsed if elapsed > 0 else 0.0

    def case_done(self, outcome: dict[str, Any]) -> None:
        self.done += 1
        self.failed += outcome.get("status") == "failed"
        if not self.enabled:
            return
        rate = self.rate()
        left = (self.total - self.done) / rate * 60.0 if rate > 0 else 0.0
        counts = f"failed {self.failed}, {rate:.1f} cases/min"
        if self.bar is not None:
            if outcome.get("status") == "failed":
                self.bar.write(f"{outcome['case']}: failed: {outcome.get('error', '')}")
            self.bar.set_postfix_str(counts, refresh=False)
            self.bar.update(1)
            return
        seconds = outcome.get("seconds")
        took = f"{seconds:7.2f} s" if seconds is not None else "      -  "
        line = (
            f"[{self.done:>{len(str(self.total))}}/{self.total}] {outcome['case']:<24} "
            f"{outcome['status']:<7} {took}  ({counts}, {_duration(left)} left)"
        )
        if outcome.get("status") == "failed":
            line += f"\n    {outcome.get('error', '')}"
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
