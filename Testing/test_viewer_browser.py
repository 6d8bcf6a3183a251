"""The web viewer in a real browser: ``torchesegeta view`` on a free loopback port, driven by
headless Chromium. Pixels are read from the frames the server streams into each view and
compared with the Slicer module's colour tables at known voxels of a synthetic run."""

from __future__ import annotations

import http.client
import os
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from extras import require_extra
from viewer_browser import (
    ViewerProcess,
    axialPixel,
    openBrowser,
    patchColour,
    requireBrowser,
    slideTo,
    viewImage,
    waitForView,
)
from viewer_runs import (
    BLOCK,
    SCORES,
    SEGMENT_BLOCK,
    SIGNED_BLOCKS,
    SIZE,
    UNSIGNED_BLOCKS,
    expectedColour,
    folderSnapshot,
    makeViewerRun,
)

require_extra("view")
from TorchEsegetaSlicer.display import DISTINCT_COLORS  # noqa: E402

TOLERANCE = 6  # 8-bit levels: the colour table's lookup is quantised, the frames are lossless PNG


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    requireBrowser()
    from playwright.sync_api import sync_playwright

    base = tmp_path_factory.mktemp("viewer")
    run = makeViewerRun(base / "run")
    outside = base / "secret.txt"
    outside.write_text("not for the browser")
    (run / "figures" / "link-out.txt").symlink_to(outside)
    before = folderSnapshot(run)
    viewer = ViewerProcess(str(run), "--port", "0")
    shots = Path(os.environ.get("TORCHESEGETA_TEST_OUTPUT", base / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context, page = openBrowser(playwright, base / "chromium-profile")
        page.goto(viewer.url)
        page.wait_for_selector("#tv-panel")
        try:
            yield {"page": page, "viewer": viewer, "run": run, "before": before, "shots": shots}
        finally:
            context.close()
            viewer.stop()


# A block the unsigned map shows (value 0.5, above the module's transparency threshold).
SHOWN = (2, 0)


def centre(pixels, bi, bj):
    return axialPixel(pixels, bi * BLOCK + BLOCK / 2 - 0.5, bj * BLOCK + BLOCK / 2 - 0.5, SIZE[0])


def blockColours(pixels):
    return {
        (bi, bj): patchColour(pixels, *centre(pixels, bi, bj)) for bi in range(4) for bj in range(4)
    }


def prepare(page, legend=False, opacity_key="End"):
    """Legend off (it is drawn over the views) and the map fully opaque, or as asked."""
    if page.locator("#tv-legend").is_checked() != legend:
        page.locator("#tv-legend").click()
    slideTo(page, "tv-opacity", opacity_key)


def showMethod(page, title):
    """Pick a map with the method switcher (the select above the opacity slider)."""
    page.locator("#tv-method").click(force=True)
    page.locator(".v-overlay .v-list-item", has_text=title).first.click()


def test_page_loads_with_every_view_rendered(session):
    page = session["page"]
    for name in ("Red", "Green", "Yellow", "ThreeD"):
        pixels = waitForView(page, name, lambda p: p.std() > 5)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert "synthetic blocks" in page.locator("#tv-run").inner_text()
    page.screenshot(path=str(session["shots"] / "viewer-loaded.png"))


def test_slice_view_shows_the_map_in_the_colour_tables_colours(session):
    page = session["page"]
    showMethod(page, "Blocks (unsigned)")
    prepare(page, opacity_key="Home")
    imageAlone = waitForView(page, "Red", lambda p: _isGreyAt(p, *SHOWN))
    prepare(page, opacity_key="End")
    overlaid = waitForView(page, "Red", lambda p: _matches(p, UNSIGNED_BLOCKS, False))
    colours, alone = blockColours(overlaid), blockColours(imageAlone)
    visible = {}
    for (bi, bj), colour in colours.items():
        expected = expectedColour(UNSIGNED_BLOCKS, False, bi, bj)
        visible[bi, bj] = expected is not None
        # Below the module's threshold the map is transparent and the image shows.
        reference = alone[bi, bj] if expected is None else expected
        np.testing.assert_allclose(colour, reference, atol=TOLERANCE, err_msg=str((bi, bj)))
    assert 0 < sum(visible.values()) < len(visible)
    inMap = np.array([visible[bi, bj] for bi in range(4) for bj in range(4)])
    difference = np.abs(overlaid.astype(float) - imageAlone.astype(float)).sum(axis=2)
    perBlock = np.array(
        [difference[_rows(overlaid, bi, bj)].mean() for bi in range(4) for bj in range(4)]
    )
    assert perBlock[inMap].min() > 40 and perBlock[~inMap].max() < 3
    page.screenshot(path=str(session["shots"] / "viewer-unsigned.png"))


def test_switching_method_changes_the_pixels(session):
    page = session["page"]
    prepare(page)
    before = waitForView(page, "Red", lambda p: not _isGreyAt(p, *SHOWN))
    page.locator("#tv-metrics tbody tr", has_text="signed").click()  # the table switches too
    after = waitForView(page, "Red", lambda p: _matches(p, SIGNED_BLOCKS, True))
    assert np.abs(after.astype(float) - before).mean() > 20
    for (bi, bj), colour in blockColours(after).items():
        expected = expectedColour(SIGNED_BLOCKS, True, bi, bj)
        np.testing.assert_allclose(colour, expected, atol=TOLERANCE, err_msg=str((bi, bj)))
    page.screenshot(path=str(session["shots"] / "viewer-signed.png"))
    showMethod(page, "Blocks (unsigned)")
    waitForView(page, "Red", lambda p: np.abs(p.astype(float) - before).mean() < 2)


def test_opacity_slider_blends_map_and_image(session):
    page = session["page"]
    showMethod(page, "Blocks (unsigned)")
    prepare(page, opacity_key="Home")
    alone = waitForView(page, "Red", lambda p: _isGreyAt(p, *SHOWN))
    for _ in range(10):  # 10 steps of 0.05 from 0: opacity 0.5
        page.keyboard.press("ArrowRight")
    x, y = centre(alone, *SHOWN)
    expected = 0.5 * expectedColour(UNSIGNED_BLOCKS, False, *SHOWN) + 0.5 * patchColour(alone, x, y)
    half = waitForView(
        page, "Red", lambda p: np.abs(patchColour(p, x, y) - expected).max() <= TOLERANCE
    )
    assert not _isGreyAt(half, *SHOWN)


def test_segmentation_outline_can_be_hidden(session):
    page = session["page"]
    prepare(page)
    segment = np.array(DISTINCT_COLORS[0]) * 255.0

    def outlinePixels(pixels):
        return int((np.abs(pixels.astype(float) - segment).max(axis=2) < 30).sum())

    shown = waitForView(page, "Red", lambda p: outlinePixels(p) > 100)
    bi, bj = SEGMENT_BLOCK
    rows, cols = np.nonzero(np.abs(shown.astype(float) - segment).max(axis=2) < 30)
    x0, y0 = axialPixel(shown, bi * BLOCK - 0.5, bj * BLOCK - 0.5, SIZE[0])
    x1, y1 = axialPixel(shown, (bi + 1) * BLOCK - 0.5, (bj + 1) * BLOCK - 0.5, SIZE[0])
    assert (
        cols.min() >= x0 - 4
        and cols.max() <= x1 + 4
        and rows.min() >= y0 - 4
        and rows.max() <= y1 + 4
    )
    page.locator("#tv-outline").click()
    waitForView(page, "Red", lambda p: outlinePixels(p) == 0)
    page.locator("#tv-outline").click()
    waitForView(page, "Red", lambda p: outlinePixels(p) > 100)


def test_colour_legend_is_drawn_over_the_views(session):
    page = session["page"]
    prepare(page, legend=False)
    without = waitForView(page, "Red", lambda p: True)
    page.locator("#tv-legend").click()
    withLegend = waitForView(page, "Red", lambda p: np.abs(p.astype(float) - without).mean() > 1)
    changed = np.abs(withLegend.astype(float) - without).sum(axis=2) > 30
    assert (
        changed[:, changed.shape[1] // 2 :].sum() > 10 * changed[:, : changed.shape[1] // 4].sum()
    )


def test_metrics_table_shows_the_runs_values(session):
    page = session["page"]
    headers = page.locator("#tv-metrics thead").inner_text()
    assert "Deletion AUC \u2193" in headers and "Insertion AUC \u2191" in headers
    rows = {
        cells[0]: cells
        for cells in (
            text.split("\t") for text in page.locator("#tv-metrics tbody tr").all_inner_texts()
        )
    }
    assert set(rows) == set(SCORES)
    for label, scores in SCORES.items():
        assert (
            f"{scores['deletion']:.3g}" in rows[label]
            and f"{scores['insertion']:.3g}" in rows[label]
        )
    assert page.locator("#tv-curves").evaluate("img => img.naturalWidth") > 300


def test_cursor_value_and_linked_crosshair(session):
    page = session["page"]
    red = page.locator("#tv-view-Red").locator("xpath=..").locator("img.image-display-area")
    box = red.bounding_box()
    frame = viewImage(page, "Red")[1]
    scale = box["width"] / frame.shape[1]
    x, y = centre(frame, 1, 0)  # voxel (18, 6): image 100 + 18 + 6, map 0.25
    page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
    page.wait_for_function("document.querySelector('#tv-cursor').innerText.includes('blocks 0.25')")
    assert "image 124" in page.locator("#tv-cursor").inner_text()
    coronal = waitForView(page, "Green", lambda p: True)
    x2, y2 = centre(frame, 1, 3)
    page.keyboard.down("Shift")
    page.mouse.move(box["x"] + x2 * scale, box["y"] + y2 * scale, steps=4)
    page.keyboard.up("Shift")
    waitForView(page, "Green", lambda p: np.abs(p.astype(float) - coronal).mean() > 2)


def test_compare_shows_the_maps_side_by_side(session):
    page = session["page"]
    prepare(page)
    page.locator("#tv-mode-compare").click()
    # Each compare view is fitted once the page gives it its size: wait for the colours there.
    for view, blocks, signed in (
        ("TorchEsegeta1", UNSIGNED_BLOCKS, False),
        ("TorchEsegeta2", SIGNED_BLOCKS, True),
    ):
        expected = expectedColour(blocks, signed, *SHOWN)
        waitForView(
            page,
            view,
            lambda p, e=expected: np.abs(patchColour(p, *centre(p, *SHOWN)) - e).max() <= TOLERANCE,
        )
    titles = page.locator(".tv-compare-title").all_inner_texts()
    assert titles == ["Blocks", "Signed blocks"]
    page.screenshot(path=str(session["shots"] / "viewer-compare.png"))
    page.locator("#tv-mode-views").click()
    waitForView(page, "Red", lambda p: p.std() > 5)


@pytest.mark.parametrize(
    "path",
    [
        "/run-files/../secret.txt",
        "/run-files/%2e%2e/secret.txt",
        "/run-files/..%2fsecret.txt",
        "/run-files/figures/..%2f..%2fsecret.txt",
        "/run-files//etc/passwd",
        "/run-files/%2fetc%2fpasswd",
        "/run-files/figures/link-out.txt",
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/run-files/run.json%00",
        "/run-files/figures/%00/../../secret.txt",
        "/run-files/" + "x" * 5000,
        "/%00",
        "/index.html%00",
    ],
)
def test_paths_outside_the_run_folder_are_refused(session, path):
    status, body = _get(session["viewer"].url, path)
    assert status in (400, 403, 404), (status, body[:200])  # never 500, nor the file
    assert b"not for the browser" not in body and b"root:" not in body


def test_run_folder_files_are_served_and_nothing_can_be_written(session):
    status, body = _get(session["viewer"].url, "/run-files/run.json")
    assert status == 200 and b"synthetic blocks" in body
    status, _ = _get(session["viewer"].url, "/run-files/run.json", method="PUT", body=b"{}")
    assert status == 405
    status, _ = _get(session["viewer"].url, "/run-files/new.txt", method="POST", body=b"x")
    assert status in (404, 405)


def test_the_run_folder_is_left_as_it_was(session):
    assert folderSnapshot(session["run"]) == session["before"]


def _matches(pixels, blocks, signed) -> bool:
    """Whether every block the map shows has the module's colour (frames may lag a change)."""
    for (bi, bj), colour in blockColours(pixels).items():
        expected = expectedColour(blocks, signed, bi, bj)
        if expected is not None and np.abs(colour - expected).max() > TOLERANCE:
            return False
    return True


def _isGreyAt(pixels, bi, bj) -> bool:
    colour = patchColour(pixels, *centre(pixels, bi, bj))
    return float(colour.max() - colour.min()) < 4


def _rows(pixels, bi, bj):
    x, y = centre(pixels, bi, bj)
    return slice(int(y) - 3, int(y) + 4), slice(int(x) - 3, int(x) + 4)


def _get(url: str, path: str, method: str = "GET", body: bytes | None = None):
    """A raw request: ``path`` goes to the server exactly as written (no client normalising)."""
    address = urlparse(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
