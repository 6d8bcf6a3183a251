"""Drive the web viewer for its tests: the real ``torchesegeta view`` process on a free loopback
port, headless Debian Chromium through playwright, and the pixels each view streams."""

from __future__ import annotations

import base64
import io
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from extras import skip_reason

REPOSITORY = Path(__file__).resolve().parents[1]
# The viewer and the Slicer module's helpers live in the module's folder (as in a checkout).
sys.path.insert(0, str(REPOSITORY / "TorchEsegeta"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1500, "height": 900}
# The server builds Slicer's views in ~10 s alone; on a loaded 2-core machine several times that.
START_TIMEOUT_S = 240
RENDER_TIMEOUT_MS = 90_000
READY_PREFIX = "TorchEsegeta viewer at "


def requireBrowser() -> None:
    """Skip where Chromium or playwright is missing; a failure on CI, which installs both (the
    reason names the [view] extra, see extras.py)."""
    missing = []
    if not Path(CHROMIUM).is_file():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright)")
    if missing:
        pytest.skip(skip_reason("view", "its browser tests need " + " and ".join(missing)))


class ViewerProcess:
    """``torchesegeta view ARGS --port 0`` in a subprocess; ``url`` once it listens."""

    def __init__(self, *args: str, env: dict | None = None, cwd: Path = REPOSITORY):
        environment = {**os.environ, **(env or {})}
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(REPOSITORY), environment.get("PYTHONPATH", "")]
        )
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "TorchEsegetaLib.cli", "view", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            cwd=cwd,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        for stream, sink in (
            (self.process.stdout, self.stdout),
            (self.process.stderr, self.stderr),
        ):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()
        self.url = self._waitForUrl()

    def _read(self, stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)
            self._lines.put(line)

    def _waitForUrl(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=1.0)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if line.startswith(READY_PREFIX):
                return line[len(READY_PREFIX) :].split()[0]
        self.stop()
        raise AssertionError(f"the viewer did not start:\n{''.join(self.stderr)[-4000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def openBrowser(playwright, profileFolder: Path, viewport: dict | None = None):
    """A headless Chromium page with an empty profile of its own, ``viewport`` large (default:
    the viewer tests' window)."""
    shutil.rmtree(profileFolder, ignore_errors=True)
    context = playwright.chromium.launch_persistent_context(
        str(profileFolder),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport=viewport or VIEWPORT,
    )
    return context, context.new_page()


_IMAGE_OF_VIEW = """(name) => {
  const marker = document.getElementById('tv-view-' + name);
  const img = marker && marker.parentElement.querySelector('img.image-display-area');
  if (!img || !img.complete || !img.naturalWidth) return null;
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  canvas.getContext('2d').drawImage(img, 0, 0);
  return {src: img.src, png: canvas.toDataURL('image/png')};
}"""


def viewImage(page, viewName: str) -> tuple[str, np.ndarray] | None:
    """(frame id, RGB pixels) of the frame the view shows now, or None before its first."""
    from PIL import Image

    found = page.evaluate(_IMAGE_OF_VIEW, viewName)
    if found is None:
        return None
    data = base64.b64decode(found["png"].split(",", 1)[1])
    return found["src"], np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def waitForView(page, viewName: str, condition, timeout_s: float = RENDER_TIMEOUT_MS / 1000):
    """Poll the view's frames until ``condition(pixels)`` holds; returns those pixels.

    Frames arrive asynchronously after each change (and a change may take more than one), so
    tests wait for what they expect and report the last frame when it never comes.
    """
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        frame = viewImage(page, viewName)
        if frame is not None:
            last = frame[1]
            if condition(last):
                return last
        page.wait_for_timeout(250)
    raise AssertionError(
        f"view {viewName} never showed the expected image (last: {_describe(last)})"
    )


def _describe(pixels) -> str:
    if pixels is None:
        return "no frame"
    return f"{pixels.shape[1]}x{pixels.shape[0]}, mean {pixels.reshape(-1, 3).mean(0).round(1)}"


def patchColour(pixels: np.ndarray, x: float, y: float, radius: int = 3) -> np.ndarray:
    """Median RGB of the (2r+1)^2 patch around pixel (x, y)."""
    row, column = int(round(y)), int(round(x))
    patch = pixels[row - radius : row + radius + 1, column - radius : column + radius + 1]
    return np.median(patch.reshape(-1, 3), axis=0)


def axialPixel(pixels: np.ndarray, i: float, j: float, size: int) -> tuple[float, float]:
    """Where voxel centre (i, j) of a square size x size axial plane (1 mm voxels, identity
    LPS direction) is drawn in a slice view fitted to the volume: the plane fills the view's
    smaller side, centred; patient left (+i) is screen right, posterior (+j) is down."""
    height, width = pixels.shape[:2]
    scale = min(width, height) / size
    return width / 2 + (i + 0.5 - size / 2) * scale, height / 2 + (j + 0.5 - size / 2) * scale


def slideTo(page, sliderId: str, key: str) -> None:
    """Move a Vuetify slider to an end with the keyboard ("Home": minimum, "End": maximum)."""
    # Vuetify puts the id on the slider's hidden input; the thumb is its sibling.
    thumb = page.locator(f"#{sliderId}").locator("xpath=..").locator("[role=slider]")
    thumb.focus()
    page.keyboard.press(key)
