"""A self-contained HTML report of a run folder: one file, figures embedded, nothing fetched.

It shows the run (model card, target, device, versions, timings and peak memory), the methods'
metrics ranked best first with the direction and unit of each, and every figure of the folder as
an inline base64 PNG, so the file can be mailed or archived on its own. Values are written for
people (``spacing 0.6 x 0.6 x 0.8``, not JSON), and a file that run.json lists but the folder
lacks (a map deleted since) is flagged at the top rather than silently left out.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write
from ..io.paths import regular_file_inside
from ..metrics.results import format_value
from ..targets.spec import score_phrase
from .destination import check_run_folder_update
from .evaluation import Evaluation, read_record

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { background: #d8f0d8; font-weight: bold; } td.worst { background: #f6dada; }
.note { color: #666; font-size: 0.85em; } img { max-width: 100%; border: 1px solid #ddd; }
.missing { background: #fde2e2; border: 1px solid #d33; padding: 0.5em 1em; }
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


def readable(value: Any) -> str:
    """A record value for people: numbers to 4 significant digits, lists joined, mappings as
    ``key=value`` pairs (nested ones in parentheses)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "none"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_nested(v)}" for k, v in value.items() if v not in (None, [], {}))
    if isinstance(value, (list, tuple)):
        return ", ".join(readable(v) for v in value)
    return str(value)


def _nested(value: Any) -> str:
    if isinstance(value, dict):
        return f"({readable(value)})"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_nested(v) for v in value) + "]"
    return readable(value)


def model_source_line(source: dict[str, Any] | None) -> str:
    """Where the model came from, in one line: "built-in demo model: MONAI UNet(spatial_dims=3,
    ...), weights /path/demo_unet.pt"; "TorchScript file model.ts"."""
    if not source:
        return "not recorded"
    source = dict(source)
    kind = source.pop("kind", None)
    network, kwargs = source.pop("network", None), source.pop("kwargs", None)
    weights, path = source.pop("checkpoint", None), source.pop("path", None)
    kinds = {"demo": "built-in demo model:", "monai": "", "torchscript": "TorchScript file"}
    kinds["bundle"] = "MONAI bundle"
    parts = [
        kinds.get(kind, f"{kind} model:" if kind else ""),
        f"MONAI {network}({readable(kwargs or {})})" if network else "",
        str(path) if path else "",
    ]
    line = " ".join(part for part in parts if part)
    extras = [f"weights {weights}" if weights else "", readable(source)]
    return ", ".join([line, *(e for e in extras if e)])


def _size(values: list[Any] | None, unit: str = "") -> str | None:
    """``64 x 64 x 64`` or ``0.6 x 0.6 x 0.8 mm`` (float32 spacings rounded back)."""
    if not values:
        return None
    return " x ".join(readable(float(v)) if isinstance(v, float) else str(v) for v in values) + unit


def missing_files(folder: Path, record: dict[str, Any]) -> list[str]:
    """Files run.json lists (maps, channel maps, segmentation, figures) that the folder lacks:
    a name that leads out of the folder (``../..``, an absolute path, a link out) or to
    anything but a regular file counts as missing."""
    listed = [m.get("file") for m in record.get("methods", [])]
    listed += [name for m in record.get("methods", []) for name in m.get("channel_files", [])]
    listed += [(record.get("segmentation") or {}).get("file"), *record.get("figures", [])]
    return [str(name) for name in listed if name and regular_file_inside(folder, str(name)) is None]


def _key_value_table(items: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(readable(v))}</td></tr>"
        for k, v in items.items()
        if v is not None
    )
    return f"<table>{rows}</table>"


def _methods_table(record: dict[str, Any], missing: list[str]) -> str:
    head = "<tr><th>method</th><th>name</th><th>status</th><th>seconds</th><th>peak memory (MB)</th><th>parameters</th><th>notes</th></tr>"
    rows = []
    for m in record.get("methods", []):
        notes = "; ".join(m.get("notes", []) + ([m["message"]] if m.get("message") else []))
        status = m["status"]
        if m.get("file") in missing:
            status = f"{status}, map file {m['file']} missing"
        memory = m.get("peak_memory_mb")
        kind = f" ({m['memory_kind']})" if m.get("memory_kind") else ""
        rows.append(
            f"<tr><td>{_e(m['label'])}</td><td>{_e(m.get('title', m['name']))}</td>"
            f"<td>{_e(status)}</td><td class='num'>{_e(format_value(m.get('seconds')))}</td>"
            f"<td class='num'>{_e(format_value(memory))}{_e(kind)}</td>"
            f"<td>{_e(readable(m.get('params', {})) or 'none')}</td><td>{_e(notes)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _metrics_table(evaluation: Evaluation) -> str:
    """Metrics as rows, methods as columns in rank order (best first): fits many metrics."""
    ranks = evaluation.ranks()
    rows = evaluation.rows()
    arrows = {"higher": "&uarr; higher is better", "lower": "&darr; lower is better"}
    head = "<tr><th>metric</th>" + "".join(
        f"<th>{i}. {_e(evaluation.title(r['method']))}</th>" for i, r in enumerate(rows, 1)
    )
    lines = [head + "</tr>"]
    caveats: list[str] = []
    for key, title in (
        ("mean_rank", "mean rank"),
        ("seconds", "seconds"),
        ("peak_memory_mb", "peak memory (MB)"),
    ):
        row_cells = "".join(f"<td class='num'>{_e(format_value(r[key]))}</td>" for r in rows)
        lines.append(f"<tr><th>{title}</th>{row_cells}</tr>")
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
        unit, caveat = evaluation.unit_and_caveat(name)
        mark = ""
        if caveat:
            caveats.append(f"<li>{_e(info.get('title', name))}: {_e(caveat)}.</li>")
            mark = f" [{len(caveats)}]"
        label = (
            f"<th title='{_e(info.get('summary', ''))}'>{_e(info.get('title', name))}{mark}<br>"
            f"<span class='note'>{arrows[info['direction']]}; {_e(unit)}</span></th>"
        )
        lines.append(f"<tr>{label}{''.join(cells)}</tr>")
    checks = []
    for name in ("model_randomisation", "random_target"):
        for label, detail in evaluation.details.get(name, {}).items():
            verdict = "passed" if detail.get("passed") else "FAILED"
            checks.append(f"<li>{_e(name)} / {_e(label)}: {verdict}</li>")
    notes = []
    for name, labels, text in evaluation.grouped_notes():
        every = set(labels) >= set(evaluation.scores)
        who = "every method" if every else ", ".join(map(evaluation.title, labels))
        notes.append(f"<li>{_e(name)} ({_e(who)}): {_e(text)}</li>")
    seconds = ", ".join(f"{_e(n)} {s:.2f} s" for n, s in evaluation.seconds.items())
    parts = []
    if evaluation.score:
        parts.append(f"<p>Score: {_e(evaluation.score)}.</p>")
    parts.append(f"<div class='wide'><table>{''.join(lines)}</table></div>")
    if caveats:
        parts.append(f"<ol class='note'>{''.join(caveats)}</ol>")
    if checks:
        parts.append(f"<h3>Sanity checks</h3><ul>{''.join(checks)}</ul>")
    if notes:
        parts.append(f"<h3>Notes</h3><ul class='note'>{''.join(notes)}</ul>")
    parts.append(f"<p class='note'>Evaluation time per metric (all methods): {seconds}</p>")
    return "".join(parts)


def _figures(folder: Path, record: dict[str, Any]) -> str:
    """Each figure run.json lists, embedded: only regular files inside the run folder (the
    record is data; a name such as ``../../etc/passwd`` must not put another file in the report)."""
    parts = []
    for name in record.get("figures", []):
        path = regular_file_inside(folder, str(name))
        if path is None:
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
    geometry = record.get("geometry") or {}
    run_info = {
        "status": record.get("status"),
        "device": record.get("device"),
        "seed": record.get("seed"),
        "inputs": ", ".join(record.get("inputs", [])),
        "model source": model_source_line((record.get("model") or {}).get("source")),
        "model sha256": (record.get("model") or {}).get("sha256"),
        "image size (voxels)": _size(geometry.get("size")),
        "spacing": _size(geometry.get("spacing"), " mm"),
    }
    missing = missing_files(folder, record)
    sections = [
        f"<h1>{_e(record.get('title') or 'TorchEsegeta run')}</h1>",
        f"<p class='note'>Run folder: {_e(folder)}</p>",
    ]
    if missing:
        items = "".join(f"<li><code>{_e(name)}</code></li>" for name in missing)
        sections.append(
            "<div class='missing'><strong>Missing from the run folder</strong> (listed in "
            f"run.json but not on disk: deleted or moved since the run):<ul>{items}</ul></div>"
        )
    sections += [
        "<h2>Run</h2>",
        _key_value_table(run_info),
        "<h2>Target</h2>",
        _key_value_table(
            {"score": score_phrase(record.get("target", {})), **record.get("target", {})}
        ),
        "<h2>Model card</h2>",
        _key_value_table(card),
        "<h2>Methods</h2>",
        _methods_table(record, missing),
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
    check_run_folder_update(folder, "the report")
    path = folder / "report.html"
    atomic_write(path, render_report(folder, record))
    return path
