"""Where paths lie relative to each other, once links are resolved: a file named inside a folder,
an output folder against the inputs, and what kind of thing (a FIFO, a device) is at a path.

Names that come from data (a run record, a URL) are never trusted to stay inside a folder:
``../../etc/passwd``, an absolute path or a symbolic link out all count as outside. Two paths
are the same place when they are the same file system object (device and inode), so a bind
mount, a hard link to a folder or a case-insensitive file system cannot hide an overlap.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import UserInputError

#: What is at a path that is not a regular file or folder, for messages ("a FIFO (named pipe)").
_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def inside_folder(folder: str | os.PathLike, relative: str | os.PathLike) -> Path | None:
    """``folder / relative`` when it stays inside ``folder`` once links are resolved, else None
    (also for a name the system cannot take: a NUL byte, a name too long, a link loop)."""
    try:
        root = Path(folder).resolve()
        candidate = (root / relative).resolve()
    except (ValueError, OSError, RuntimeError):  # NUL byte, ENAMETOOLONG, ELOOP
        return None
    if candidate != root and root not in candidate.parents:
        return None
    return candidate


def regular_file_inside(folder: str | os.PathLike, relative: str | os.PathLike) -> Path | None:
    """The regular file ``relative`` names inside ``folder`` (links resolved), else None."""
    path = inside_folder(folder, relative)
    try:
        return path if path is not None and path.is_file() else None
    except OSError:
        return None


def special_kind(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it is neither a regular file nor a folder ("a FIFO (named pipe)",
    "a character device", ...); None for a file, a folder or nothing at all."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), None)


def refuse_special(path: str | os.PathLike, what: str) -> None:
    """Raise a one-line error when ``path`` is a FIFO, a device or a socket, not the ``what``
    (e.g. "image file") it was given as: reading one would block or read endless data."""
    kind = special_kind(path)
    if kind is not None:
        raise UserInputError(f"{path} is {kind}, not a regular file; give the {what} itself")


def overlap(out: str | os.PathLike, other: str | os.PathLike) -> str | None:
    """How the folder ``out`` meets the path ``other``: "is" (the same place), "holds" (``other``
    lies inside ``out``), "lies inside" (``out`` lies inside ``other``), or None when apart."""
    out_path, other_path = _real(out), _real(other)
    out_self, out_above = _identities(out_path)
    other_self, other_above = _identities(other_path)
    if out_self is not None and out_self == other_self:
        return "is"
    if other_self is not None and other_self in out_above:
        return "lies inside"
    if out_self is not None and out_self in other_above:
        return "holds"
    # paths that do not exist (yet) are compared by their names as well
    if out_path == other_path:
        return "is"
    if other_path in out_path.parents:
        return "lies inside"
    if out_path in other_path.parents:
        return "holds"
    return None


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(path))))


def _identities(path: Path) -> tuple[tuple[int, int] | None, list[tuple[int, int]]]:
    """(device, inode) of ``path`` (None when it does not exist) and of each existing folder
    above it."""
    found: list[tuple[int, int] | None] = []
    for place in (path, *path.parents):
        try:
            info = os.stat(place)
        except (OSError, ValueError):
            found.append(None)
            continue
        found.append((info.st_dev, info.st_ino))
    return found[0], [identity for identity in found[1:] if identity is not None]
