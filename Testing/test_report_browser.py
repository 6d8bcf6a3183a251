"""The report's first screen in a real browser (headless Debian Chromium through playwright): at
1280 x 800 it shows the summary and the structure table, and the provenance comes after them.

Run as a script to photograph a run's report for the documentation::

    python Testing/test_report_browser.py torchesegeta-demo docs/report.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from viewer_browser import openBrowser, requireBrowser
from viewer_runs import makeViewerRun

from TorchEsegetaLib.runs.report import write_report

FIRST_SCREEN = {"width": 1280, "height": 800}


def openReport(playwright, report: Path, profileFolder: Path):
    """A headless Chromium page showing ``report`` at the first-screen size."""
    context, page = openBrowser(playwright, profileFolder, FIRST_SCREEN)
    page.goto(report.absolute().as_uri())
    page.wait_for_selector("#summary")
    return context, page


def screenshotReport(runFolder: Path, png: Path, profileFolder: Path) -> Path:
    """Write the run's report and photograph its first screen into ``png``."""
    from playwright.sync_api import sync_playwright

    report = write_report(runFolder)
    with sync_playwright() as playwright:
        context, page = openReport(playwright, report, profileFolder)
        try:
            page.screenshot(path=str(png))
        finally:
            context.close()
    return png


def test_the_first_screen_is_the_summary_and_the_structure_table(tmp_path):
    requireBrowser()
    from playwright.sync_api import sync_playwright

    run = makeViewerRun(tmp_path / "run")
    report = write_report(run)
    with sync_playwright() as playwright:
        context, page = openReport(playwright, report, tmp_path / "profile")
        try:
            for selector in ("#summary", "#structures"):
                box = page.locator(selector).bounding_box()
                assert box is not None and box["y"] + box["height"] <= FIRST_SCREEN["height"], (
                    selector,
                    box,
                )
                assert box["x"] + box["width"] <= FIRST_SCREEN["width"], (selector, box)
            provenance = page.locator("h2", has_text="Provenance").bounding_box()
            assert provenance["y"] > FIRST_SCREEN["height"]
            text = page.locator("#summary").inner_text()
            assert "Look first at Signed blocks" in text
            page.screenshot(path=str(tmp_path / "report.png"))
        finally:
            context.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python Testing/test_report_browser.py RUN_FOLDER OUT.png")
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        print(screenshotReport(Path(sys.argv[1]), Path(sys.argv[2]), Path(profile)))
