"""The Slicer module's tests without the Slicer app: pure parts, the .ui, packaging, and the
glue on the real MRML classes of the ``slicer-core`` wheel (skipped where it is missing)."""

from __future__ import annotations

import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_FOLDER = REPOSITORY / "TorchEsegeta"
# Inside Slicer the module folder is on sys.path; the scene helpers live with the glue tests
# (their fixtures, shared with them, are in Testing/conftest.py).
sys.path.insert(0, str(MODULE_FOLDER))
sys.path.insert(0, str(REPOSITORY / "Testing" / "mrml"))
