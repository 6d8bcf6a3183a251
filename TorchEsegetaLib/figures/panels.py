"""Drawing the overview figures with matplotlib: panels, outlines, orientation letters, colour
bars, and the page layout (see :mod:`TorchEsegetaLib.figures.overview` for what the figures show).

Only matplotlib's object API (``Figure`` + Agg canvas) is used, imported lazily, so figures can
be drawn from worker threads and never open a window.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io.volume import AnatomicalAxis
from . import display

if TYPE_CHECKING:
    from matplotlib.typing import LineStyleType

#: Array axis each column's view removes, in column order.
VIEW_AXES = (2, 1, 0)
DPI = 100
_LETTER_COLOUR = "#ffe066"
_INTERPOLATION = "nearest"

# Layout in inches.
_PANEL_HEIGHT = 2.0
_LEFT, _RIGHT, _BOTTOM = 0.5, 1.05, 0.1
_TOP, _TITLE_HEIGHT, _LEGEND_HEIGHT = 0.3, 0.3, 0.45
_PANEL_GAP, _ROW_GAP = 0.08, 0.16
_COLORBAR_GAP, _COLORBAR_WIDTH = 0.1, 0.12


@dataclass
class Overlay:
    """How one map is coloured: window, whether it is symmetric about zero, and its palette
    ("attribution", or "uncertainty": :data:`~.display.UNCERTAINTY_COLOURS`)."""

    vmin: float
    vmax: float
    signed: bool
    palette: str = "attribution"

    @property
    def cmap(self):
        from matplotlib.colors import LinearSegmentedColormap

        if self.palette == "uncertainty":
            return LinearSegmentedColormap.from_list("uncertainty", display.UNCERTAINTY_COLOURS)
        if self.signed:
            return LinearSegmentedColormap.from_list("diverging", display.DIVERGING_COLOURS)
        return LinearSegmentedColormap.from_list("sequential", display.SEQUENTIAL_COLOURS)

    def rgba(self, values: np.ndarray) -> np.ndarray:
        """Colours whose opacity rises with the value from the transparency threshold up."""
        if self.signed:
            scaled = 0.5 + 0.5 * np.clip(values / self.vmax, -1.0, 1.0)
            strength = np.clip(np.abs(values) / self.vmax, 0.0, 1.0)
        else:
            scaled = np.clip((values - self.vmin) / (self.vmax - self.vmin), 0.0, 1.0)
            strength = scaled
        rgba = self.cmap(scaled)
        threshold = display.TRANSPARENT_BELOW
        rgba[..., 3] = display.FIGURE_OPACITY * np.clip(
            (strength - threshold) / (1 - threshold), 0, 1
        )
        return rgba


@dataclass
class Row:
    label: str
    backgrounds: list[np.ndarray]
    background_range: tuple[float, float]
    quantity: str = "image intensity"
    overlays: list[np.ndarray] | None = None
    overlay: Overlay | None = None


@dataclass
class Frame:
    """What every figure of a run shares: grid, orientation, legend and note."""

    spacing: tuple[float, float, float]
    shape: tuple[int, ...]
    axes: list[AnatomicalAxis]
    legend: list[tuple[str, LineStyleType, str]]
    note: str
    title: str


def render(
    rows: list[Row],
    column_titles: Sequence[str],
    frame: Frame,
    outlines: list[tuple[list[np.ndarray], str, str]],
) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    spacing, shape, title = frame.spacing, frame.shape, frame.title
    # Every panel gets the same height; its width keeps the physical aspect ratio (clamped so
    # an extreme slab stays readable).
    aspects = [_display_aspect(axis, spacing) for axis in VIEW_AXES]
    widths = [
        _PANEL_HEIGHT * float(np.clip(_physical_width_over_height(axis, spacing, shape), 0.25, 4.0))
        for axis in VIEW_AXES
    ]
    header = _TITLE_HEIGHT if title else 0.0
    legend_height = _LEGEND_HEIGHT if frame.legend or frame.note else 0.0
    top = _TOP + header + legend_height
    fig_w = _LEFT + sum(widths) + _PANEL_GAP * 2 + _COLORBAR_GAP + _COLORBAR_WIDTH + _RIGHT
    fig_h = top + len(rows) * _PANEL_HEIGHT + (len(rows) - 1) * _ROW_GAP + _BOTTOM

    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI)
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, y=1.0 - 0.08 / fig_h, va="top", fontsize=11)
    if frame.legend:
        handles = [Line2D([], [], color=c, linestyle=s, linewidth=1.5) for c, s, _ in frame.legend]
        fig.legend(
            handles,
            [text for _, _, text in frame.legend],
            loc="upper left",
            bbox_to_anchor=(_LEFT / fig_w, 1.0 - (0.05 + header) / fig_h),
            ncol=len(handles),
            fontsize=8,
            frameon=False,
            handlelength=2.0,
            borderaxespad=0.0,
        )
    if frame.note:
        width_chars = int((fig_w - _LEFT) * 14)
        fig.text(
            _LEFT / fig_w,
            1.0 - (0.27 + header) / fig_h,
            textwrap.shorten(frame.note, width_chars, placeholder="...")
            if len(frame.note) > 2 * width_chars
            else textwrap.fill(frame.note, width_chars),
            fontsize=7,
            color="#444444",
            va="top",
        )

    def rect(x: float, y_from_top: float, w: float, h: float) -> tuple[float, float, float, float]:
        return (x / fig_w, 1.0 - (y_from_top + h) / fig_h, w / fig_w, h / fig_h)

    for r, row in enumerate(rows):
        y = top + r * (_PANEL_HEIGHT + _ROW_GAP)
        x = _LEFT
        for c, axis in enumerate(VIEW_AXES):
            ax = fig.add_axes(rect(x, y, widths[c], _PANEL_HEIGHT))
            x += widths[c] + _PANEL_GAP
            shown = _display(row.backgrounds[c], axis)
            ax.imshow(
                shown,
                cmap="gray",
                vmin=row.background_range[0],
                vmax=row.background_range[1],
                origin="lower",
                aspect=aspects[c],
                interpolation=_INTERPOLATION,
            )
            if row.overlay is not None and row.overlays is not None:
                rgba = row.overlay.rgba(_display(row.overlays[c], axis))
                ax.imshow(rgba, origin="lower", aspect=aspects[c], interpolation=_INTERPOLATION)
            for planes, colour, style in outlines:
                # Over a map the outline is fainter: the map's own colours matter more there.
                faint = row.overlay is not None
                _draw_outline(ax, _display(planes[c], axis), colour, style, faint)
            ax.set_xlim(-0.5, shown.shape[1] - 0.5)
            ax.set_ylim(-0.5, shown.shape[0] - 0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_titles[c], fontsize=9, pad=3)
                _draw_letters(ax, _edge_letters(axis, frame.axes))
            if c == 0:
                ax.set_ylabel(textwrap.fill(row.label, 22), fontsize=9, labelpad=4)

        cax = fig.add_axes(rect(x - _PANEL_GAP + _COLORBAR_GAP, y, _COLORBAR_WIDTH, _PANEL_HEIGHT))
        if row.overlay is not None:
            low, high = row.overlay.vmin, row.overlay.vmax
            mappable = ScalarMappable(norm=Normalize(low, high), cmap=row.overlay.cmap)
        elif r == 0:
            low, high = row.background_range
            mappable = ScalarMappable(norm=Normalize(low, high), cmap="gray")
        else:
            cax.set_axis_off()
            continue
        colorbar = fig.colorbar(mappable, cax=cax)
        _explicit_ticks(colorbar, low, high)
        colorbar.set_label(textwrap.fill(row.quantity, 32), fontsize=7, labelpad=2)
    return fig


def _explicit_ticks(colorbar, vmin: float, vmax: float) -> None:
    """Tick labels that carry their own magnitude ("3e-07"), strictly inside the bar.

    matplotlib's default puts a shared "1e-7" offset above the bar, where it collides with the
    row above; ticks at the very ends would touch the neighbouring rows' labels.
    """
    from matplotlib.ticker import FixedFormatter, FixedLocator, MaxNLocator

    margin = 0.04 * (vmax - vmin)
    ticks = [
        t for t in MaxNLocator(5).tick_values(vmin, vmax) if vmin + margin <= t <= vmax - margin
    ]
    colorbar.ax.yaxis.set_major_locator(FixedLocator(ticks))
    colorbar.ax.yaxis.set_major_formatter(FixedFormatter([_tick_text(t, ticks) for t in ticks]))
    colorbar.ax.yaxis.set_minor_locator(FixedLocator([]))
    colorbar.ax.tick_params(labelsize=7)


def _tick_text(value: float, ticks: list[float]) -> str:
    if value == 0:
        return "0"
    largest = max(abs(t) for t in ticks)
    if 1e-2 <= largest < 1e4:
        step = min(abs(b - a) for a, b in zip(ticks, ticks[1:])) if len(ticks) > 1 else largest
        decimals = max(0, -int(np.floor(np.log10(step)))) if step > 0 else 0
        return f"{value:.{decimals}f}"
    return f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e")


def _edge_letters(axis: int, axes: list[AnatomicalAxis]) -> dict[str, str]:
    """Patient direction at each edge of the view without ``axis`` (see :func:`_display`)."""
    column_axis, row_axis = _remaining_axes(axis)
    letters = {"left": axes[column_axis].start, "right": axes[column_axis].end}
    if axis == 2:  # rows run downward: index 0 at the top
        letters.update(top=axes[row_axis].start, bottom=axes[row_axis].end)
    else:
        letters.update(top=axes[row_axis].end, bottom=axes[row_axis].start)
    return letters


def _draw_letters(ax, letters: dict[str, str]) -> None:
    from matplotlib import patheffects

    places = {
        "left": (0.02, 0.5, "left", "center"),
        "right": (0.98, 0.5, "right", "center"),
        "top": (0.5, 0.98, "center", "top"),
        "bottom": (0.5, 0.02, "center", "bottom"),
    }
    for edge, letter in letters.items():
        x, y, ha, va = places[edge]
        ax.text(
            x,
            y,
            letter,
            transform=ax.transAxes,
            ha=ha,
            va=va,
            fontsize=8,
            fontweight="bold",
            color=_LETTER_COLOUR,
            path_effects=[patheffects.withStroke(linewidth=2, foreground="black")],
            gid=f"orientation-{edge}",
        )


def _draw_outline(ax, mask: np.ndarray, colour: str, style: str, faint: bool) -> None:
    # contour() warns when the level is not crossed, so only draw where there is an edge.
    if mask.any() and not mask.all():
        ax.contour(
            mask.astype(np.float32),
            levels=[0.5],
            colors=colour,
            linewidths=0.6 if faint else 0.8,
            linestyles=style,
            alpha=0.6 if faint else 1.0,
        )


def _display(plane: np.ndarray, axis: int) -> np.ndarray:
    """Plane (the volume without ``axis``) as rows x columns, row 0 at the bottom (origin='lower').

    Columns follow the first remaining axis and rows the second (see the module docstring);
    the plane without k is flipped so that j = 0 is at the top.
    """
    shown = plane.T
    return shown[::-1] if axis == 2 else shown


def _remaining_axes(axis: int) -> tuple[int, int]:
    column_axis, row_axis = (a for a in range(3) if a != axis)
    return column_axis, row_axis


def _display_aspect(axis: int, spacing: tuple[float, float, float]) -> float:
    column_axis, row_axis = _remaining_axes(axis)
    return spacing[row_axis] / spacing[column_axis]


def _physical_width_over_height(
    axis: int, spacing: tuple[float, float, float], shape: tuple[int, ...]
) -> float:
    column_axis, row_axis = _remaining_axes(axis)
    return (shape[column_axis] * spacing[column_axis]) / (shape[row_axis] * spacing[row_axis])
