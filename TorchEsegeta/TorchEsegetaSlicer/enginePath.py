"""Make the engine package (TorchEsegetaLib) importable, wherever the module runs from.

An installed extension ships the engine next to the module's scripts (see CMakeLists.txt);
a source checkout added to Slicer with "Additional module paths" has it one folder up.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

MODULE_FOLDER = Path(__file__).resolve().parents[1]


def engineParentFolder() -> Path | None:
    """The folder holding the TorchEsegetaLib package, or None when it cannot be found."""
    spec = importlib.util.find_spec("TorchEsegetaLib")
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parents[1]
    for candidate in (MODULE_FOLDER, MODULE_FOLDER.parent):
        if (candidate / "TorchEsegetaLib" / "__init__.py").is_file():
            return candidate
    return None


def ensureEngineImportable() -> None:
    """Put the engine's parent folder on sys.path when ``import TorchEsegetaLib`` would fail."""
    if importlib.util.find_spec("TorchEsegetaLib") is not None:
        return
    folder = engineParentFolder()
    if folder is not None:
        sys.path.append(str(folder))
