"""Taking an output folder without ever deleting a result the run was not told to replace.

A run checks its output folder when it starts (:func:`check_output_folder`) and writes its
result into a hidden temporary sibling; only when that is complete is it moved into place
(:func:`publish`). Between the two, another run may have published to the same folder. So:

* without ``overwrite`` the temporary folder is renamed onto a name that must not exist.
  POSIX ``rename`` silently replaces an empty folder, so the rename is Linux's ``renameat2``
  with ``RENAME_NOREPLACE`` (macOS: ``renamex_np`` with ``RENAME_EXCL``; Windows never
  replaces); where neither exists, ``mkdir`` claims the name first (atomic, fails when it is
  taken) and the rename replaces only that empty claim (an empty folder is visible there for
  that instant);
* with ``overwrite``, the folder there at the start (its device, inode and modification
  time) is the only one replaced: what is at the name at publish time is moved aside, and if
  it is not the same folder (another run published, or wrote into it, meanwhile) it is put
  back and the run fails, keeping the other run's result.

What may be an output folder at all is decided before any work (:func:`check_output_folder`):

* it is never an input, never holds one and never lies inside one (images, masks, the model,
  the job file, ...; compared as file system objects, so links and bind mounts do not hide it);
* ``overwrite`` replaces only a folder this tool made, recognised by its record (``run.json``
  of a run folder, ``cohort.json`` of a cohort folder, ``demo.json`` of the demo's input) naming
  the tool (:func:`made_by_this_tool`), never another folder, not even an empty one;
* a mount point is never replaced (a rename cannot move it); the run goes into a folder inside.

Errors writing (read-only file system, full disk, quota, permissions) become one line that
names the place and the fix (:func:`TorchEsegetaLib.errors.unwritable_error`); the temporary folder is
always removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserInputError, unwritable_error
from ..io.paths import overlap

#: The name every record this tool writes carries in its "tool" field.
TOOL = "torchesegeta"
#: The record file of each kind of folder this tool makes (see :func:`made_by_this_tool`).
RECORDS = {
    "run folder": "run.json",
    "cohort folder": "cohort.json",
    "demo input folder": "demo.json",
}
#: An input of a run: (what it is, e.g. "image" or "model", its path).
Input = tuple[str, str | Path]

#: Test seam for the race tests: the path of a FIFO that a run reads one line from just before
#: it publishes, so a test can let another run publish first, deterministically.
PUBLISH_GATE_ENV = "TORCHESEGETA_PUBLISH_GATE"
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1  # Linux renameat2 flag
_RENAME_EXCL = 0x4  # macOS renamex_np flag
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EINVAL)}


@dataclass(frozen=True)
class Destination:
    """An output folder as the run found it when it started.

    Attributes:
        path: the folder (absolute).
        overwrite: whether the run may replace the folder found at the start.
        previous: (device, inode, modification time in ns) of that folder; None when there
            was none.
    """

    path: Path
    overwrite: bool
    previous: tuple[int, int, int] | None


def check_output_folder(
    out: Path, overwrite: bool, inputs: Iterable[Input] = (), kind: str = "run folder"
) -> Destination:
    """Check that the run may write ``out`` and note what is there now (see the module's rules).

    Args:
        out: the folder to write.
        overwrite: whether a folder already there may be replaced (only a ``kind`` this tool
            made).
        inputs: what the run reads, as (what, path): ``out`` must keep apart from each.
        kind: what ``out`` will be, a key of :data:`RECORDS`.

    Raises:
        UserInputError: ``out`` meets an input, exists (and not ``overwrite``), is a file, a
            mount point or a folder this tool did not make, or its folder cannot be written
            (checked now, not after the run's work).
    """
    out = Path(out).expanduser().absolute()
    check_apart_from_inputs(out, inputs)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"output path {out} is a file; choose a folder path for --out")
    if out.exists() and os.path.ismount(out):
        raise UserInputError(
            f"output folder {out} is a mount point (the top folder of a disk), which cannot be "
            f"replaced; write the {kind} into a folder inside it, e.g. --out {out / 'run'}"
        )
    if out.exists() and not overwrite:
        raise UserInputError(
            f"output folder {out} already exists; choose another --out or pass --overwrite"
        )
    if out.exists() and not made_by_this_tool(out, kind):
        raise UserInputError(
            f"output folder {out} was not written by torchesegeta (it holds no {RECORDS[kind]} "
            f"of ours), and --overwrite replaces only a {kind} torchesegeta wrote; choose "
            "another --out"
        )
    check_writable(out.parent, f"the {kind} {out}")
    return Destination(out, bool(overwrite), _identity(out) if out.exists() else None)


def check_apart_from_inputs(out: Path, inputs: Iterable[Input]) -> None:
    """Raise when the output folder ``out`` is, holds or lies inside any of ``inputs``."""
    for what, path in inputs:
        relation = overlap(out, path)
        if relation is not None:
            raise UserInputError(
                f"output folder {os.path.normpath(out)} {relation} the {what} "
                f"{os.path.abspath(path)}; choose an --out apart from the inputs (an output "
                "folder never holds or lies inside one, so that no run can replace or change it)"
            )


def check_run_folder_update(folder: Path, what: str, inputs: Iterable[Input] = ()) -> None:
    """Before ``what`` (the evaluation, the report) is written into the existing run folder
    ``folder``: it must be a run folder this tool wrote, holding no input and inside none."""
    folder = Path(folder).expanduser().absolute()
    if not made_by_this_tool(folder, "run folder"):
        raise UserInputError(
            f"{folder} is not a run folder written by torchesegeta (no run.json of ours), so "
            f"{what} is not written into it; give a folder written by `torchesegeta explain`"
        )
    check_apart_from_inputs(folder, inputs)


def made_by_this_tool(folder: Path, kind: str = "run folder") -> bool:
    """Whether ``folder`` is a ``kind`` this tool wrote: its record (:data:`RECORDS`) is a
    regular file, not a link, holding a JSON object that names the tool."""
    record = Path(folder) / RECORDS[kind]
    try:
        if record.is_symlink() or not record.is_file():
            return False
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    if data.get("tool") == TOOL:
        return True
    # records written before the "tool" field: a run's library versions, a cohort's template digest
    versions = data.get("versions")
    legacy = {"run.json": isinstance(versions, dict) and TOOL in versions}
    legacy["cohort.json"] = "template_sha256" in data and "cases" in data
    return bool(legacy.get(RECORDS[kind], False))


def save_run(destination: Destination | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(folder)`` on a hidden temporary sibling of the destination, then publish it.

    Whatever goes wrong (an error, a cancel, Ctrl-C, a full disk), the temporary folder is
    removed and the destination is left as it was. A plain path is a destination that must
    not exist.
    """
    if not isinstance(destination, Destination):
        destination = check_output_folder(Path(destination), overwrite=False)
    out = destination.path
    temporary = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        publish(temporary, destination)
    except OSError as error:
        # name the file as the run folder will hold it, not its hidden temporary path
        written = Path(error.filename) if error.filename else None
        where = None
        if written is not None and written.is_relative_to(temporary):
            where = written.relative_to(temporary) if written != temporary else out.parent
        message = unwritable_error(error, f"the run folder {out}", where)
        if message is None:
            raise
        raise message from error
    finally:
        _remove(temporary)


def publish(temporary: Path, destination: Destination) -> None:
    """Move the complete ``temporary`` folder to the destination (see the module's rules)."""
    _wait_at_gate()
    out = destination.path
    not_written = "this run's result was not written"
    if not destination.overwrite or destination.previous is None:
        try:
            rename_no_replace(temporary, out)
        except FileExistsError:
            raise UserInputError(
                f"output folder {out} was created by another run while this one ran, and is "
                f"kept; {not_written}: choose another --out, or rerun with --overwrite to "
                "replace it"
            ) from None
        return
    fresh = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    aside: Path | None = fresh
    try:
        os.rename(out, fresh)  # whatever is at the name now; ``aside`` is a fresh name
    except FileNotFoundError:
        aside = None  # the old run was removed meanwhile: nothing left to replace
    if aside is not None and _identity(aside) != destination.previous:
        raise UserInputError(
            f"output folder {out} was replaced or changed by another run while this one ran, "
            f"and is {_put_back(aside, out)}; {not_written}: rerun it to replace that one too, "
            "or choose another --out"
        )
    try:
        rename_no_replace(temporary, out)
    except BaseException as error:
        kept = (
            "" if aside is None else f", and the run it was to replace is {_put_back(aside, out)}"
        )
        if isinstance(error, FileExistsError):
            raise UserInputError(
                f"output folder {out} was created by another run while this one published{kept}; "
                f"{not_written}: choose another --out"
            ) from None
        raise
    if aside is not None:
        _remove(aside)


def rename_no_replace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; FileExistsError when ``target`` exists, even as an
    empty folder (which a POSIX ``rename`` would replace)."""
    if os.name == "nt":
        os.rename(source, target)  # Windows never replaces an existing target
        return
    if _native_rename_no_replace(source, target):
        return
    os.mkdir(target)  # claims the name atomically; FileExistsError when it is taken
    try:
        os.rename(source, target)  # replaces only our own empty claim
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(target)  # only if it is still our empty claim
        raise


def _native_rename_no_replace(source: Path, target: Path) -> bool:
    """True when the system's no-replace rename did it; False when there is none here."""
    libc = _libc()
    src, dst = os.fsencode(source), os.fsencode(target)
    if libc is not None and hasattr(libc, "renameat2"):
        result = libc.renameat2(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE)
    elif libc is not None and sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        result = libc.renamex_np(src, dst, _RENAME_EXCL)
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:  # e.g. a file system without the flag
        return False
    raise OSError(code, os.strerror(code), str(source), None, str(target))


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _identity(path: Path) -> tuple[int, int, int]:
    info = os.lstat(path)
    return info.st_dev, info.st_ino, info.st_mtime_ns


def _put_back(aside: Path, out: Path) -> str:
    """Return a folder moved aside to ``out``; says where it now is."""
    try:
        rename_no_replace(aside, out)
    except OSError:
        return f"kept in {aside}"  # yet another run took the name: keep both
    return "kept"


def check_writable(folder: Path, what: str) -> None:
    """Fail now, not after the work, when ``folder`` (or the nearest folder above it that
    exists) cannot be written: read-only file system, permissions. A probe folder is made
    and removed.

    Args:
        folder: where the result will be written.
        what: what will be written, for the message (e.g. "the run folder /data/run").
    """
    parent = Path(folder)
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserInputError(f"cannot write {what}: {parent} is a file; choose a place in a folder")
    probe = parent / f".torchesegeta-probe-{uuid.uuid4().hex[:8]}"
    try:
        os.mkdir(probe)
    except OSError as error:
        message = unwritable_error(error, what, parent)
        if message is None:
            raise
        raise message from error
    os.rmdir(probe)


def _remove(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _wait_at_gate() -> None:
    gate = os.environ.get(PUBLISH_GATE_ENV)
    if gate:
        with open(gate, encoding="utf-8") as fifo:  # blocks until the test opens it to write
            fifo.readline()
