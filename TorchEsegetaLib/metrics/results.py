"""The scores of an evaluation as one table: methods x metrics, with curves, notes, ranks per
metric, the methods in the recommendation's order, and its JSON form in run.json (``"metrics"``)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Curve = tuple[list[float], list[float]]


@dataclass
class Evaluation:
    """Scores of every method by every metric, with curves and notes.

    Attributes:
        metrics: per metric, its description, parameters and direction ("higher"/"lower").
        scores: method label -> metric name -> value (None when it could not be computed).
        notes: method label -> metric name -> why a value is missing or what to know.
        curves: metric name -> method label -> (x, y), for plots and table nodes.
        details: metric name -> method label -> further numbers (pass/fail, second curves).
        seconds: metric name -> seconds for all methods (shared work included).
        method_seconds: metric name -> method label -> seconds (shared work counts for the first).
        method_info: method label -> {"seconds", "peak_memory_mb", "title"} of the explanation.
        score: what the target score is, in words (the unit of deletion, insertion, infidelity).
    """

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)
    notes: dict[str, dict[str, str]] = field(default_factory=dict)
    curves: dict[str, dict[str, Curve]] = field(default_factory=dict)
    details: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    method_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    method_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    score: str = ""

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys([*self.method_info, *self.scores]))

    def ranks(self) -> dict[str, dict[str, float]]:
        """metric -> method -> rank (1 = best, ties share the average rank), missing values left out."""
        from scipy.stats import rankdata

        ranks: dict[str, dict[str, float]] = {}
        for name, info in self.metrics.items():
            present = [(m, v[name]) for m, v in self.scores.items() if v.get(name) is not None]
            if not present:
                continue
            values = np.array([v for _, v in present], dtype=np.float64)
            order = rankdata(-values if info["direction"] == "higher" else values)
            ranks[name] = {m: float(r) for (m, _), r in zip(present, order)}
        return ranks

    def title(self, label: str) -> str:
        """The method's name for people ("Integrated Gradients"), its label when unknown."""
        return self.method_info.get(label, {}).get("title") or label

    def unit_and_caveat(self, name: str) -> tuple[str, str]:
        """The metric's unit and caveat, as recorded or (evaluations saved before they were)
        as the registry declares them."""
        info = self.metrics.get(name, {})
        if "unit" in info:
            return info["unit"], info.get("caveat", "")
        from . import REGISTRY

        cls = REGISTRY.get(name)
        return (cls.unit, cls.caveat) if cls is not None else ("not recorded", "")

    def grouped_notes(self) -> list[tuple[str, list[str], str]]:
        """(metric, method labels, note): one entry per distinct note of a metric, so a metric
        that could not run for any method (no reference mask) is said once, not per method."""
        grouped: dict[tuple[str, str], list[str]] = {}
        for label, per in self.notes.items():
            for name, text in per.items():
                grouped.setdefault((name, text), []).append(label)
        order = list(self.metrics)
        return sorted(
            ((name, labels, text) for (name, text), labels in grouped.items()),
            key=lambda item: order.index(item[0]) if item[0] in order else len(order),
        )

    def recommendation(self, method_names: dict[str, str] | None = None) -> dict[str, Any]:
        """Which map to look at first, with its evidence (see :mod:`.recommendation`)."""
        from .recommendation import recommend

        return recommend(self, method_names)

    def rows(self, summary: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One dict per method in the recommendation's order (most faithful first): method,
        faithfulness (the recommendation's score: 0 is a random order), verdict, seconds, peak
        memory, then the metrics' values. ``summary``: the recommendation, if already made."""
        summary = summary if summary is not None else self.recommendation()
        entries = {e["method"]: e for e in summary["ranking"]}
        order = [e["method"] for e in summary["ranking"]]
        order += [label for label in self.methods if label not in entries]
        rows = []
        for label in order:
            info = self.method_info.get(label, {})
            entry = entries.get(label, {})
            rows.append(
                {
                    "method": label,
                    "faithfulness": entry.get("score"),
                    "verdict": entry.get("verdict"),
                    "seconds": info.get("seconds"),
                    "peak_memory_mb": info.get("peak_memory_mb"),
                    **{name: self.scores.get(label, {}).get(name) for name in self.metrics},
                }
            )
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "scores": self.scores,
            "notes": self.notes,
            "curves": {
                m: {label: {"x": c[0], "y": c[1]} for label, c in per.items()}
                for m, per in self.curves.items()
            },
            "details": self.details,
            "seconds": self.seconds,
            "method_seconds": self.method_seconds,
            "method_info": self.method_info,
            "score": self.score,
            "ranking": [entry["method"] for entry in self.recommendation()["ranking"]],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evaluation:
        curves = {
            m: {label: (c["x"], c["y"]) for label, c in per.items()}
            for m, per in data.get("curves", {}).items()
        }
        return cls(
            data.get("metrics", {}),
            data.get("scores", {}),
            data.get("notes", {}),
            curves,
            data.get("details", {}),
            data.get("seconds", {}),
            data.get("method_seconds", {}),
            data.get("method_info", {}),
            data.get("score", ""),
        )

    def over(self, older: Evaluation) -> Evaluation:
        """``older`` updated with this evaluation: the (metric, method) pairs computed now
        replace the old ones; everything else is kept."""
        merged = Evaluation.from_json(json.loads(json.dumps(older.to_json())))
        merged.metrics.update(self.metrics)
        Table = dict[str, dict[str, Any]]
        by_method: list[tuple[Table, Table]] = [
            (merged.scores, self.scores),
            (merged.notes, self.notes),
        ]
        by_metric: list[tuple[Table, Table]] = [
            (self.curves, merged.curves),
            (self.details, merged.details),
            (self.method_seconds, merged.method_seconds),
        ]
        for label in self.scores:
            for table, mine in by_method:
                row = table.setdefault(label, {})
                for name in self.metrics:
                    row.pop(name, None)
                row.update(mine.get(label, {}))
        for mine, theirs in by_metric:
            for name in self.metrics:
                per = theirs.setdefault(name, {})
                for label in self.scores:
                    per.pop(label, None)
                per.update(mine.get(name, {}))
                if not per:
                    del theirs[name]
        merged.seconds.update(self.seconds)
        merged.method_info.update(self.method_info)
        merged.score = self.score or merged.score
        return merged


def format_value(value: float | None) -> str:
    """A score for people: three significant digits, "n/a" when it could not be computed."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.3g}"


def metrics_csv(evaluation: Evaluation) -> str:
    rows = evaluation.rows()
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(rows[0]) if rows else ["method"], lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def rows_and_curves(evaluation: Evaluation) -> tuple[list[dict[str, Any]], dict[str, Curve]]:
    """For table and plot nodes: the rows (most faithful first), and ``"metric/method" -> (x, y)`` curves."""
    curves = {
        f"{metric}/{label}": curve
        for metric, per in evaluation.curves.items()
        for label, curve in per.items()
    }
    return evaluation.rows(), curves
