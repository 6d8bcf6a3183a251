"""Figures of an evaluation: deletion/insertion curves, the randomisation cascade, the ranking.

Drawn with matplotlib's object API (no window, safe in worker threads), each written to a
temporary file and renamed into place.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..metrics.results import format_value

if TYPE_CHECKING:
    from ..metrics.results import Evaluation

_DPI = 100


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _save(fig: Any, path: Path) -> Path:
    from ..io.atomic import atomic_write

    atomic_write(path, _png(fig))
    return path


def _colours(labels: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def write_metric_figures(evaluation: Evaluation, figures_dir: Path) -> list[Path]:
    """Write the figures the evaluation has data for; returns their paths."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    colours = _colours(evaluation.methods)
    paths = []
    if any(evaluation.curves.get(name) for name in ("deletion", "insertion")):
        paths.append(_curves(evaluation, colours, figures_dir / "deletion_insertion.png"))
    if evaluation.curves.get("model_randomisation"):
        paths.append(_randomisation(evaluation, colours, figures_dir / "randomisation.png"))
    if evaluation.metrics and evaluation.methods:
        paths.append(_ranking(evaluation, figures_dir / "ranking.png"))
    return paths


def metric_registry() -> dict[str, Any]:
    from ..metrics import REGISTRY

    return REGISTRY


def curves_png(evaluation: Evaluation) -> bytes | None:
    """The deletion/insertion figure as PNG bytes (None without those curves), for a viewer
    that shows it without writing into the run folder."""
    if not any(evaluation.curves.get(name) for name in ("deletion", "insertion")):
        return None
    return _png(_curves_figure(evaluation, _colours(evaluation.methods)))


def _curves(evaluation: Evaluation, colours: dict[str, Any], path: Path) -> Path:
    return _save(_curves_figure(evaluation, colours), path)


def _curves_figure(evaluation: Evaluation, colours: dict[str, Any]) -> Any:
    names = [n for n in ("deletion", "insertion") if evaluation.curves.get(n)]
    fig = _figure(5.0 * len(names), 4.0)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        for label, (x, y) in evaluation.curves[name].items():
            area = evaluation.scores.get(label, {}).get(name)
            shown = evaluation.title(label)
            text = f"{shown} (AUC {area:.3g})" if area is not None else shown
            ax.plot(x, y, color=colours.get(label), label=text, linewidth=1.5)
        # the chance level every map is measured against (the same for every map of the case)
        random = next(
            (
                d["random_curve"]
                for d in evaluation.details.get(name, {}).values()
                if "random_curve" in d
            ),
            None,
        )
        if random is not None:
            ax.plot(*random, color="black", linestyle="--", linewidth=1.2, label="random order")
        better = evaluation.metrics[name]["direction"]
        ax.set_title(f"{name} ({better} AUC is better)", fontsize=10)
        x_title, y_title = metric_registry()[name].curve_axes
        ax.set_xlabel(x_title)
        ax.set_ylabel(y_title)
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _randomisation(evaluation: Evaluation, colours: dict[str, Any], path: Path) -> Path:
    spearman = evaluation.curves["model_randomisation"]
    details = evaluation.details.get("model_randomisation", {})
    threshold = next((d["threshold"] for d in details.values()), None)
    fig = _figure(10.0, 4.0)
    panels = [("Spearman rank correlation", dict(spearman))]
    panels.append(("SSIM", {k: tuple(d["ssim_curve"]) for k, d in details.items()}))
    for i, (title, curves) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for label, (x, y) in curves.items():
            passed = details.get(label, {}).get("passed")
            verdict = "" if passed is None else (" pass" if passed else " FAIL")
            text = evaluation.title(label) + verdict
            ax.plot(x, y, marker="o", color=colours.get(label), label=text)
        if threshold is not None:
            ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label="threshold")
        ax.set_title(f"model randomisation: {title}", fontsize=10)
        x_title, y_title = metric_registry()["model_randomisation"].curve_axes
        ax.set_xlabel(x_title)
        ax.set_ylabel(y_title)
        ax.set_ylim(min(-0.1, *[min(y) for _, y in curves.values()]), 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _ranking(evaluation: Evaluation, path: Path) -> Path:
    return _save(_ranking_figure(evaluation), path)


def _ranking_figure(evaluation: Evaluation) -> Any:
    """A table: methods in the recommendation's order (most faithful first), one column per
    metric, cells coloured by rank."""
    from matplotlib import colormaps

    rows = evaluation.rows()
    ranks = evaluation.ranks()
    metrics = list(evaluation.metrics)
    arrows = {"higher": "\u2191", "lower": "\u2193"}
    header = ["method", "faith-\nfulness"] + [
        f"{m.replace('_', chr(10))}\n{arrows[evaluation.metrics[m]['direction']]}" for m in metrics
    ]
    cells, colours = [], []
    cmap = colormaps["RdYlGn_r"]
    for row in rows:
        label = row["method"]
        cells.append(
            [evaluation.title(label), format_value(row["faithfulness"])]
            + [format_value(row[m]) for m in metrics]
        )
        shades: list[Any] = ["white", "white"]  # colour names or RGBA tuples
        for m in metrics:
            rank, count = ranks.get(m, {}).get(label), len(ranks.get(m, {}))
            if rank is None:
                shades.append("#eeeeee")
                continue
            shade = 0.5 if count <= 1 else (rank - 1) / (count - 1)
            shades.append(cmap(0.15 + 0.7 * shade, alpha=0.6))
        colours.append(shades)
    width = 1.6 + 0.6 + 0.85 * len(metrics)
    header_height, row_height, title_height = 0.65, 0.26, 0.4
    height = title_height + header_height + row_height * len(rows) + 0.1
    fig = _figure(max(width, 4.0), height)
    ax = fig.add_axes([0.01, 0.1 / height, 0.98, 1 - (title_height + 0.1) / height])
    ax.set_axis_off()
    widths = [1.6 / width, 0.6 / width] + [0.85 / width] * len(metrics)
    table = ax.table(
        cellText=cells, cellColours=colours, colLabels=header, colWidths=widths, bbox=[0, 0, 1, 1]
    )
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    share = header_height / (header_height + row_height * len(rows))
    for (r, _), cell in table.get_celld().items():
        cell.set_height(share if r == 0 else (1 - share) / len(rows))
    fig.suptitle(
        "methods, most faithful first (faithfulness 0: a random order; green: better)",
        fontsize=10,
    )
    return fig
