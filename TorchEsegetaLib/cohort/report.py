"""``cohort_report.html``: one self-contained file comparing the methods over a cohort.

Counts and the job template, per metric a box plot of every method's values across the cases
with each case as a point (so a handful of cases is seen as such), the statistics table, the
failed cases with their errors, and every case's status with a link to its run folder.
Figures are inline PNG; nothing is fetched.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from ..figures.metric_figures import _colours, _figure, format_value
from ..io.atomic import atomic_write
from ..runs.report import _STYLE


def _e(value: Any) -> str:
    return html.escape(str(value))


def metric_figure(metric: str, better: str, values: dict[str, list[float]]) -> bytes:
    """PNG of one metric: a box per method over the cases, each case a jittered point."""
    import numpy as np

    methods = list(values)
    colours = _colours(methods)
    fig = _figure(max(4.0, 1.1 * len(methods) + 1.5), 3.4)
    ax = fig.add_subplot(1, 1, 1)
    present = [m for m in methods if values[m]]
    if present:
        positions = [methods.index(m) + 1 for m in present]
        ax.boxplot([values[m] for m in present], positions=positions, widths=0.55, showfliers=False)
    jitter = np.random.default_rng(0)  # fixed: the same cohort draws the same figure
    for i, method in enumerate(methods, start=1):
        points = values[method]
        offsets = jitter.uniform(-0.18, 0.18, len(points))
        ax.scatter(i + offsets, points, s=14, color=colours[method], alpha=0.8, zorder=3)
    ax.set_xticks(range(1, len(methods) + 1))
    ax.set_xticklabels(methods, rotation=20, ha="right", fontsize=8)
    arrow = {"higher": "\u2191 higher is better", "lower": "\u2193 lower is better"}.get(better, "")
    ax.set_title(f"{metric}  ({arrow})" if arrow else metric, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _figures(rows: list[dict[str, Any]], stats: list[dict[str, Any]]) -> str:
    metrics = list(dict.fromkeys(s["metric"] for s in stats))
    better = {s["metric"]: s["better"] for s in stats}
    parts = []
    for metric in metrics:
        values: dict[str, list[float]] = {}
        for row in rows:
            if row["metric"] == metric:
                bucket = values.setdefault(row["method"], [])
                if row["value"] is not None:
                    bucket.append(float(row["value"]))
        data = base64.b64encode(metric_figure(metric, better[metric], values)).decode("ascii")
        parts.append(
            f"<figure><img alt='{_e(metric)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(metric)} across the cases, one point per case.</figcaption></figure>"
        )
    return "".join(parts) or "<p class='note'>No case finished: nothing to compare.</p>"


def _stats_table(stats: list[dict[str, Any]]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("method", "metric", "better", "n", "mean", "sd", "median", "min", "max")
    )
    rows = []
    for s in stats:
        numbers = "".join(
            f"<td class='num'>{_e(format_value(s[k]))}</td>"
            for k in ("mean", "sd", "median", "min", "max")
        )
        rows.append(
            f"<tr><td>{_e(s['method'])}</td><td>{_e(s['metric'])}</td><td>{_e(s['better'])}</td>"
            f"<td class='num'>{s['n']}</td>{numbers}</tr>"
        )
    return f"<div class='wide'><table><tr>{head}</tr>{''.join(rows)}</table></div>"


def _cases_table(cases: list[dict[str, Any]]) -> str:
    rows = []
    for c in cases:
        name = _e(c["case"])
        link = f"<a href='{name}/run.json'>{name}</a>" if c["status"] in ("ok", "partial") else name
        seconds = format_value(c.get("seconds")) if c.get("seconds") is not None else ""
        note = "resumed (done before)" if c.get("resumed") else ""
        rows.append(
            f"<tr><td>{link}</td><td>{_e(c['status'])}</td><td class='num'>{_e(seconds)}</td>"
            f"<td>{_e(note)}</td><td>{_e(c.get('error', ''))}</td></tr>"
        )
    head = "<tr><th>case</th><th>status</th><th>seconds</th><th></th><th>error</th></tr>"
    return f"<div class='wide'><table>{head}{''.join(rows)}</table></div>"


def _recommendation(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "<p class='note'>No case was evaluated: nothing to recommend.</p>"
    from ..runs.report_summary import ranking_table
    from ..runs.summary_text import recommendation_sentence

    caveats = "".join(f"<li>{_e(c)}</li>" for c in summary.get("caveats", []))
    return (
        f"<p>{_e(recommendation_sentence(summary))}</p>{ranking_table(summary)}"
        f"<p><strong>Keep in mind:</strong></p><ul class='note'>{caveats}</ul>"
    )


def _structures_table(structures: list[dict[str, Any]]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "method",
            "structure",
            "n",
            "share of the volume",
            "share of |attribution|",
            "sd",
            "enrichment",
            "sd",
        )
    )
    rows = "".join(
        f"<tr><td>{_e(s['method'])}</td><td>{_e(s['structure'])}</td><td class='num'>{s['n']}</td>"
        + "".join(
            f"<td class='num'>{_e(format_value(s[k]))}</td>"
            for k in (
                "volume_share_mean",
                "abs_share_mean",
                "abs_share_sd",
                "enrichment_mean",
                "enrichment_sd",
            )
        )
        + "</tr>"
        for s in structures
    )
    return f"<div class='wide'><table><tr>{head}</tr>{rows}</table></div>"


def render_cohort_report(
    record: dict[str, Any],
    rows: list[dict[str, Any]],
    stats: list[dict[str, Any]],
    recommendation: dict[str, Any] | None = None,
    structures: list[dict[str, Any]] | None = None,
) -> str:
    counts = record["counts"]
    template = record.get("template_job", {})
    about = {
        "cohort": record.get("cohort"),
        "job template": record.get("template"),
        "model": json.dumps(template.get("model")),
        "target": json.dumps(template.get("target")),
        "methods": ", ".join(m["label"] for m in template.get("methods", [])),
        "metrics": ", ".join(m["name"] for m in template.get("metrics", [])) or "none",
        "engine": json.dumps(record.get("engine")),
        "started / finished": f"{record.get('started')} / {record.get('finished')}",
    }
    about_rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in about.items())
    count_text = ", ".join(f"{_e(v)} {_e(k.replace('_', ' '))}" for k, v in counts.items())
    failed = [c for c in record["cases"] if c["status"] == "failed"]
    sections = [
        f"<h1>TorchEsegeta cohort: {counts['cases']} cases</h1>",
        f"<p><b>{count_text}</b></p>",
    ]
    if record.get("interrupted"):
        sections.append(
            "<p><b>Interrupted</b>: run the same command again to finish the missing cases.</p>"
        )
    sections += [
        "<h2>Which map to look at first</h2>",
        _recommendation(recommendation),
    ]
    if structures:
        sections += [
            "<h2>Attribution by structure (mean over the cases)</h2>",
            _structures_table(structures),
        ]
    sections += [
        f"<table>{about_rows}</table>",
        "<h2>Methods across the cases</h2>",
        _figures(rows, stats),
        "<h2>Statistics</h2>",
        "<p class='note'>sd is the sample standard deviation (n - 1); n counts the cases where "
        "the metric has a value.</p>",
        _stats_table(stats),
        f"<h2>Failed cases ({len(failed)})</h2>",
        _cases_table(failed) if failed else "<p class='note'>None.</p>",
        "<h2>Cases</h2>",
        _cases_table(record["cases"]),
    ]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>TorchEsegeta cohort report</title><style>{_STYLE}</style></head><body>\n"
        f"{body}\n</body></html>\n"
    )


def write_cohort_report(
    out: Path,
    record: dict[str, Any],
    rows: list[dict[str, Any]],
    stats: list[dict[str, Any]],
    recommendation: dict[str, Any] | None = None,
    structures: list[dict[str, Any]] | None = None,
) -> Path:
    path = out / "cohort_report.html"
    atomic_write(path, render_cohort_report(record, rows, stats, recommendation, structures))
    return path
