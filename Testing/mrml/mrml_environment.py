"""A minimal Slicer environment on the real MRML classes of the ``slicer-core`` wheel.

The application is not available here, so each test gets what the app would have built: a
scene, an application logic and the module logics the glue relies on (see SLICER_NOTES.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTING_FOLDER = Path(__file__).resolve().parents[1]
# Inside Slicer the module folder is on sys.path; make the glue importable the same way.
sys.path.insert(0, str(_TESTING_FOLDER.parent / "TorchEsegeta"))


def _importSlicerCore():
    """Import slicer-core's ``slicer`` package, or skip the importing test module."""
    module = pytest.importorskip("slicer", reason="the MRML glue tests need the slicer-core wheel")
    if not hasattr(module, "vtkMRMLScene"):
        pytest.skip("the installed `slicer` package is not slicer-core", allow_module_level=True)
    return module


# Import this module before anything that imports slicer (TorchEsegetaSlicer does).
slicer = _importSlicerCore()


def makeScene(cacheFolder):
    """A new scene with the logics registered, the default colours added, and set as
    ``slicer.mrmlScene``. Returns (scene, {module name: logic}).

    ``cacheFolder`` plays the application's cache: reading a .mrb unpacks it there.
    """
    from TorchEsegetaSlicer.sceneSetup import newScene

    return newScene(cacheFolder)
