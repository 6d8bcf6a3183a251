"""The module's .ui loaded offscreen with PySide6, and what its XML says.

Slicer's own classes (qMRMLNodeComboBox, ctkCollapsibleButton...) are unknown to PySide6: they
fall back to the base class named in the .ui's <customwidgets>, which is enough to find every
widget by name. Their real class is read from the XML.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from moduleFiles import MODULE_FOLDER

UI_FILE = MODULE_FOLDER / "Resources" / "UI" / "TorchEsegeta.ui"


def application():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


def loadUi(path: Path = UI_FILE):
    """The .ui's top-level widget (PySide6)."""
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader

    application()
    file = QFile(str(path))
    if not file.open(QFile.ReadOnly):
        raise OSError(f"cannot open {path}")
    try:
        widget = QUiLoader().load(file)
    finally:
        file.close()
    if widget is None:
        raise RuntimeError(f"PySide6 could not load {path}")
    return widget


def childWidgets(root) -> dict:
    """``{objectName: widget}`` of every named widget under ``root`` (as childWidgetVariables)."""
    from PySide6.QtWidgets import QWidget

    return {child.objectName(): child for child in root.findChildren(QWidget) if child.objectName()}


def widgetClasses(path: Path = UI_FILE) -> dict[str, str]:
    """``{objectName: class}`` as written in the .ui (Slicer classes included)."""
    root = ElementTree.parse(path).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def parameterBindings(path: Path = UI_FILE) -> dict[str, str]:
    """``{objectName: SlicerParameterName}`` of the widgets bound to the parameter node."""
    bindings = {}
    for widget in ElementTree.parse(path).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings[widget.get("name")] = prop.findtext("string")
    return bindings


def sceneConnections(path: Path = UI_FILE) -> set[str]:
    """Receivers of the top-level widget's mrmlSceneChanged(vtkMRMLScene*) signal."""
    root = ElementTree.parse(path).getroot()
    return {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
