"""The uncertainty figure of a run: slices through the target, one row per uncertainty map, in
the uncertainty maps' own colours, windowed from zero (:func:`~.display.uncertainty_window`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io.volume import Geometry
from .overview import MapInfo, overview_figures
from .panels import DPI

FIGURE = "uncertainty.png"


def write_uncertainty_figure(
    image: np.ndarray,
    maps: dict[str, np.ndarray],
    info: dict[str, tuple[str, str]],
    geometry: Geometry,
    centre: tuple[int, int, int],
    out_dir: Path,
    **options: Any,
) -> Path:
    """Write ``figures/uncertainty.png`` under ``out_dir`` and return its path.

    Args:
        image: (I, J, K) intensities.
        maps: label -> (I, J, K) uncertainty map, one row each, in dict order.
        info: label -> (row title, unit of the values).
        geometry, centre: the grid and the voxel the slices go through.
        options: ``segmentation``, ``region``, ``title`` as :func:`~.overview.overview_figures`.
    """
    rows = {
        label: MapInfo(title, unit, False, "uncertainty") for label, (title, unit) in info.items()
    }
    figures = overview_figures(image, maps, geometry, centre, info=rows, **options)
    figures_dir = Path(out_dir) / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    path = figures_dir / FIGURE
    figures["slices.png"].savefig(path, dpi=DPI)
    return path
