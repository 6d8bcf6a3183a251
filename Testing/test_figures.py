"""Overview figures: files, pixel sizes, degenerate maps, inputs left untouched."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.figures.overview import (
    MapInfo,
    overview_figures,
    robust_range,
    write_overview_figures,
)
from TorchEsegetaLib.io.volume import Geometry

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
    kwargs.setdefault("geometry", (1.0, 1.0, 1.0))
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
    aniso = _pixels(_write(tmp_path / "aniso", {"a": _blob()}, geometry=(0.5, 0.5, 4.0))[0])
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
        paths = _write(
            tmp_path, maps, centre=centre, info={"signed": MapInfo("Signed", signed=True)}
        )
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
        {"geometry": (1.0, 0.0, 1.0)},
        {"geometry": Geometry((5, 5, 5))},
        {"region": np.zeros((20, 30, 11))},
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


# --- what a reader sees: legend, orientation, names and colour bars ----------------------------


def _rotation_z(degrees):
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _figures(direction=None, **kwargs):
    geometry = Geometry(
        SHAPE, (1.0, 1.0, 2.0), direction=np.eye(3) if direction is None else direction
    )
    kwargs.setdefault("centre", tuple(n // 2 for n in SHAPE))
    return overview_figures(
        _volume(), kwargs.pop("maps", {"saliency": _blob()}), geometry, **kwargs
    )


def _letters(fig):
    """Per panel of the first row (column order): edge -> letter, from the artists' texts."""
    panels = sorted((ax for ax in fig.axes if ax.get_title()), key=lambda ax: ax.get_position().x0)
    return [
        {
            t.get_gid().removeprefix("orientation-"): t.get_text()
            for t in ax.texts
            if (t.get_gid() or "").startswith("orientation-")
        }
        for ax in panels
    ], [ax.get_title() for ax in panels]


def _colorbars(fig):
    return sorted(
        (ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None),
        key=lambda ax: -ax.get_position().y0,
    )


def test_legend_names_the_outlines(tmp_path):
    segmentation = (_blob() > 0.3).astype(np.uint8)
    region = np.zeros(SHAPE, bool)
    region[8:12, 12:18, 4:8] = True
    for fig in _figures(segmentation=segmentation, region=region).values():
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == [
            "predicted segmentation",
            "target region (explained)",
        ]
    # The target is the predicted mask itself: one outline, one legend entry.
    same = _figures(segmentation=segmentation, region=segmentation > 0)["slices.png"]
    assert [t.get_text() for t in same.legends[0].get_texts()] == ["predicted segmentation"]
    assert not _figures()["slices.png"].legends


def test_orientation_letters_of_an_lps_image_are_radiological():
    for fig in _figures().values():
        letters, titles = _letters(fig)
        assert letters == [
            {"left": "R", "right": "L", "top": "A", "bottom": "P"},
            {"left": "R", "right": "L", "top": "S", "bottom": "I"},
            {"left": "A", "right": "P", "top": "S", "bottom": "I"},
        ]
        assert [t.split()[0] for t in titles] == ["axial", "coronal", "sagittal"]


def test_orientation_letters_follow_flipped_and_oblique_directions():
    # Stored in RAS index order (a typical NIfTI): i runs to the right, j anteriorly.
    letters, _ = _letters(_figures(direction=np.diag([-1.0, -1.0, 1.0]))["slices.png"])
    assert letters[0] == {"left": "L", "right": "R", "top": "P", "bottom": "A"}
    assert letters[2] == {"left": "P", "right": "A", "top": "S", "bottom": "I"}

    # Rotated 60 degrees about the feet-head axis: i now runs mostly posteriorly and j to the
    # right, so the plane without j is sagittal and the letters say so.
    fig = _figures(direction=_rotation_z(60.0))["slices.png"]
    letters, titles = _letters(fig)
    assert letters[0] == {"left": "A", "right": "P", "top": "L", "bottom": "R"}
    assert letters[1] == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    assert letters[2] == {"left": "L", "right": "R", "top": "S", "bottom": "I"}
    assert [t.split()[0] for t in titles] == ["axial", "sagittal", "coronal"]
    assert any("oblique image (up to 30 deg)" in t.get_text() for t in fig.texts)
    # 20 degrees is still nearest to the same axes: same letters as the straight image, noted.
    fig = _figures(direction=_rotation_z(20.0))["slices.png"]
    assert _letters(fig) == _letters(_figures()["slices.png"])
    assert any("oblique image (up to 20 deg)" in t.get_text() for t in fig.texts)


def test_rows_are_named_by_title_and_colour_bars_by_quantity():
    maps = {"ig64": _blob() - 0.5 * _blob(sign=1.0) * 0.1 - 0.2, "saliency": _blob() * 3e-7}
    info = {
        "ig64": MapInfo("Integrated Gradients (ig64)", "contribution to the score", True),
        "saliency": MapInfo("Saliency", "|d score / d intensity|", False),
    }
    figures = _figures(maps=maps, info=info, score="mean vessel logit over the target")
    slices, mip = figures["slices.png"], figures["mip.png"]
    first_column = sorted(
        (ax for ax in slices.axes if ax.get_ylabel() and getattr(ax, "_colorbar", None) is None),
        key=lambda ax: -ax.get_position().y0,
    )
    assert [ax.get_ylabel().replace("\n", " ") for ax in first_column] == [
        "image",
        "Integrated Gradients (ig64)",
        "Saliency",
    ]
    assert [ax.get_ylabel().replace("\n", " ") for ax in _colorbars(slices)] == [
        "image intensity",
        "contribution to the score, signed",
        "|d score / d intensity|",
    ]
    assert [ax.get_ylabel().replace("\n", " ") for ax in _colorbars(mip)][1:] == [
        "max |contribution to the score|",
        "max |d score / d intensity|",
    ]
    assert any(t.get_text().startswith("score: mean vessel logit") for t in slices.texts)


def test_colour_bar_ticks_carry_their_magnitude_and_stay_inside_the_bar():
    fig = _figures(maps={"tiny": _blob() * 3e-7, "signed": (_blob() - 0.3) * 1e-3})["slices.png"]
    fig.canvas.draw()
    for ax in _colorbars(fig):
        assert ax.yaxis.get_offset_text().get_text() == ""  # no shared "1e-7" above the bar
        low, high = ax.get_ylim()
        ticks = ax.get_yticks()
        assert len(ticks) >= 2 and all(low < t < high for t in ticks)
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert len(set(labels)) == len(labels)
        # each label is the tick's own value, magnitude included
        np.testing.assert_allclose([float(x) for x in labels], ticks, rtol=0.05, atol=1e-12)
    tiny = [t.get_text() for t in _colorbars(fig)[1].get_yticklabels()]
    assert all("e-" in label for label in tiny), tiny
    for a, b in zip(_colorbars(fig), _colorbars(fig)[1:]):
        # colour bars (their labels included) of neighbouring rows do not overlap
        renderer = fig.canvas.get_renderer()
        assert a.get_tightbbox(renderer).y0 > b.get_tightbbox(renderer).y1


def test_weak_values_are_transparent_and_strong_ones_opaque():
    from TorchEsegetaLib.figures import display
    from TorchEsegetaLib.figures.panels import Overlay

    overlay = Overlay(0.0, 1.0, signed=False)
    alpha = overlay.rgba(np.array([0.0, display.TRANSPARENT_BELOW * 0.9, 0.5, 1.0, 5.0]))[:, 3]
    assert alpha[0] == alpha[1] == 0.0
    assert 0.0 < alpha[2] < alpha[3] == pytest.approx(display.FIGURE_OPACITY) == alpha[4]
    signed = Overlay(-2.0, 2.0, signed=True).rgba(np.array([-2.0, -0.05, 0.0, 0.05, 2.0]))
    assert list(signed[:, 3]) == pytest.approx(
        [display.FIGURE_OPACITY, 0, 0, 0, display.FIGURE_OPACITY]
    )
    assert signed[0, 2] > signed[0, 0] and signed[4, 0] > signed[4, 2]  # blue below, red above
