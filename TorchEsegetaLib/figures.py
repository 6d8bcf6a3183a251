"""Overview figures of a run: orthogonal MIPs and slices through the target, one row per method.

Display orientation, the same in every panel. Arrays are indexed (i, j, k); for an image whose
index axes follow LPS (identity direction: i to the patient's left, j posterior, k superior)
the panels read as radiological views:

* axial (plane i-j): i to the right, j downward: patient's right on the viewer's left,
  anterior at the top, seen from the feet.
* coronal (plane i-k): i to the right, k upward: superior at the top.
* sagittal (plane j-k): j to the right, k upward: anterior on the left.

For other directions the panels still show the array axes this way; only the anatomical
reading changes. Matplotlib is imported lazily and only through its object API (``Figure`` +
Agg canvas), so figures can be drawn from worker threads and never open a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserInputError

#: (name, array axis the view removes), in column order.
_VIEWS = (("axial", 2), ("coronal", 1), ("sagittal", 0))
_SEQUENTIAL_CMAP = "inferno"
_SIGNED_CMAP = "RdBu_r"
_OUTLINE_COLOUR = "#00e5ff"
_MAX_ALPHA = 0.85
_DPI = 100
_INTERPOLATION = "nearest"
# Percentiles of more values than this are taken on an even subsample: same figure, bounded time.
_PERCENTILE_SAMPLE = 2_000_000

# Layout in inches.
_PANEL_HEIGHT = 2.0
_LEFT, _RIGHT, _BOTTOM = 0.45, 0.65, 0.1
_TOP, _TITLE_HEIGHT = 0.3, 0.3
_PANEL_GAP, _ROW_GAP = 0.08, 0.1
_COLORBAR_GAP, _COLORBAR_WIDTH = 0.1, 0.12


def robust_range(values: np.ndarray, low: float = 1.0, high: float = 99.5) -> tuple[float, float]:
    """Display range of ``values`` between two percentiles, ignoring NaN and infinities.

    Always returns ``vmin < vmax``: a constant (or empty) input gets a small interval around
    its value, so colour normalisation never divides by zero.
    """
    if not 0.0 <= low < high <= 100.0:
        raise UserInputError(f"percentiles low={low}, high={high} need 0 <= low < high <= 100")
    values = np.asarray(values).ravel()
    values = values[np.isfinite(values)]
    if values.size > _PERCENTILE_SAMPLE:
        values = values[:: -(-values.size // _PERCENTILE_SAMPLE)]
    if values.size == 0:
        return 0.0, 1.0
    vmin, vmax = (float(v) for v in np.percentile(values, [low, high]))
    if vmax > vmin:
        return vmin, vmax
    half_width = 0.5 * abs(vmin) if vmin != 0 else 0.5
    return vmin - half_width, vmin + half_width


def write_overview_figures(
    image: np.ndarray,
    maps: dict[str, np.ndarray],
    spacing: tuple[float, float, float],
    centre: tuple[int, int, int],
    out_dir: Path,
    signed: dict[str, bool] | None = None,
    segmentation: np.ndarray | None = None,
    title: str = "",
) -> list[Path]:
    """Write ``figures/mip.png`` and ``figures/slices.png`` under ``out_dir``.

    Args:
        image: (I, J, K) intensities in voxel order (i, j, k), shown in grey.
        maps: method name -> (I, J, K) attribution map, one figure row each, in dict order.
        spacing: voxel size in mm along (i, j, k); panels keep the physical aspect ratio.
        centre: voxel (i, j, k) through which the slices are cut.
        out_dir: the run folder; ``figures/`` is created inside it.
        signed: per method, True for a signed map (diverging colours symmetric about 0).
            Methods left out are treated as signed when their map has negative values.
        segmentation: optional (I, J, K) labelmap whose foreground is outlined.
        title: figure title.

    Returns:
        The paths of the two PNG files.
    """
    image = _as_volume(image, "image")
    volumes = {name: _as_volume(m, f"map {name!r}", image.shape) for name, m in maps.items()}
    outline = (
        None if segmentation is None else _as_volume(segmentation, "segmentation", image.shape) > 0
    )
    spacing = _checked_spacing(spacing)
    centre = _checked_centre(centre, image.shape)
    signed = dict(signed or {})
    is_signed = {
        name: bool(signed[name]) if name in signed else bool(np.any(m < 0))
        for name, m in volumes.items()
    }

    figures_dir = Path(out_dir) / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    mip_path = figures_dir / "mip.png"
    slices_path = figures_dir / "slices.png"

    mip_rows = [_image_row("image", [_project(image, axis) for _, axis in _VIEWS])]
    mip_outlines = None if outline is None else [_project(outline, axis) for _, axis in _VIEWS]
    for name, values in volumes.items():
        magnitude = [_project(np.abs(values), axis) for _, axis in _VIEWS]
        all_magnitudes = np.concatenate([m.ravel() for m in magnitude])
        mip_rows.append(_map_row(name, magnitude, all_magnitudes, False, mip_rows[0]))
    _render(
        mip_rows,
        [f"{view} MIP" for view, _ in _VIEWS],
        spacing,
        image.shape,
        mip_outlines,
        title,
        mip_path,
    )

    slices = [(axis, centre[axis]) for _, axis in _VIEWS]
    slice_images = [_cut(image, axis, index) for axis, index in slices]
    slice_rows = [_image_row("image", slice_images, range_of=image)]
    slice_outlines = None if outline is None else [_cut(outline, a, i) for a, i in slices]
    for name, values in volumes.items():
        cuts = [_cut(values, axis, index) for axis, index in slices]
        slice_rows.append(_map_row(name, cuts, values, is_signed[name], slice_rows[0]))
    _render(
        slice_rows,
        [f"{view} ({'ijk'[axis]} = {index})" for (view, _), (axis, index) in zip(_VIEWS, slices)],
        spacing,
        image.shape,
        slice_outlines,
        title,
        slices_path,
    )
    return [mip_path, slices_path]


@dataclass
class _Overlay:
    """How one map is coloured: colour map, range, and whether it is symmetric about zero."""

    cmap: str
    vmin: float
    vmax: float
    signed: bool

    def rgba(self, values: np.ndarray) -> np.ndarray:
        """Colours with alpha rising with |value|; zero (signed) or below vmin is transparent."""
        from matplotlib import colormaps

        if self.signed:
            strength = np.clip(np.abs(values) / self.vmax, 0.0, 1.0)
            scaled = 0.5 + 0.5 * np.clip(values / self.vmax, -1.0, 1.0)
        else:
            scaled = np.clip((values - self.vmin) / (self.vmax - self.vmin), 0.0, 1.0)
            strength = scaled
        rgba = colormaps[self.cmap](scaled)
        rgba[..., 3] = _MAX_ALPHA * strength
        return rgba


@dataclass
class _Row:
    label: str
    backgrounds: list[np.ndarray]
    background_range: tuple[float, float]
    overlays: list[np.ndarray] | None = None
    overlay: _Overlay | None = None


def _image_row(label: str, planes: list[np.ndarray], range_of: np.ndarray | None = None) -> _Row:
    source = np.concatenate([p.ravel() for p in planes]) if range_of is None else range_of
    return _Row(label, planes, robust_range(source))


def _map_row(
    name: str, planes: list[np.ndarray], range_of: np.ndarray, signed: bool, image: _Row
) -> _Row:
    """A method's row over the image row's planes; colours span the non-zero ``range_of``.

    Attribution maps are often zero almost everywhere, so percentiles over all voxels would
    collapse to zero.
    """
    backgrounds, background_range = image.backgrounds, image.background_range
    nonzero = range_of[range_of != 0]
    if nonzero.size == 0:
        return _Row(f"{name}\n(all zero)", backgrounds, background_range)
    label = name if np.ptp(nonzero) > 0 or nonzero.size < range_of.size else f"{name}\n(constant)"
    if signed:
        vmax = robust_range(np.abs(nonzero), 0.0, 99.0)[1]
        overlay = _Overlay(_SIGNED_CMAP, -vmax, vmax, signed=True)
    else:
        overlay = _Overlay(_SEQUENTIAL_CMAP, *robust_range(nonzero), signed=False)
    return _Row(label, backgrounds, background_range, planes, overlay)


def _render(
    rows: list[_Row],
    column_titles: Sequence[str],
    spacing: tuple[float, float, float],
    shape: tuple[int, ...],
    outlines: list[np.ndarray] | None,
    title: str,
    path: Path,
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    # Every panel gets the same height; its width keeps the physical aspect ratio (clamped so
    # an extreme slab stays readable).
    aspects = [_display_aspect(axis, spacing) for _, axis in _VIEWS]
    widths = [
        _PANEL_HEIGHT * float(np.clip(_physical_width_over_height(axis, spacing, shape), 0.25, 4.0))
        for _, axis in _VIEWS
    ]
    top = _TOP + (_TITLE_HEIGHT if title else 0.0)
    fig_w = _LEFT + sum(widths) + _PANEL_GAP * 2 + _COLORBAR_GAP + _COLORBAR_WIDTH + _RIGHT
    fig_h = top + len(rows) * _PANEL_HEIGHT + (len(rows) - 1) * _ROW_GAP + _BOTTOM

    fig = Figure(figsize=(fig_w, fig_h), dpi=_DPI)
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, y=1.0 - 0.08 / fig_h, va="top", fontsize=11)

    def rect(x: float, y_from_top: float, w: float, h: float) -> list[float]:
        return [x / fig_w, 1.0 - (y_from_top + h) / fig_h, w / fig_w, h / fig_h]

    for r, row in enumerate(rows):
        y = top + r * (_PANEL_HEIGHT + _ROW_GAP)
        x = _LEFT
        for c, (_, axis) in enumerate(_VIEWS):
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
            if row.overlay is not None:
                rgba = row.overlay.rgba(_display(row.overlays[c], axis))
                ax.imshow(rgba, origin="lower", aspect=aspects[c], interpolation=_INTERPOLATION)
            if outlines is not None:
                _draw_outline(ax, _display(outlines[c], axis))
            ax.set_xlim(-0.5, shown.shape[1] - 0.5)
            ax.set_ylim(-0.5, shown.shape[0] - 0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_titles[c], fontsize=9, pad=3)
            if c == 0:
                ax.set_ylabel(row.label, fontsize=9, labelpad=4)

        cax = fig.add_axes(rect(x - _PANEL_GAP + _COLORBAR_GAP, y, _COLORBAR_WIDTH, _PANEL_HEIGHT))
        if row.overlay is not None:
            norm = Normalize(row.overlay.vmin, row.overlay.vmax)
            mappable = ScalarMappable(norm=norm, cmap=row.overlay.cmap)
        elif r == 0:
            mappable = ScalarMappable(norm=Normalize(*row.background_range), cmap="gray")
        else:
            cax.set_axis_off()
            continue
        colorbar = fig.colorbar(mappable, cax=cax)
        colorbar.ax.tick_params(labelsize=7)
        colorbar.ax.yaxis.get_offset_text().set_fontsize(7)

    fig.savefig(path, dpi=_DPI)


def _draw_outline(ax, mask: np.ndarray) -> None:
    # contour() warns when the level is not crossed, so only draw where there is an edge.
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=_OUTLINE_COLOUR, linewidths=0.8)


def _project(volume: np.ndarray, axis: int) -> np.ndarray:
    return volume.max(axis=axis)


def _cut(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(volume, index, axis=axis)


def _display(plane: np.ndarray, axis: int) -> np.ndarray:
    """Plane (the volume without ``axis``) as rows x columns, row 0 at the bottom (origin='lower').

    Columns follow the first remaining axis and rows the second (see the module docstring);
    the axial view is flipped so that j = 0 (anterior) is at the top.
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


def _as_volume(values: np.ndarray, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A float copy with non-finite values set to zero; the caller's array is never touched."""
    array = np.asarray(values)
    if array.ndim != 3:
        raise UserInputError(f"{what} must be a 3D (I, J, K) array; got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise UserInputError(f"{what} has shape {array.shape} but the image has shape {shape}")
    if array.dtype == bool:
        return array.copy()
    return np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def _checked_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise UserInputError(f"spacing {spacing} must be three positive millimetre values")
    return values


def _checked_centre(centre: Sequence[int], shape: tuple[int, ...]) -> tuple[int, int, int]:
    values = tuple(int(round(c)) for c in centre)
    if len(values) != 3 or not all(0 <= c < n for c, n in zip(values, shape)):
        raise UserInputError(
            f"slice centre {tuple(centre)} lies outside the volume of shape {shape}; "
            "pass a voxel index (i, j, k) inside it"
        )
    return values
