"""The run's evaluation as the viewer shows it, narrow enough for the side panel: the methods in
the recommendation's order (title, faithfulness, randomisation check), every metric of the shown
map as a list, its attribution by structure, the deletion/insertion curves, and the uncertainty
summaries (one row per kind, from the Slicer module's ``uncertaintyRows``). The numbers come from
the engine (summary.json, run.json, structures.csv) formatted as in the report. Pure Python.
"""

from __future__ import annotations

import base64
from typing import Any

from TorchEsegetaSlicer.evaluationData import uncertaintyRows

from TorchEsegetaLib.figures.metric_figures import curves_png, format_value
from TorchEsegetaLib.metrics.recommendation import RECOMMENDED, TIED

_ARROWS = {"higher": "\u2191", "lower": "\u2193"}


def rankingTable(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per method, most faithful first: ``{"method", "title", "score", "check",
    "verdict", "chosen"}`` (``chosen``: recommended, or tied for first); [] when not evaluated."""
    rows = []
    for entry in (summary or {}).get("ranking", []):
        sanity = entry.get("sanity") or {}
        rows.append(
            {
                "method": entry["method"],
                "title": entry.get("title") or entry["method"],
                "score": format_value(entry.get("score")),
                "check": {"passed": "passed", "failed": "FAILED"}.get(sanity.get("status"), "-"),
                "verdict": entry.get("verdict", ""),
                "chosen": entry.get("verdict") in (RECOMMENDED, TIED),
            }
        )
    return rows


def scoresByMethod(evaluation: dict[str, Any] | None) -> dict[str, list[dict[str, str]]]:
    """``{method: [{"metric": title and direction, "value": text}]}`` for every evaluated map."""
    if not evaluation:
        return {}
    metrics = evaluation.get("metrics", {})
    notes = evaluation.get("notes", {})
    shown: dict[str, list[dict[str, str]]] = {}
    for label, scores in (evaluation.get("scores") or {}).items():
        shown[label] = [
            {
                "metric": _metricTitle(name, info),
                "value": _cell(scores.get(name)),
                "note": notes.get(label, {}).get(name, ""),
            }
            for name, info in metrics.items()
        ]
    return shown


def structuresByMethod(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """``{method: [{"structure", "share", "volume", "enrichment"}]}``, largest share first."""
    shown: dict[str, list[dict[str, str]]] = {}
    for row in sorted(rows, key=lambda r: -(r.get("abs_share") or 0.0)):
        shown.setdefault(row["method"], []).append(
            {
                "structure": row["structure"],
                "share": _percent(row.get("abs_share")),
                "volume": _percent(row.get("volume_share")),
                "enrichment": _cell(row.get("enrichment")),
            }
        )
    return shown


def uncertaintyTable(summaries: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The run's uncertainty summaries as ``{"headers": [{"key", "title"}], "rows": [{"method",
    "cells"}]}``; a row's "method" is the kind."""
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


def _metricTitle(key: str, info: dict[str, Any] | None) -> str:
    if not info:
        return key
    return f"{info.get('title') or key} {_ARROWS.get(info.get('direction'), '')}".strip()


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return format_value(float(value))
