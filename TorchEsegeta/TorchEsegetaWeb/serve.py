"""Start the viewer: check the folder and the port, pick offscreen rendering, serve until Ctrl+C.

Every check that a user can fail runs before the scene and the server are built (about ten
seconds), and fails with one :class:`UserInputError` line.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from pathlib import Path

from TorchEsegetaLib.errors import UserInputError

from .runSource import cohortCases, openRun

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8080
# Printed once the server listens; tests and scripts wait for this line.
READY_PREFIX = "TorchEsegeta viewer at "


def serve(
    run=None,
    cohort=None,
    port: int = DEFAULT_PORT,
    host: str = LOOPBACK,
    images=None,
    out=sys.stdout,
) -> int:
    """Serve a run folder (or a cohort's results folder) until interrupted; returns 0.

    Raises:
        UserInputError: a bad folder, a missing map or image, or a port that is taken.
    """
    if (run is None) == (cohort is None):
        raise UserInputError("give a run folder, or --cohort RESULTS for a cohort's results")
    if cohort is not None:
        cases = cohortCases(cohort)
        openRun(next(iter(cases.values())), images)
        fileRoot = Path(cohort)
    else:
        checked = openRun(run, images)
        cases = {checked.folder.name: checked.folder}
        fileRoot = checked.folder
    checkPortFree(host, port)
    if host not in (LOOPBACK, "localhost", "::1"):
        print(
            f"warning: serving on {host}: anyone who can reach this machine on port {port} can "
            "see these images and maps (no login); use the default 127.0.0.1 unless you mean it",
            file=sys.stderr,
        )
    chooseOffscreenRendering()
    started = time.perf_counter()
    server = _newServer()
    from .app import ViewerApp

    ViewerApp(server, cases, images=images, fileRoot=fileRoot)

    def announce(**_):
        url = f"http://{'[' + host + ']' if ':' in host else host}:{server.port}/"
        print(
            f"{READY_PREFIX}{url} (ready in {time.perf_counter() - started:.1f} s; Ctrl+C stops it)",
            file=out,
            flush=True,
        )

    server.controller.on_server_ready.add(announce)
    try:
        server.start(
            port=port, host=host, open_browser=False, show_connection_info=False, timeout=0
        )
    except OSError as e:
        raise UserInputError(_portMessage(host, port, e)) from e
    return 0


def checkPortFree(host: str, port: int) -> None:
    """Fail early and clearly when ``port`` cannot be bound on ``host``."""
    if not 0 <= int(port) <= 65535:
        raise UserInputError(f"port {port} is not a TCP port; give --port between 1 and 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # The server sets SO_REUSEADDR too, so a port in TIME_WAIT is free for both.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as e:
            raise UserInputError(_portMessage(host, port, e)) from e


def chooseOffscreenRendering() -> None:
    """Render with EGL when there is no X display (a server, CI); the VTK wheel otherwise tries
    X first and warns. An explicit VTK_DEFAULT_OPENGL_WINDOW (e.g. vtkOSOpenGLRenderWindow for
    OSMesa) is left alone."""
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def _newServer():
    from trame.app import get_server

    # trame reads its own options from sys.argv unless TRAME_ARGS is set; ours are parsed.
    os.environ["TRAME_ARGS"] = ""
    return get_server("torchesegeta-viewer", client_type="vue3")


def _portMessage(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use (another viewer?); choose another with --port"
    if error.errno == errno.EADDRNOTAVAIL or isinstance(error, socket.gaierror):
        return f"cannot listen on {host}: it is not an address of this machine; check --host"
    if error.errno == errno.EACCES:
        return f"no permission to listen on port {port}; use a port above 1023 with --port"
    return (
        f"cannot listen on {host} port {port} ({error.strerror or error}); check --host and --port"
    )
