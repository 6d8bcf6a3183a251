"""Overview figures: files, pixel sizes, degenerate maps, inputs left untouched."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.figures import robust_range, write_overview_figures

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning", "error::UserWarning")

SHAPE = (20, 30, 12)


def _volume(shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(100.0, 10.0, shape).astype(np.float32)


def _blob(shape=SHAPE, sign=1.0):
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre = [n / 2 for n in shape]
    distance2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return (sign * np.exp(-distance2 / 10.0)).astype(np.float32)


def _write(tmp_path, maps, shape=SHAPE, **kwargs):
    kwargs.setdefault("spacing", (1.0, 1.0, 1.0))
    kwargs.setdefault("centre", tuple(n // 2 for n in shape))
    return write_overview_figures(_volume(shape), maps, out_dir=tmp_path, **kwargs)


def _pixels(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return imread(path)


def test_writes_two_valid_pngs_in_figures_folder(tmp_path):
    paths = _write(tmp_path, {"saliency": _blob()}, title="case 1")
    assert [p.name for p in paths] == ["mip.png", "slices.png"]
    for path in paths:
        assert path.parent == tmp_path / "figures"
        pixels = _pixels(path)
        height, width = pixels.shape[:2]
        assert 200 <= height <= 2000 and 200 <= width <= 2000
        assert pixels.std() > 0.05  # something was drawn


@pytest.mark.parametrize("count", [1, 5])
def test_height_grows_with_number_of_methods(tmp_path, count):
    maps = {f"method_{n}": _blob() * (n + 1) for n in range(count)}
    one = _pixels(_write(tmp_path / "one", {"only": _blob()})[1]).shape
    many = _pixels(_write(tmp_path / "many", maps)[1]).shape
    assert many[1] == one[1]
    assert many[0] >= one[0] and (count == 1 or many[0] > one[0] * 2)


def test_anisotropic_spacing_changes_panel_widths(tmp_path):
    iso = _pixels(_write(tmp_path / "iso", {"a": _blob()})[0])
    aniso = _pixels(_write(tmp_path / "aniso", {"a": _blob()}, spacing=(0.5, 0.5, 4.0))[0])
    assert iso.shape[0] == aniso.shape[0]
    assert iso.shape[1] != aniso.shape[1]


def test_degenerate_maps_and_border_centre(tmp_path):
    maps = {
        "zero": np.zeros(SHAPE),
        "constant": np.full(SHAPE, 3.0),
        "nan": np.full(SHAPE, np.nan),
        "signed": _blob(sign=-1.0) + 0.5 * _blob(),
    }
    for centre in [(0, 0, 0), tuple(n - 1 for n in SHAPE)]:
        paths = _write(tmp_path, maps, centre=centre, signed={"signed": True})
        assert all(p.stat().st_size > 0 for p in paths)


def test_segmentation_outline_and_file_budget(tmp_path):
    shape = (64, 64, 64)
    segmentation = (_blob(shape) > 0.5).astype(np.uint8)
    maps = {name: _blob(shape) * (n + 1) for n, name in enumerate("abcd")}
    paths = _write(tmp_path, maps, shape=shape, segmentation=segmentation)
    assert all(p.stat().st_size < 500_000 for p in paths)


def test_inputs_are_not_modified(tmp_path):
    image = _volume()
    image[0, 0, 0] = np.nan
    maps = {"signed": _blob(sign=-1.0), "plain": _blob()}
    segmentation = (_blob() > 0.3).astype(np.int16)
    copies = (image.copy(), {k: v.copy() for k, v in maps.items()}, segmentation.copy())
    write_overview_figures(
        image, maps, (1.0, 2.0, 3.0), (3, 4, 5), tmp_path, segmentation=segmentation
    )
    np.testing.assert_array_equal(image, copies[0])
    for name, values in maps.items():
        np.testing.assert_array_equal(values, copies[1][name])
    np.testing.assert_array_equal(segmentation, copies[2])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"centre": (20, 0, 0)},
        {"spacing": (1.0, 0.0, 1.0)},
        {"segmentation": np.zeros((20, 30, 11))},
    ],
)
def test_bad_arguments_name_the_problem(tmp_path, kwargs):
    with pytest.raises(UserInputError):
        _write(tmp_path, {"a": _blob()}, **kwargs)


def test_mismatched_map_shape_is_rejected(tmp_path):
    with pytest.raises(UserInputError, match="shape"):
        _write(tmp_path, {"a": np.zeros((5, 5, 5))})


@pytest.mark.parametrize("value", [0.0, 7.5, -2.0])
def test_robust_range_of_constant_input_is_an_interval(value):
    vmin, vmax = robust_range(np.full(100, value))
    assert vmin < vmax and vmin <= value <= vmax


def test_robust_range_ignores_outliers_and_non_finite_values():
    values = np.concatenate([np.linspace(0.0, 1.0, 1000), [1e6, np.nan, np.inf]])
    vmin, vmax = robust_range(values, 1.0, 99.0)
    assert 0.0 <= vmin < 0.05 and 0.95 < vmax < 2.0
    assert robust_range(np.array([np.nan])) == (0.0, 1.0)
