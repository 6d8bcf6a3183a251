"""Start-up time and memory of the web viewer (``torchesegeta view``) on a run folder.

    python benchmarks/viewer_startup.py torchesegeta-demo [--screenshot docs/viewer.png]

Prints: seconds from the command to the server listening, to the page's first rendered frame
in every view (headless Chromium opened as soon as the server listens), and the server's
resident memory (RSS now and its peak) once the views are drawn. Needs the view extra and
Debian's chromium, like the browser tests (whose helpers this uses).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))

from viewer_browser import ViewerProcess, openBrowser, waitForView  # noqa: E402

VIEWS = ("Red", "Green", "Yellow", "ThreeD")


def memoryMb(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_folder")
    parser.add_argument("--screenshot", help="write a picture of the page here")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    viewer = ViewerProcess(str(Path(args.run_folder).resolve()), "--port", "0")
    listening = time.perf_counter() - viewer.started
    try:
        with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
            context, page = openBrowser(playwright, Path(profile) / "chromium")
            page.goto(viewer.url)
            for name in VIEWS:
                waitForView(page, name, lambda pixels: pixels.std() > 5)
            firstFrames = time.perf_counter() - viewer.started
            memory = memoryMb(viewer.process.pid)
            if args.screenshot:
                page.wait_for_timeout(1000)
                page.screenshot(path=args.screenshot)
            context.close()
    finally:
        viewer.stop()
    print(f"server listening after      {listening:6.1f} s")
    print(f"all four views rendered at  {firstFrames:6.1f} s (from the command)")
    print(
        f"server memory               {memory['VmRSS']:6.0f} MB RSS, peak {memory['VmHWM']:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
