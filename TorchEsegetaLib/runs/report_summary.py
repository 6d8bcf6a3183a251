"""The report's first screen: the run in plain words (:mod:`.summary_text`), the methods ranked
by the recommendation with their evidence, and the structure table."""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..metrics.recommendation import RECOMMENDED, TIED
from ..metrics.results import format_value
from .structures import read_structures_csv
from .summary_text import describe_run

#: structures listed on the first screen (the figure and the full table come later)
FIRST_SCREEN_STRUCTURES = 8

STYLE = """
.summary p { margin: 0.35em 0; line-height: 1.4; } .summary ul { margin: 0.3em 0; }
tr.chosen td { background: #e3f1e3; font-weight: 600; }
.verdict { font-size: 0.85em; color: #444; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def summary_section(
    folder: Path, record: Mapping[str, Any], summary: Mapping[str, Any] | None
) -> str:
    """The run in plain words, with the caveats."""
    sentences = describe_run(record, summary, read_structures_csv(folder))
    paragraphs = "".join(f"<p>{_e(text)}</p>" for topic, text in sentences if topic != "caveat")
    caveats = "".join(f"<li>{_e(text)}</li>" for topic, text in sentences if topic == "caveat")
    parts = [f"<div class='summary' id='summary'>{paragraphs}"]
    if caveats:
        parts.append(f"<p><strong>Keep in mind:</strong></p><ul class='note'>{caveats}</ul>")
    parts.append("</div>")
    return "".join(parts)


def ranking_table(summary: Mapping[str, Any]) -> str:
    """The methods in the recommendation's order with their evidence and verdict."""
    head = (
        "<tr><th>#</th><th>map</th><th>faithfulness<br><span class='note'>0: chance; "
        "90% of draws</span></th><th>randomisation check</th><th>verdict</th>"
        "<th>mass in target<br><span class='note'>shown, not weighed</span></th></tr>"
    )
    rows = []
    for index, entry in enumerate(summary["ranking"], start=1):
        interval = entry.get("interval")
        spread = (
            f" ({format_value(interval[0])} to {format_value(interval[1])})" if interval else ""
        )
        sanity = entry.get("sanity") or {}
        check = sanity.get("status", "")
        if sanity.get("similarity") is not None:
            check += f" ({format_value(sanity['similarity'])})"
        chosen = entry["verdict"] in (RECOMMENDED, TIED)
        mass = (entry.get("also") or {}).get("mass_in_target")
        rows.append(
            f"<tr{' class=chosen' if chosen else ''}><td class='num'>{index}</td>"
            f"<td>{_e(entry['title'])}</td>"
            f"<td class='num'>{_e(format_value(entry.get('score')))}{_e(spread)}</td>"
            f"<td>{_e(check)}</td><td class='verdict'>{_e(entry['verdict'])}</td>"
            f"<td class='num'>{_e(format_value(mass))}</td></tr>"
        )
    return f"<div class='wide'><table id='ranking'>{head}{''.join(rows)}</table></div>"


def structures_section(
    folder: Path, record: Mapping[str, Any], summary: Mapping[str, Any] | None
) -> str:
    """The structure table of the map to look at first (the largest shares first), or "" when
    the run has no structures.csv."""
    rows = read_structures_csv(folder)
    if not rows:
        return ""
    shown = (summary or {}).get("look_first") or rows[0]["method"]
    own = [r for r in rows if r["method"] == shown] or [
        r for r in rows if r["method"] == rows[0]["method"]
    ]
    own.sort(key=lambda r: -(r.get("abs_share") or 0.0))
    title = own[0]["title"]
    head = (
        "<tr><th>structure</th><th>voxels</th><th>share of the volume</th>"
        "<th>share of |attribution|</th><th>share of positive attribution</th>"
        "<th>enrichment<br><span class='note'>share / volume share</span></th></tr>"
    )
    body = "".join(
        f"<tr><td>{_e(r['structure'])}</td><td class='num'>{r['voxels']:,}</td>"
        f"<td class='num'>{_percent(r['volume_share'])}</td>"
        f"<td class='num'>{_percent(r['abs_share'])}</td>"
        f"<td class='num'>{_percent(r['positive_share'])}</td>"
        f"<td class='num'>{_e(format_value(r['enrichment']))}</td></tr>"
        for r in own[:FIRST_SCREEN_STRUCTURES]
    )
    more = len(own) - FIRST_SCREEN_STRUCTURES
    note = (
        f"<p class='note'>{more} more structures and every map: structures.csv; all maps in "
        "the figure below.</p>"
        if more > 0
        else "<p class='note'>Every map: structures.csv and the figure below.</p>"
    )
    source = Path((record.get("structures") or {}).get("labelmap") or "").name
    return (
        f"<p>Attribution of <strong>{_e(title)}</strong> by structure"
        f"{f' (from {_e(source)})' if source else ''}:</p>"
        f"<div class='wide'><table id='structures'>{head}{body}</table></div>{note}"
    )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
