"""A self-contained HTML report of a run folder: one file, figures embedded, nothing fetched.

It shows the run (model card, target, device, versions, timings and peak memory), the methods'
metrics ranked best first with the direction of each, and every figure of the folder as an
inline base64 PNG, so the file can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .evaluation import Evaluation, read_record
from .metric_figures import format_value
from .run_folder import atomic_write

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { background: #d8f0d8; font-weight: bold; } td.worst { background: #f6dada; }
.note { color: #666; font-size: 0.85em; } img { max-width: 100%; border: 1px solid #ddd; }
figure { margin: 1em 0; } .wide { overflow-x: auto; } figcaption { color: #555; font-size: 0.85em; }
"""

_CAPTIONS = {
    "mip.png": "Maximum intensity projections of |attribution|, one row per method.",
    "slices.png": "Slices through the target, one row per method (segmentation outlined).",
    "deletion_insertion.png": "Target score as 3D blocks are removed (deletion) or inserted (insertion) in the order of each map.",
    "randomisation.png": "Similarity of each map to its original as the model's layers are randomised, output first.",
    "ranking.png": "Methods ranked by their mean rank over the metrics.",
}


def _e(value: Any) -> str:
    return html.escape(str(value))


def _key_value_table(items: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(json.dumps(v) if isinstance(v, (dict, list)) else v)}</td></tr>"
        for k, v in items.items()
        if v is not None
    )
    return f"<table>{rows}</table>"


def _methods_table(record: dict[str, Any]) -> str:
    head = "<tr><th>method</th><th>name</th><th>status</th><th>seconds</th><th>peak memory (MB)</th><th>parameters</th><th>notes</th></tr>"
    rows = []
    for m in record.get("methods", []):
        notes = "; ".join(m.get("notes", []) + ([m["message"]] if m.get("message") else []))
        memory = m.get("peak_memory_mb")
        kind = f" ({m['memory_kind']})" if m.get("memory_kind") else ""
        rows.append(
            f"<tr><td>{_e(m['label'])}</td><td>{_e(m.get('title', m['name']))}</td>"
            f"<td>{_e(m['status'])}</td><td class='num'>{_e(format_value(m.get('seconds')))}</td>"
            f"<td class='num'>{_e(format_value(memory))}{_e(kind)}</td>"
            f"<td>{_e(json.dumps(m.get('params', {})))}</td><td>{_e(notes)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _metrics_table(evaluation: Evaluation) -> str:
    """Metrics as rows, methods as columns in rank order (best first): fits many metrics."""
    ranks = evaluation.ranks()
    rows = evaluation.rows()
    arrows = {"higher": "&uarr; higher is better", "lower": "&darr; lower is better"}
    head = "<tr><th></th>" + "".join(
        f"<th>{i}. {_e(r['method'])}</th>" for i, r in enumerate(rows, 1)
    )
    lines = [head + "</tr>"]
    for key, title in (
        ("mean_rank", "mean rank"),
        ("seconds", "seconds"),
        ("peak_memory_mb", "peak memory (MB)"),
    ):
        cells = "".join(f"<td class='num'>{_e(format_value(r[key]))}</td>" for r in rows)
        lines.append(f"<tr><th>{title}</th>{cells}</tr>")
    for name, info in evaluation.metrics.items():
        per = ranks.get(name, {})
        cells = []
        for r in rows:
            rank, css = per.get(r["method"]), "num"
            if rank is not None and len(per) > 1:
                css += " best" if rank == min(per.values()) else ""
                css += " worst" if rank == max(per.values()) else ""
            note = evaluation.notes.get(r["method"], {}).get(name, "")
            cells.append(f"<td class='{css}' title='{_e(note)}'>{_e(format_value(r[name]))}</td>")
        label = (
            f"<th title='{_e(info.get('summary', ''))}'>{_e(name)}<br>"
            f"<span class='note'>{arrows[info['direction']]}</span></th>"
        )
        lines.append(f"<tr>{label}{''.join(cells)}</tr>")
    checks = []
    for name in ("model_randomisation", "random_target"):
        for label, detail in evaluation.details.get(name, {}).items():
            verdict = "passed" if detail.get("passed") else "FAILED"
            checks.append(f"<li>{_e(name)} / {_e(label)}: {verdict}</li>")
    notes = [
        f"<li>{_e(label)} / {_e(n)}: {_e(text)}</li>"
        for label, per in evaluation.notes.items()
        for n, text in per.items()
    ]
    seconds = ", ".join(f"{_e(n)} {s:.2f} s" for n, s in evaluation.seconds.items())
    parts = [f"<div class='wide'><table>{''.join(lines)}</table></div>"]
    if checks:
        parts.append(f"<h3>Sanity checks</h3><ul>{''.join(checks)}</ul>")
    if notes:
        parts.append(f"<h3>Notes</h3><ul class='note'>{''.join(notes)}</ul>")
    parts.append(f"<p class='note'>Evaluation time per metric (all methods): {seconds}</p>")
    return "".join(parts)


def _figures(folder: Path, record: dict[str, Any]) -> str:
    parts = []
    for name in record.get("figures", []):
        path = folder / name
        if not path.is_file():
            continue
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        caption = _CAPTIONS.get(path.name, path.name)
        parts.append(
            f"<figure><img alt='{_e(path.name)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return "".join(parts) or "<p class='note'>No figures in this run folder.</p>"


def render_report(folder: Path, record: dict[str, Any]) -> str:
    """The report's HTML text for a run folder and its run.json record."""
    card = (record.get("model") or {}).get("card", {})
    run_info = {
        "status": record.get("status"),
        "device": record.get("device"),
        "seed": record.get("seed"),
        "inputs": ", ".join(record.get("inputs", [])),
        "model source": (record.get("model") or {}).get("source"),
        "model sha256": (record.get("model") or {}).get("sha256"),
        "image size": (record.get("geometry") or {}).get("size"),
        "spacing (mm)": (record.get("geometry") or {}).get("spacing"),
    }
    sections = [
        f"<h1>{_e(record.get('title') or 'TorchEsegeta run')}</h1>",
        f"<p class='note'>Run folder: {_e(folder)}</p>",
        "<h2>Run</h2>",
        _key_value_table(run_info),
        "<h2>Target</h2>",
        _key_value_table(record.get("target", {})),
        "<h2>Model card</h2>",
        _key_value_table(card),
        "<h2>Methods</h2>",
        _methods_table(record),
        "<h2>Metrics</h2>",
        _metrics_table(Evaluation.from_json(record["metrics"]))
        if record.get("metrics")
        else "<p class='note'>Not evaluated: run <code>torchesegeta evaluate</code> on this folder.</p>",
        "<h2>Figures</h2>",
        _figures(folder, record),
        "<h2>Timings (s)</h2>",
        _key_value_table(record.get("timings_s", {})),
        "<h2>Versions</h2>",
        _key_value_table(record.get("versions", {})),
    ]
    if record.get("warnings"):
        items = "".join(f"<li>{_e(w)}</li>" for w in record["warnings"])
        sections.append(f"<h2>Warnings</h2><ul>{items}</ul>")
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(record.get('title') or 'TorchEsegeta report')}</title>"
        f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(run_folder: str | Path) -> Path:
    """Write ``report.html`` into the run folder (atomically) and return its path."""
    folder = Path(run_folder).expanduser().absolute()
    record = read_record(folder)
    path = folder / "report.html"
    atomic_write(path, render_report(folder, record))
    return path
