"""``torchesegeta view --cohort RESULTS``: a case picker over a cohort's run folders, in headless
Chromium; served on every address (``--host 0.0.0.0``), which prints a warning."""

from __future__ import annotations

import numpy as np
from extras import require_extra
from viewer_browser import (
    ViewerProcess,
    axialPixel,
    openBrowser,
    patchColour,
    requireBrowser,
    slideTo,
    waitForView,
)
from viewer_runs import (
    BLOCK,
    GEOMETRY,
    SIZE,
    UNSIGNED_BLOCKS,
    blockArray,
    expectedColour,
    makeViewerRun,
)

from TorchEsegetaLib.io.images import write_volume

require_extra("view")


def colourAt(pixels, bi, bj):
    x, y = axialPixel(pixels, bi * BLOCK + BLOCK / 2 - 0.5, bj * BLOCK + BLOCK / 2 - 0.5, SIZE[0])
    return patchColour(pixels, x, y)


def test_cohort_case_picker_switches_the_whole_case(tmp_path):
    requireBrowser()
    from playwright.sync_api import sync_playwright

    results = tmp_path / "results"
    makeViewerRun(results / "case-a", tmp_path / "input-a")
    second = makeViewerRun(results / "case-b", tmp_path / "input-b")
    flipped = UNSIGNED_BLOCKS[:, ::-1]  # case b's map, mirrored left-right
    write_volume(blockArray(flipped), GEOMETRY, second / "blocks.nii.gz")
    viewer = ViewerProcess("--cohort", str(results), "--host", "0.0.0.0", "--port", "0")
    try:
        assert "warning: serving on 0.0.0.0" in "".join(viewer.stderr)
        url = viewer.url.replace("0.0.0.0", "127.0.0.1")
        with sync_playwright() as playwright:
            context, page = openBrowser(playwright, tmp_path / "chromium-profile")
            page.goto(url)
            page.wait_for_selector("#tv-case", state="attached")
            page.locator("#tv-legend").click()
            slideTo(page, "tv-opacity", "End")
            # Block (0, 1): 1.0 in case a's map, 0.5 in case b's; both shown.
            expected = {"a": expectedColour(UNSIGNED_BLOCKS, False, 0, 1)}
            expected["b"] = expectedColour(flipped, False, 0, 1)
            assert np.abs(expected["a"] - expected["b"]).max() > 40
            waitForView(page, "Red", lambda p: np.abs(colourAt(p, 0, 1) - expected["a"]).max() < 6)
            assert "case-a" in page.locator("#tv-run").inner_text()
            page.locator("#tv-case").click(force=True)
            page.locator(".v-overlay .v-list-item", has_text="case-b").first.click()
            waitForView(page, "Red", lambda p: np.abs(colourAt(p, 0, 1) - expected["b"]).max() < 6)
            page.wait_for_function("document.querySelector('#tv-run').innerText.includes('case-b')")
            context.close()
    finally:
        viewer.stop()
