"""The run's evaluation as the viewer shows it: a table (one row per method, best first) and the
deletion/insertion curves; and its uncertainty summaries (one row per kind). Rows come from the
Slicer module's ``evaluationTables`` and ``uncertaintyRows`` and the figure from the engine's
report code, so the browser, Slicer and report.html agree. Pure Python."""

from __future__ import annotations

import base64
from typing import Any

from TorchEsegetaSlicer.evaluationData import evaluationTables, uncertaintyRows

from TorchEsegetaLib.figures.metric_figures import curves_png, format_value

_ARROWS = {"higher": "\u2191", "lower": "\u2193"}
_FIXED_COLUMNS = {
    "method": "method",
    "mean_rank": "mean rank",
    "seconds": "seconds",
    "peak_memory_mb": "peak MB",
}


def metricsTable(evaluation: dict[str, Any] | None) -> dict[str, Any]:
    """``{"headers": [{"key", "title"}], "rows": [{"method", "cells": [text]}]}``; empty lists
    when the run was not evaluated. Numbers have three significant digits, as in the report."""
    rows, _ = evaluationTables(evaluation)
    if not rows:
        return {"headers": [], "rows": []}
    metricInfo = (evaluation or {}).get("metrics", {})
    keys = list(dict.fromkeys(key for row in rows for key in row))
    headers = [{"key": key, "title": _columnTitle(key, metricInfo.get(key))} for key in keys]
    return {
        "headers": headers,
        "rows": [
            {"method": str(row.get("method")), "cells": [_cell(row.get(key)) for key in keys]}
            for row in rows
        ],
    }


def uncertaintyTable(summaries: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The run's uncertainty summaries as ``{"headers", "rows"}`` (see :func:`metricsTable`);
    the row key is the kind."""
    rows = uncertaintyRows(summaries)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return {
        "headers": [{"key": key, "title": key} for key in keys],
        "rows": [
            {"method": str(row["kind"]), "cells": [_cell(row.get(key)) for key in keys]}
            for row in rows
        ],
    }


def curvesDataUrl(evaluation: dict[str, Any] | None) -> str:
    """The deletion/insertion figure as a ``data:`` URL, or "" when the run has no such curves."""
    if not evaluation or "scores" not in evaluation:
        return ""
    from TorchEsegetaLib.runs.evaluation import Evaluation

    png = curves_png(Evaluation.from_json(evaluation))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else ""


def _columnTitle(key: str, info: dict[str, Any] | None) -> str:
    if key in _FIXED_COLUMNS:
        return _FIXED_COLUMNS[key]
    if not info:
        return key
    return f"{info.get('title') or key} {_ARROWS.get(info.get('direction'), '')}".strip()


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return format_value(float(value))
