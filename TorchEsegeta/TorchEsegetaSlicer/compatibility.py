"""Which 3D Slicer can run TorchEsegeta.

The engine needs Python 3.10 or newer. Slicer 5.10 is the first release that ships it (Python
3.12); Slicer 5.8 and older ship Python 3.9. This file, the package's ``__init__`` and the
module file up to its check stay importable by Python 3.9, so that an older Slicer gets one
line saying what to install instead of a traceback from the engine's syntax.
"""

from __future__ import annotations

import sys

MINIMUM_PYTHON = (3, 10)
MINIMUM_SLICER = "5.10"


def pythonProblem(version: tuple[int, ...] | None = None) -> str | None:
    """One line saying why this Slicer cannot run TorchEsegeta, or None where it can.

    Args:
        version: the Python version to judge (default: the running one's, ``sys.version_info``).
    """
    version = tuple(sys.version_info[:3] if version is None else version)
    if version[:2] >= MINIMUM_PYTHON:
        return None
    running = ".".join(str(part) for part in version)
    needed = ".".join(str(part) for part in MINIMUM_PYTHON)
    return (
        f"TorchEsegeta needs 3D Slicer {MINIMUM_SLICER} or newer (Python {needed} or newer); "
        f"this Slicer runs Python {running}: install a current Slicer release."
    )
