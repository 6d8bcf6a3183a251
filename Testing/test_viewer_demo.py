"""The web viewer on the built-in demo's run folder, in headless Chromium (slow: it runs the demo).

With ``TORCHESEGETA_README_SCREENSHOT=docs/viewer.png`` it also writes the README's picture.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from extras import require_extra
from viewer_browser import (
    REPOSITORY,
    ViewerProcess,
    openBrowser,
    requireBrowser,
    viewImage,
    waitForView,
)

require_extra("view")

METHODS = "saliency,integrated_gradients,deeplift,gradcam"


@pytest.mark.slow
def test_demo_run_in_the_browser(tmp_path):
    requireBrowser()
    from playwright.sync_api import sync_playwright

    run = tmp_path / "torchesegeta-demo"
    subprocess.run(
        [sys.executable, "-m", "TorchEsegetaLib.cli", "demo", "--quiet", "--out", str(run)]
        + ["--method", METHODS, "--evaluate", "deletion,insertion"],
        check=True,
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
        },
    )
    # Started beside the run, as a user would: the page shows its paths relative to there.
    viewer = ViewerProcess(run.name, "--port", "0", cwd=tmp_path)
    try:
        with sync_playwright() as playwright:
            context, page = openBrowser(playwright, tmp_path / "chromium-profile")
            page.goto(viewer.url)
            for name in ("Red", "Green", "Yellow", "ThreeD"):
                waitForView(page, name, lambda pixels: pixels.std() > 5)
            rows = page.locator("#tv-metrics tbody tr").all_inner_texts()
            assert sorted(row.split("\t")[0] for row in rows) == sorted(METHODS.split(","))
            saliency = viewImage(page, "Red")[1].astype(float)
            page.locator("#tv-metrics tbody tr", has_text="integrated_gradients").click()
            waitForView(page, "Red", lambda pixels: np.abs(pixels - saliency).mean() > 2)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(tmp_path / "viewer-demo.png"))
            target = os.environ.get("TORCHESEGETA_README_SCREENSHOT")
            if target:
                page.screenshot(path=str(Path(target).resolve()))
            context.close()
    finally:
        viewer.stop()
