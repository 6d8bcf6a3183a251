"""The web viewer shows a run's uncertainty maps beside its attributions, in the uncertainty
colours, with the run's uncertainty summary (headless Chromium, a synthetic run)."""

from __future__ import annotations

import numpy as np
from extras import require_extra
from viewer_browser import ViewerProcess, openBrowser, requireBrowser, slideTo, waitForView
from viewer_runs import UNCERTAINTY_SUMMARY, UNSIGNED_BLOCKS, addUncertainty, makeViewerRun

require_extra("view")

TOLERANCE = 6


def expectedUncertaintyColour(bi: int, bj: int) -> np.ndarray | None:
    """The 8-bit RGB of block (bi, bj) of the entropy map: window from 0, own colour table."""
    from viewer_runs import blockArray

    from TorchEsegetaLib.figures import display

    lower, upper = display.uncertainty_window(blockArray(UNSIGNED_BLOCKS))
    value = UNSIGNED_BLOCKS[bj, bi]
    if value < lower + display.TRANSPARENT_BELOW * (upper - lower):
        return None
    table = np.array(display.UNCERTAINTY_COLOURS)
    position = np.clip((value - lower) / (upper - lower), 0.0, 1.0)
    points = np.linspace(0.0, 1.0, len(table))
    return np.array([np.interp(position, points, table[:, c]) for c in range(3)]) * 255.0


def test_uncertainty_map_and_summary_beside_the_attributions(tmp_path):
    requireBrowser()
    from playwright.sync_api import sync_playwright
    from test_viewer_browser import blockColours, showMethod

    run = addUncertainty(makeViewerRun(tmp_path / "run"))
    viewer = ViewerProcess(str(run), "--port", "0")
    try:
        with sync_playwright() as playwright:
            context, page = openBrowser(playwright, tmp_path / "chromium-profile")
            page.goto(viewer.url)
            page.wait_for_selector("#tv-uncertainty")
            table = page.locator("#tv-uncertainty").inner_text()
            entropy = f"{UNCERTAINTY_SUMMARY['mean_entropy_in_target']:.3g}"
            assert "tta" in table and entropy in table and "vessel" in table
            if page.locator("#tv-legend").is_checked():
                page.locator("#tv-legend").click()
            slideTo(page, "tv-opacity", "End")
            showMethod(page, "uncertainty: predictive entropy (tta, 8 members)")

            def shown(pixels):
                expected = expectedUncertaintyColour(2, 0)
                return np.abs(blockColours(pixels)[2, 0] - expected).max() <= TOLERANCE

            pixels = waitForView(page, "Red", shown)
            for (bi, bj), colour in blockColours(pixels).items():
                expected = expectedUncertaintyColour(bi, bj)
                if expected is not None:
                    np.testing.assert_allclose(
                        colour, expected, atol=TOLERANCE, err_msg=str((bi, bj))
                    )
            context.close()
    finally:
        viewer.stop()
