"""The engine's evaluation (run.json "metrics", or an in-memory Evaluation) as table rows and
curves, and the uncertainty summaries as table rows, ready for table and plot chart nodes. Pure
Python: no slicer."""

from __future__ import annotations

import numbers
from typing import Any

DEFAULT_AXES = ("x", "y")


def evaluationTables(metrics: Any) -> tuple[list[dict], dict[str, tuple[dict, str, str]]]:
    """``(rows, charts)``: one row per method (most faithful first), and per metric with a
    curve (deletion, insertion, randomisation...) ``{title: ({method: (x, y)}, x title, y title)}``.

    Accepts an engine ``Evaluation``, its JSON form (run.json's "metrics"), or an older
    ``{method: {metric: value}}`` mapping or list of rows (no curves).
    """
    if not metrics:
        return [], {}
    evaluation = metrics if hasattr(metrics, "rows") else None
    if evaluation is None and isinstance(metrics, dict) and "scores" in metrics:
        from TorchEsegetaLib.runs.evaluation import Evaluation

        evaluation = Evaluation.from_json(metrics)
    if evaluation is None:
        return _cells(_legacyRows(metrics)), {}
    charts = {}
    for name, perMethod in evaluation.curves.items():
        info = evaluation.metrics.get(name, {})
        xTitle, yTitle = curveAxes(name, info)
        curves = {label: (list(x), list(y)) for label, (x, y) in perMethod.items()}
        charts[info.get("title", name)] = (curves, xTitle, yTitle)
    return _cells(evaluation.rows()), charts


def curveAxes(name: str, info: dict[str, Any]) -> tuple[str, str]:
    """Axis titles of a metric's curve: from the run, else from the metric registry."""
    axes = info.get("curve_axes")
    if not axes:
        try:
            from TorchEsegetaLib.metrics import REGISTRY
        except ImportError:
            REGISTRY = {}
        axes = getattr(REGISTRY.get(name), "curve_axes", None)
    return tuple(axes) if axes else DEFAULT_AXES


def _legacyRows(metrics: Any) -> list[dict]:
    if isinstance(metrics, dict):
        return [
            {"method": method, **(values if isinstance(values, dict) else {"value": values})}
            for method, values in metrics.items()
        ]
    return [row for row in metrics if isinstance(row, dict)]


def _cells(rows: list[dict]) -> list[dict]:
    # Curves and nested results do not fit in a cell; they belong in plots.
    return [
        {
            key: value
            for key, value in row.items()
            if isinstance(value, (str, numbers.Real)) or value is None
        }
        for row in rows
    ]


def uncertaintyRows(summaries) -> list[dict]:
    """One table row per uncertainty kind, from run.json's "uncertainty_summary" entries."""
    rows = []
    for summary in summaries or []:
        volume = summary.get("class_volume_ml") or {}
        rows.append(
            {
                "kind": summary.get("kind"),
                "members": summary.get("members"),
                "class": summary.get("class"),
                "mean entropy in target (nats)": summary.get("mean_entropy_in_target"),
                "mean mutual information in target (nats)": summary.get(
                    "mean_mutual_information_in_target"
                ),
                "class flip share": summary.get("class_flip_share"),
                "class volume min (mL)": volume.get("min"),
                "class volume max (mL)": volume.get("max"),
            }
        )
    return rows
