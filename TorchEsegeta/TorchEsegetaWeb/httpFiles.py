"""Read-only HTTP access to the files of the run folder (its report and figures).

Only GET and HEAD exist on this route, only regular files inside the folder are served, and a
path that leaves the folder (``..``, an absolute path, an encoded slash, a symbolic link out) or
that no file can have (a NUL byte, a name too long) gets 404 like a missing file, so the server
tells nothing about the rest of the disk and never fails on a name.
"""

from __future__ import annotations

from pathlib import Path

from TorchEsegetaLib.io.paths import regular_file_inside

ROUTE_PREFIX = "/run-files/"


def addFileRoute(app, folder) -> None:
    """Serve the files under ``folder`` at ``/run-files/<relative path>`` on an aiohttp app."""
    from aiohttp import web

    root = Path(folder).resolve()

    async def serveFile(request):
        path = regular_file_inside(root, request.match_info["path"])
        if path is None:
            raise web.HTTPNotFound(text="not a file of this run folder")
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    # add_get also answers HEAD; no other method reaches the folder.
    app.router.add_get(ROUTE_PREFIX + "{path:.+}", serveFile)


def fileUrl(relative: str) -> str:
    """The URL path (relative to the page) of a run folder file."""
    return ROUTE_PREFIX.lstrip("/") + relative
