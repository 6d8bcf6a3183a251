"""How an attribution map is shown over its image: one setting for the run folder's figures and
the 3D Slicer module, so a map looks the same in both.

* Colour window (:func:`map_window`): an unsigned map spans the ``ROBUST_PERCENTILES`` (1st to
  99.5th) of its non-zero values, so a few outlier voxels (a saliency spike at an edge) do not
  wash the rest out; a signed map is symmetric about zero, up to the 99.5th percentile of
  |value|, so white means zero. Zeros are left out because many maps are zero almost everywhere
  (Grad-CAM outside the object, a cropped run outside its box), which would collapse the
  percentiles to zero. Values beyond the window take its end colour.
* Colours: ``SEQUENTIAL_COLOURS`` (matplotlib's perceptually uniform "inferno" from 0.2 up, so
  the weakest visible colour is purple rather than black, which would read as dark image) and
  ``DIVERGING_COLOURS`` ("RdBu_r", white at zero), as RGB samples at equal steps. Uncertainty
  maps have their own, ``UNCERTAINTY_COLOURS`` ("viridis" from 0.15 up), so they are never
  mistaken for attributions, windowed from zero (:func:`uncertainty_window`): an entropy of 0
  means sure, whatever the rest of the map holds.
* Transparency: voxels in the lowest ``TRANSPARENT_BELOW`` (5%) of an unsigned window, or within
  that fraction of the bound around zero for a signed one, are not drawn, so the image shows
  where the map says (almost) nothing. Slicer blends the map layer at one opacity, the panel's
  slider (default ``MAP_OPACITY``); a static figure has no slider, so there the opacity rises
  with the value from 0 at the transparency threshold to ``FIGURE_OPACITY`` at the window's end,
  over the image drawn at ``FIGURE_IMAGE_BRIGHTNESS`` (weak values fade into the anatomy).

Plain numbers and numpy only: the Slicer side imports this without torch or matplotlib.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserInputError

ROBUST_PERCENTILES = (1.0, 99.5)
TRANSPARENT_BELOW = 0.05
MAP_OPACITY = 0.5
FIGURE_OPACITY = 0.9
FIGURE_IMAGE_BRIGHTNESS = 0.55

SEQUENTIAL_COLOURS = (
    (0.2582, 0.0386, 0.4065),
    (0.4163, 0.0902, 0.4329),
    (0.5783, 0.1480, 0.4044),
    (0.7357, 0.2159, 0.3302),
    (0.8650, 0.3168, 0.2261),
    (0.9545, 0.4687, 0.0999),
    (0.9876, 0.6453, 0.0399),
    (0.9644, 0.8438, 0.2734),
    (0.9884, 0.9984, 0.6449),
)
DIVERGING_COLOURS = (
    (0.0196, 0.1882, 0.3804),
    (0.1634, 0.4450, 0.6975),
    (0.4207, 0.6764, 0.8187),
    (0.7615, 0.8685, 0.9246),
    (1.0, 1.0, 1.0),
    (0.9825, 0.8007, 0.7061),
    (0.8946, 0.5038, 0.3998),
    (0.7285, 0.1550, 0.1974),
    (0.4039, 0.0, 0.1216),
)
UNCERTAINTY_COLOURS = (
    (0.2730, 0.2045, 0.5017),
    (0.2336, 0.3138, 0.5439),
    (0.1889, 0.4109, 0.5563),
    (0.1519, 0.5007, 0.5576),
    (0.1211, 0.5927, 0.5446),
    (0.1539, 0.6802, 0.5042),
    (0.2965, 0.7616, 0.4242),
    (0.5063, 0.8288, 0.3004),
    (0.7519, 0.8750, 0.1432),
    (0.9932, 0.9062, 0.1439),
)
# Percentiles of more values than this are taken on an even subsample: same window, bounded time.
_PERCENTILE_SAMPLE = 2_000_000


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


def uncertainty_window(
    values: np.ndarray, percentile: float = ROBUST_PERCENTILES[1]
) -> tuple[float, float]:
    """The colour window (0, high) of an uncertainty map: from zero (sure) to the upper
    percentile of its non-zero values."""
    values = np.asarray(values).ravel()
    values = values[np.isfinite(values) & (values > 0)]
    return 0.0, robust_range(values, 0.0, percentile)[1] if values.size else 1.0


def map_window(
    values: np.ndarray, signed: bool, percentiles: tuple[float, float] = ROBUST_PERCENTILES
) -> tuple[float, float]:
    """The colour window (low, high) of a map, as the module docstring describes."""
    values = np.asarray(values).ravel()
    values = values[np.isfinite(values) & (values != 0)]
    if signed:
        bound = robust_range(np.abs(values), 0.0, percentiles[1])[1] if values.size else 1.0
        return -bound, bound
    return robust_range(values, *percentiles)
