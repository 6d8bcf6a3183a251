"""Progress of a run on stderr."""

from __future__ import annotations

import sys
from typing import Any


class ProgressBar:
    """A tqdm bar over the whole run: one unit per method, advanced by each method's fraction."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.stage = "method"

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if event.get("stage") == "evaluate" and self.stage != "evaluate":
            self.close()  # a second bar, one unit per (metric, method)
            self.bar, self.stage = None, "evaluate"
        if event.get("stage") != self.stage:
            if self.bar is None:
                print(f"torchesegeta: {event.get('message', '')}", file=sys.stderr)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=float(event["total"]),
                unit="method",
                file=sys.stderr,
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
