"""Errors that reach the user.

A :class:`UserInputError` carries one sentence that names the problem and the fix; the CLI
prints it without a traceback and exits with status 2. Any other exception is an internal
error (status 1).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class UserInputError(Exception):
    """Bad input from the user (file, model, target, method, parameter, resources)."""


class OutOfMemoryError(UserInputError):
    """The work did not fit in memory even at the smallest batch size."""


class CancelledError(Exception):
    """The run was cancelled through its cancel token."""


class BudgetExceededError(Exception):
    """A method ran past its time budget."""


#: errno values that mean "this place cannot be written" rather than a bug: the user's to fix.
_UNWRITABLE = {
    getattr(errno, name)
    for name in ("EROFS", "ENOSPC", "EDQUOT", "EACCES", "EPERM")
    if hasattr(errno, name)
}


def unwritable_error(
    error: BaseException, what: str | None = None, where: str | os.PathLike | None = None
) -> UserInputError | None:
    """The one line for an ``OSError`` that says a place cannot be written (read-only file
    system, disk full, over quota) or used (permission denied), or None for any other error.

    Args:
        error: the exception raised.
        what: what was being written, e.g. "the run folder /data/run" (None: not known).
        where: the folder or file to name (default: the error's file name).
    """
    if not isinstance(error, OSError) or error.errno not in _UNWRITABLE:
        return None
    where = where or error.filename or what or "a file"
    if error.errno == errno.EROFS:
        reason = f"{where} is on a read-only file system"
        fix = "choose a place on a writable disk"
    elif error.errno == getattr(errno, "EDQUOT", None):
        reason = f"the disk quota is exhausted (writing {where})"
        fix = "free some of your quota or choose a place on another disk"
    elif error.errno == errno.ENOSPC:
        reason = f"no space is left on the disk (writing {where})"
        fix = "free some space there or choose a place on another disk"
    else:
        reason = f"permission denied for {where}"
        fix = "fix its permissions or choose a place you may use"
    return UserInputError(f"cannot write {what}: {reason}; {fix}" if what else f"{reason}; {fix}")


def unwritable_errno(said: str, path: Path, needed: int) -> int | None:
    """The errno a failed ITK write stands for, from its words or the free space; None if unclear."""
    for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES"):
        code = getattr(errno, name, None)
        if code is not None and os.strerror(code) in said:
            return code
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return None
    return errno.ENOSPC if free < needed else None


def parser_error_line(error: Exception, holder: str = "this file") -> str:
    """A JSON or YAML parser's error in one line (YAML's span several, with the offending text
    underlined); a YAML tag that would build a Python object is named as such, with the fix
    (``holder`` says what holds plain data only, e.g. "a job file")."""
    problem = getattr(error, "problem", None)
    if problem is None:
        return " ".join(str(error).split())
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    if "could not determine a constructor for the tag" in problem:
        # safe_load refuses Python object tags (they would run code): say so plainly
        return f"{problem}{where}; {holder} holds plain data only: remove the tag"
    context = getattr(error, "context", None)
    return f"{context + ': ' if context else ''}{problem}{where}"
