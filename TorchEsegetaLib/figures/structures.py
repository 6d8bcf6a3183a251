"""The structures figure: each map's share of attribution per structure, beside the structure's
share of the volume, for the structures that hold the most attribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .metric_figures import _colours, _figure, _save

#: structures shown (those with the largest share of any map); structures.csv has them all
MAX_STRUCTURES = 12


def top_structures(rows: list[dict[str, Any]], count: int = MAX_STRUCTURES) -> list[str]:
    """The structures with the largest share of |attribution| of any map, largest first."""
    best: dict[str, float] = {}
    for row in rows:
        share = row.get("abs_share") or 0.0
        best[row["structure"]] = max(best.get(row["structure"], 0.0), share)
    return sorted(best, key=lambda name: -best[name])[:count]


def structures_figure(rows: list[dict[str, Any]]) -> Any:
    """Horizontal bars: per structure, one bar per map (share of |attribution|) and a black
    mark at the structure's share of the volume: a bar past its mark is enrichment."""
    import numpy as np

    names = top_structures(rows)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    titles = {row["method"]: row.get("title") or row["method"] for row in rows}
    colours = _colours(methods)
    by_key = {(row["method"], row["structure"]): row for row in rows}
    volume = {row["structure"]: row["volume_share"] for row in rows}
    height = 0.8 / max(len(methods), 1)
    fig = _figure(8.0, 1.2 + 0.18 * len(names) * max(len(methods), 2))
    ax = fig.add_subplot(1, 1, 1)
    positions = np.arange(len(names))[::-1]
    for m, method in enumerate(methods):
        shares = [(by_key.get((method, n)) or {}).get("abs_share") or 0.0 for n in names]
        offsets = positions + 0.4 - height * (m + 0.5)
        ax.barh(offsets, shares, height=height, color=colours[method], label=titles[method])
    for position, name in zip(positions, names):
        ax.plot([volume[name]] * 2, [position - 0.45, position + 0.45], color="black", linewidth=2)
    ax.plot([], [], color="black", linewidth=2, label="share of the volume")
    ax.set_yticks(positions)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("share of the map's |attribution| (bars) and of the volume (black)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("attribution by structure", fontsize=10)
    fig.tight_layout()
    return fig


def write_structures_figure(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(structures_figure(rows), path)
