"""Capturing what native code (ITK's C++ readers and writers) prints on file descriptor 2.

ITK reports some failures by printing to the process's stderr, below Python's ``sys.stderr``
(e.g. "** ERROR: NWAD: wrote only 204448 of 1048576 bytes" from its NIfTI writer on a full
disk, which then reports success). Captured, that text can be used to explain the failure in
one line instead of being sprayed above it; when all went well the caller echoes it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


class _Printed:
    """What native code printed on stderr while captured (``text``, set when the block ends)."""

    text = ""

    def echo(self) -> None:
        """Print it after all: the operation succeeded, so it is a warning worth keeping."""
        if self.text:
            sys.stderr.write(self.text)


@contextmanager
def native_stderr() -> Iterator[_Printed]:
    """Capture what ITK's C++ code prints on file descriptor 2 (e.g. "** ERROR: NWAD: wrote only
    ...") so that a failure is reported in one line; the caller echoes it when all went well."""
    printed = _Printed()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no file descriptor 2 to capture
        yield printed
        return
    try:
        sink = tempfile.TemporaryFile()
    except OSError:  # no room for the capture itself: let it through
        os.close(saved)
        yield printed
        return
    with sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield printed
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            printed.text = sink.read().decode("utf-8", errors="replace")
