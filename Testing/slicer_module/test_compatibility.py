"""A Slicer too old for the engine (5.8 and older ship Python 3.9) gets one line, not a traceback;
the files it reads up to that line parse as Python 3.9; the minimum is the one declared."""

from __future__ import annotations

import ast
import importlib.util
import logging
import re
import sys
import types
from types import SimpleNamespace

import pytest
from moduleFiles import MODULE_FOLDER, REPOSITORY
from project import pyproject
from TorchEsegetaSlicer import compatibility
from TorchEsegetaSlicer.compatibility import MINIMUM_PYTHON, MINIMUM_SLICER, pythonProblem


@pytest.mark.parametrize("version", [(3, 9, 10), (3, 6, 7), (2, 7, 18)])
def test_an_older_python_is_one_line_naming_the_slicer_to_install(version):
    message = pythonProblem(version)
    running = ".".join(map(str, version))
    assert message and "\n" not in message
    assert f"3D Slicer {MINIMUM_SLICER} or newer" in message and f"Python {running}" in message


@pytest.mark.parametrize("version", [(3, 10, 0), (3, 12, 10), (3, 13, 1), (4, 0, 0)])
def test_python_3_10_and_newer_pass(version):
    assert pythonProblem(version) is None


def test_the_running_python_is_judged_by_default(monkeypatch):
    assert pythonProblem() is None  # the suite runs on 3.10 or newer
    monkeypatch.setattr(compatibility, "sys", SimpleNamespace(version_info=(3, 9, 10, "final", 0)))
    assert "Python 3.9.10" in pythonProblem()


def test_the_minimum_agrees_with_pyproject_and_the_readme():
    needed = ".".join(map(str, MINIMUM_PYTHON))
    assert pyproject()["project"]["requires-python"].startswith(f">={needed}")
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    assert f"In Slicer ({MINIMUM_SLICER} or newer)" in readme
    # No other Slicer release is named as the minimum anywhere the user reads.
    assert re.findall(r"Slicer \(?(\d+\.\d+) or newer", readme) == [MINIMUM_SLICER]


# What Slicer reads before the check: they must parse, and import, on its Python 3.9.
BEFORE_THE_CHECK = [
    MODULE_FOLDER / "TorchEsegeta.py",
    MODULE_FOLDER / "TorchEsegetaSlicer" / "__init__.py",
    MODULE_FOLDER / "TorchEsegetaSlicer" / "enginePath.py",
    MODULE_FOLDER / "TorchEsegetaSlicer" / "compatibility.py",
]


@pytest.mark.parametrize("path", BEFORE_THE_CHECK, ids=lambda path: path.name)
def test_what_an_old_slicer_reads_first_is_python_3_9_syntax(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def _slicerStandIns() -> dict[str, types.ModuleType]:
    """The app-only modules TorchEsegeta.py imports before its check."""
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    scripted.ScriptedLoadableModule = ScriptedLoadableModule
    scripted.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    scripted.ScriptedLoadableModuleLogic = type("ScriptedLoadableModuleLogic", (), {})
    scripted.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (), {})
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    slicer = types.ModuleType("slicer")
    slicer.i18n, slicer.ScriptedLoadableModule = i18n, scripted
    return {"slicer": slicer, "slicer.i18n": i18n, "slicer.ScriptedLoadableModule": scripted}


def test_the_module_in_an_old_slicer_logs_one_line_and_shows_it(monkeypatch, caplog):
    for name, standIn in _slicerStandIns().items():
        monkeypatch.setitem(sys.modules, name, standIn)
    for name in ("TorchEsegetaSlicer.panelWidget", "TorchEsegetaSlicer.parameterNode"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(compatibility, "sys", SimpleNamespace(version_info=(3, 9, 10, "final", 0)))
    spec = importlib.util.spec_from_file_location("TorchEsegeta", MODULE_FOLDER / "TorchEsegeta.py")
    module = importlib.util.module_from_spec(spec)
    with caplog.at_level(logging.ERROR):
        spec.loader.exec_module(module)
    assert [record.getMessage() for record in caplog.records] == [pythonProblem((3, 9, 10))]
    # The panel, which needs Python 3.10, was not imported; the module's help says why.
    assert "TorchEsegetaSlicer.panelWidget" not in sys.modules
    parent = SimpleNamespace()
    module.TorchEsegeta(parent)
    assert parent.helpText == pythonProblem((3, 9, 10))
    assert parent.title == "TorchEsegeta"
