"""Fixtures for the MRML glue tests (skipped with the test modules where slicer-core is missing)."""

from __future__ import annotations

import pytest


@pytest.fixture
def sceneAndLogics(tmp_path):
    """A fresh scene per test with the Colors/Volumes/Segmentations/SubjectHierarchy logics."""
    from mrml_environment import makeScene

    scene, logics = makeScene(tmp_path / "slicer-cache")
    yield scene, logics
    scene.Clear(True)


@pytest.fixture
def scene(sceneAndLogics):
    return sceneAndLogics[0]
