"""The Slicer module's tests without the Slicer app: pure parts, the .ui, packaging, and the
glue on the real MRML classes of the ``slicer-core`` wheel (skipped where it is missing)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_FOLDER = REPOSITORY / "TorchEsegeta"
# Inside Slicer the module folder is on sys.path; the scene helpers live with the glue tests.
sys.path.insert(0, str(MODULE_FOLDER))
sys.path.insert(0, str(REPOSITORY / "Testing" / "mrml"))


@pytest.fixture
def sceneAndLogics(tmp_path):
    """A fresh slicer-core scene per test with the logics the glue needs."""
    from mrml_environment import makeScene

    scene, logics = makeScene(tmp_path / "slicer-cache")
    yield scene, logics
    scene.Clear(True)


@pytest.fixture
def scene(sceneAndLogics):
    return sceneAndLogics[0]
