"""Overview figures of a run: orthogonal MIPs and slices through the target, one row per method.

Panels show the array's index axes, the same way in every panel: the plane without k has i to
the right and j downward, the plane without j has i to the right and k upward, the plane
without i has j to the right and k upward. For an image in LPS index order (identity
direction) these are the radiological axial, coronal and sagittal views (patient's right on the
viewer's left, anterior at the top of the axial view). Any other direction changes only the
anatomical reading, so every panel is labelled from the image's direction matrix: the plane
names and the letters at its edges (R/L, A/P, S/I) come from
:meth:`~TorchEsegetaLib.io.volume.Geometry.anatomical_axes`, nearest patient axis first for an
oblique image (the figure then says how oblique).

Maps are coloured as the Slicer module colours them (:mod:`TorchEsegetaLib.figures.display`); the
drawing itself is :mod:`TorchEsegetaLib.figures.panels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..errors import UserInputError
from ..io.volume import AnatomicalAxis, Geometry
from . import display
from .display import robust_range
from .panels import DPI, VIEW_AXES, Frame, Overlay, Row, render

if TYPE_CHECKING:
    from matplotlib.typing import LineStyleType

__all__ = ["MapInfo", "overview_figures", "robust_range", "write_overview_figures"]

_SEGMENTATION_COLOUR = "#00e5ff"
_REGION_COLOUR = "#ffd21f"
#: Up to this angle between index and patient axes, an image is not called oblique.
_OBLIQUE_DEG = 1.0


@dataclass(frozen=True)
class MapInfo:
    """How one map is named and coloured.

    Attributes:
        title: the row's name (the method's title, e.g. "Integrated Gradients").
        quantity: what a value means, for the colour bar ("d score / d intensity").
        signed: diverging colours symmetric about 0; None: signed when the map has negative values.
        palette: "attribution", or "uncertainty" (its own colours, windowed from zero).
    """

    title: str
    quantity: str = "attribution"
    signed: bool | None = None
    palette: str = "attribution"


def write_overview_figures(
    image: np.ndarray,
    maps: dict[str, np.ndarray],
    geometry: Geometry | Sequence[float],
    centre: tuple[int, int, int],
    out_dir: Path,
    **options: Any,
) -> list[Path]:
    """Write ``figures/mip.png`` and ``figures/slices.png`` under ``out_dir``.

    Takes the arguments of :func:`overview_figures`; returns the paths of the two PNG files.
    """
    figures = overview_figures(image, maps, geometry, centre, **options)
    figures_dir = Path(out_dir) / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        fig.savefig(figures_dir / name, dpi=DPI)
        paths.append(figures_dir / name)
    return paths


def overview_figures(
    image: np.ndarray,
    maps: dict[str, np.ndarray],
    geometry: Geometry | Sequence[float],
    centre: tuple[int, int, int],
    info: dict[str, MapInfo] | None = None,
    segmentation: np.ndarray | None = None,
    region: np.ndarray | None = None,
    title: str = "",
    score: str = "",
) -> dict[str, Any]:
    """The run's two overview figures, ``{"mip.png": Figure, "slices.png": Figure}``.

    Args:
        image: (I, J, K) intensities in voxel order (i, j, k), shown in grey.
        maps: method label -> (I, J, K) attribution map, one figure row each, in dict order.
        geometry: the image's grid (spacing for the aspect ratio, direction for the
            orientation letters), or just a spacing in mm (letters for an LPS-ordered image).
        centre: voxel (i, j, k) through which the slices are cut.
        info: per label, the row's title, the map's quantity and signedness (labels left out
            are named by their label and signed when the map has negative values).
        segmentation: optional (I, J, K) labelmap whose foreground is outlined.
        region: optional (I, J, K) target region, outlined too where it differs from the
            segmentation's foreground.
        title: figure title.
        score: what the target score is ("mean vessel logit over ..."), for the figure's note.
    """
    image = _as_volume(image, "image")
    volumes = {name: _as_volume(m, f"map {name!r}", image.shape) for name, m in maps.items()}
    outline = None if segmentation is None else _as_mask(segmentation, "segmentation", image.shape)
    target = None if region is None else _as_mask(region, "target region", image.shape)
    if target is not None and (
        not target.any() or (outline is not None and (target == outline).all())
    ):
        target = None
    geometry = _checked_geometry(geometry, image.shape)
    centre = _checked_centre(centre, image.shape)
    info = {
        name: _resolved(name, (info or {}).get(name), values) for name, values in volumes.items()
    }
    axes = geometry.anatomical_axes()
    frame = Frame(
        geometry.spacing, image.shape, axes, _legend(outline, target), _note(axes, score), title
    )

    mip_rows = [_image_row([image.max(axis=a) for a in VIEW_AXES])]
    for name, values in volumes.items():
        magnitude = [np.abs(values).max(axis=a) for a in VIEW_AXES]
        all_magnitudes = np.concatenate([m.ravel() for m in magnitude])
        quantity = info[name].quantity
        quantity = f"max |{quantity}|" if info[name].signed else f"max {quantity}"
        mip_rows.append(
            _map_row(
                info[name].title,
                quantity,
                magnitude,
                all_magnitudes,
                False,
                mip_rows[0],
                info[name].palette,
            )
        )
    mip = render(
        mip_rows,
        [f"{axes[a].plane} MIP" for a in VIEW_AXES],
        frame,
        _outlines([outline, target], lambda m, a: m.max(axis=a)),
    )

    slice_images = [np.take(image, centre[a], axis=a) for a in VIEW_AXES]
    slice_rows = [_image_row(slice_images, range_of=image)]
    for name, values in volumes.items():
        cuts = [np.take(values, centre[a], axis=a) for a in VIEW_AXES]
        quantity = f"{info[name].quantity}, signed" if info[name].signed else info[name].quantity
        slice_rows.append(
            _map_row(
                info[name].title,
                quantity,
                cuts,
                values,
                bool(info[name].signed),
                slice_rows[0],
                info[name].palette,
            )
        )
    slices = render(
        slice_rows,
        [f"{axes[a].plane} ({'ijk'[a]} = {centre[a]})" for a in VIEW_AXES],
        frame,
        _outlines([outline, target], lambda m, a: np.take(m, centre[a], axis=a)),
    )
    return {"mip.png": mip, "slices.png": slices}


def _resolved(name: str, given: MapInfo | None, values: np.ndarray) -> MapInfo:
    given = given or MapInfo(name)
    signed = bool(np.any(values < 0)) if given.signed is None else bool(given.signed)
    return MapInfo(given.title or name, given.quantity or "attribution", signed, given.palette)


def _image_row(planes: list[np.ndarray], range_of: np.ndarray | None = None) -> Row:
    source = np.concatenate([p.ravel() for p in planes]) if range_of is None else range_of
    return Row("image", planes, robust_range(source))


def _map_row(
    title: str,
    quantity: str,
    planes: list[np.ndarray],
    range_of: np.ndarray,
    signed: bool,
    image: Row,
    palette: str = "attribution",
) -> Row:
    """A method's row over the image row's planes, windowed on the whole ``range_of``."""
    backgrounds, background_range = image.backgrounds, image.background_range
    nonzero = range_of[range_of != 0]
    if nonzero.size == 0:
        return Row(f"{title}\n(all zero)", backgrounds, background_range, quantity)
    constant = np.ptp(nonzero) == 0 and nonzero.size == range_of.size
    label = f"{title}\n(constant)" if constant else title
    if palette == "uncertainty":
        overlay = Overlay(*display.uncertainty_window(nonzero), False, palette)
    else:
        overlay = Overlay(*display.map_window(nonzero, signed), signed)
    # The image is dimmed under a map so that the map's colours stand out against it.
    low, high = background_range
    dimmed = (low, low + (high - low) / display.FIGURE_IMAGE_BRIGHTNESS)
    return Row(label, backgrounds, dimmed, quantity, planes, overlay)


def _legend(
    outline: np.ndarray | None, target: np.ndarray | None
) -> list[tuple[str, LineStyleType, str]]:
    """(colour, line style, text) of each outline drawn."""
    entries: list[tuple[str, LineStyleType, str]] = []
    if outline is not None and outline.any():
        entries.append((_SEGMENTATION_COLOUR, "-", "predicted segmentation"))
    if target is not None:
        entries.append((_REGION_COLOUR, "--", "target region (explained)"))
    return entries


def _note(axes: list[AnatomicalAxis], score: str) -> str:
    parts = []
    if score:
        parts.append(f"score: {score}")
    worst = max(axis.obliquity_deg for axis in axes)
    if worst > _OBLIQUE_DEG:
        parts.append(
            f"oblique image (up to {worst:.0f} deg): letters name the nearest patient axis"
        )
    return "; ".join(parts)


def _outlines(masks, view) -> list[tuple[list[np.ndarray], str, str]]:
    """Per drawn mask, its planes in column order with the legend's colour and line style."""
    styles = ((_SEGMENTATION_COLOUR, "-"), (_REGION_COLOUR, "--"))
    return [
        ([view(mask, a) for a in VIEW_AXES], colour, style)
        for mask, (colour, style) in zip(masks, styles)
        if mask is not None and mask.any()
    ]


def _as_volume(values: np.ndarray, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A float copy with non-finite values set to zero; the caller's array is never touched."""
    array = np.asarray(values)
    if array.ndim != 3:
        raise UserInputError(f"{what} must be a 3D (I, J, K) array; got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise UserInputError(f"{what} has shape {array.shape} but the image has shape {shape}")
    return np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def _as_mask(values: np.ndarray, what: str, shape: tuple[int, ...]) -> np.ndarray:
    return _as_volume(values, what, shape) > 0


def _checked_geometry(geometry: Geometry | Sequence[float], shape: tuple[int, ...]) -> Geometry:
    if isinstance(geometry, Geometry):
        if geometry.size != tuple(shape):
            raise UserInputError(
                f"the geometry's size {geometry.size} differs from the image's {shape}"
            )
        return geometry
    values = tuple(float(s) for s in geometry)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise UserInputError(f"spacing {tuple(geometry)} must be three positive millimetre values")
    return Geometry(cast("tuple[int, int, int]", tuple(shape)), values)


def _checked_centre(centre: Sequence[int], shape: tuple[int, ...]) -> tuple[int, int, int]:
    values = tuple(int(round(c)) for c in centre)
    if len(values) != 3 or not all(0 <= c < n for c, n in zip(values, shape)):
        raise UserInputError(
            f"slice centre {tuple(centre)} lies outside the volume of shape {shape}; "
            "pass a voxel index (i, j, k) inside it"
        )
    return values
