"""The cohort's summary files, gathered from the run folders and the cases' outcomes.

* ``summary.csv``: one row per case x method x metric (``value`` empty when the metric could
  not be computed); the method's run time is the metric ``seconds``.
* ``summary_stats.csv``: per method and metric over the cases: n, mean, sample standard
  deviation (n - 1), median, min, max, and which direction is better.
* ``failures.csv``: the failed cases with their error (they have no run folder).
* ``cohort.json``: what ran where, counts, and every case's status, time and error.

Every file is written to a temporary name and renamed, so none is ever half-written.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write

FORMAT_VERSION = 1
#: The files a cohort writes beside its run folders (so no case may be named like one).
COHORT_FILES = (
    "summary.csv",
    "summary_stats.csv",
    "failures.csv",
    "cohort.json",
    "cohort_report.html",
)
SECONDS = "seconds"
STAT_FIELDS = ("method", "metric", "better", "n", "mean", "sd", "median", "min", "max")


def scores_of(run_folder: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(rows of method, metric, value; metric -> better direction) of one run folder."""
    record = json.loads((run_folder / "run.json").read_text(encoding="utf-8"))
    evaluation = record.get("metrics") or {}
    directions = {
        name: info.get("direction", "") for name, info in evaluation.get("metrics", {}).items()
    }
    directions[SECONDS] = "lower"
    rows = []
    for method in record.get("methods", []):
        label = method["label"]
        rows.append({"method": label, "metric": SECONDS, "value": method.get("seconds")})
        scores = evaluation.get("scores", {}).get(label, {})
        for name in evaluation.get("metrics", {}):
            rows.append({"method": label, "metric": name, "value": scores.get(name)})
    return rows, directions


def statistics(values: list[float]) -> dict[str, float | None]:
    import numpy as np

    if not values:
        return {"mean": None, "sd": None, "median": None, "min": None, "max": None}
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "sd": float(array.std(ddof=1)) if len(array) > 1 else None,
        "median": float(np.median(array)),
        "min": float(np.min(array)),
        "max": float(np.max(array)),
    }


def summarise(
    case_rows: dict[str, list[dict[str, Any]]], directions: dict[str, str]
) -> list[dict[str, Any]]:
    """Per (method, metric) statistics over the cases, in first-seen order."""
    values: dict[tuple[str, str], list[float]] = {}
    for rows in case_rows.values():
        for row in rows:
            bucket = values.setdefault((row["method"], row["metric"]), [])
            if row["value"] is not None and math.isfinite(float(row["value"])):
                bucket.append(float(row["value"]))
    return [
        {
            "method": method,
            "metric": metric,
            "better": directions.get(metric, ""),
            "n": len(found),
            **statistics(found),
        }
        for (method, metric), found in values.items()
    ]


def _csv(fields: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in fields})
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_summary(out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write every summary file and the report for the cohort ``record`` (see cohort.json);
    returns the statistics rows. Cases with a run folder contribute their scores."""
    from .report import write_cohort_report

    case_rows: dict[str, list[dict[str, Any]]] = {}
    directions: dict[str, str] = {}
    for case in record["cases"]:
        if case["status"] in ("ok", "partial"):
            rows, found = scores_of(out / case["case"])
            case_rows[case["case"]] = rows
            directions.update(found)
    long_rows = [{"case": case, **row} for case, rows in case_rows.items() for row in rows]
    stats = summarise(case_rows, directions)
    failures = [c for c in record["cases"] if c["status"] == "failed"]
    atomic_write(out / "summary.csv", _csv(("case", "method", "metric", "value"), long_rows))
    atomic_write(out / "summary_stats.csv", _csv(STAT_FIELDS, stats))
    atomic_write(out / "failures.csv", _csv(("case", "kind", "error"), failures))
    atomic_write(out / "cohort.json", json.dumps(record, indent=2, default=str))
    write_cohort_report(out, record, long_rows, stats)
    return {"stats": stats, "rows": long_rows}
