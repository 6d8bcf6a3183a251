"""Static checks of the panel: the .ui, the module code that uses it, and the parameter node."""

from __future__ import annotations

import ast
import re

import pytest
from moduleFiles import MODULE_FOLDER
from uiLoading import childWidgets, loadUi, parameterBindings, sceneConnections, widgetClasses

MODULE_FILE = MODULE_FOLDER / "TorchEsegeta.py"
# The module's widget is the panel mixin of panelWidget.py; its state is parameterNode.py's wrapper.
PANEL_FILE = MODULE_FOLDER / "TorchEsegetaSlicer" / "panelWidget.py"
PARAMETER_FILE = MODULE_FOLDER / "TorchEsegetaSlicer" / "parameterNode.py"
SOURCES = [MODULE_FILE, *sorted((MODULE_FOLDER / "TorchEsegetaSlicer").glob("*.py"))]
WRAPPER = "TorchEsegetaParameterNode"
# Which .ui classes Slicer's GUI connectors accept for each kind of field (slicer/parameterNodeWrapper/guiConnectors.py).
CONNECTABLE = {
    "node": {"qMRMLNodeComboBox"},
    "choice": {"QComboBox"},
    "str": {"QLineEdit"},
    "bool": {"QCheckBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "int": {"QSpinBox"},
    "path": {"ctkPathLineEdit", "ctkDirectoryButton"},
}


def classNamed(name: str, path=MODULE_FILE) -> ast.ClassDef:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def parameterFields() -> dict[str, tuple[str, ast.expr | None]]:
    """``{field: (annotation source, default)}`` of the parameter node wrapper class."""
    wrapper = classNamed(WRAPPER, PARAMETER_FILE)
    assert any(ast.unparse(d) == "parameterNodeWrapper" for d in wrapper.decorator_list)
    return {
        node.target.id: (ast.unparse(node.annotation), node.value)
        for node in wrapper.body
        if isinstance(node, ast.AnnAssign)
    }


def fieldKind(annotation: str) -> str:
    if annotation.startswith("vtkMRML"):
        return "node"
    if "Choice(" in annotation:
        return "choice"
    if annotation.startswith("pathlib.Path"):
        return "path"
    match = re.match(r"(?:Annotated\[)?(str|bool|float|int)\b", annotation)
    return match.group(1) if match else annotation


@pytest.fixture(scope="module")
def uiWidgets():
    pytest.importorskip("PySide6.QtUiTools", reason="loading the .ui needs PySide6-Essentials")
    root = loadUi()
    widgets = childWidgets(root)
    yield widgets
    root.deleteLater()


def test_every_widget_the_module_code_uses_exists(uiWidgets):
    used = {
        name
        for source in SOURCES
        # self.ui.NAME in the module, ui.NAME in the helpers that receive the panel's ui
        for name in re.findall(r"\bui\.([A-Za-z_]\w*)", source.read_text(encoding="utf-8"))
    }
    assert len(used) > 20
    assert sorted(used - set(uiWidgets)) == []


def test_every_binding_names_a_field_of_the_parameter_node(uiWidgets):
    bindings = parameterBindings()
    fields = parameterFields()
    assert set(bindings) <= set(uiWidgets)
    assert sorted(set(bindings.values()) - set(fields)) == []
    bound = list(bindings.values())
    assert len(bound) == len(set(bound)), "two widgets bound to one field"
    # The widget's runtime property agrees with the file (the name survives loading).
    for widgetName, field in bindings.items():
        assert uiWidgets[widgetName].property("SlicerParameterName") == field


def test_bound_widgets_are_of_a_class_slicer_can_connect_to_the_field():
    classes = widgetClasses()
    fields = parameterFields()
    for widgetName, field in parameterBindings().items():
        kind = fieldKind(fields[field][0])
        assert classes[widgetName] in CONNECTABLE[kind], (widgetName, field, kind)


def test_choice_defaults_are_among_the_choices():
    from TorchEsegetaSlicer import jobBuilder

    for field, (annotation, default) in parameterFields().items():
        match = re.search(r"Choice\((.*)\)\]$", annotation)
        if match:
            choices = eval(match.group(1), vars(jobBuilder))  # noqa: S307 (our own constants)
            assert ast.literal_eval(default) in choices, field


def test_every_mrml_widget_receives_the_scene():
    classes = widgetClasses()
    mrmlWidgets = {
        name for name, cls in classes.items() if cls.startswith("qMRML") and name != "TorchEsegeta"
    }
    assert mrmlWidgets and mrmlWidgets <= sceneConnections()


def test_every_user_action_is_wrapped_in_try_with_error_display():
    assert "PanelWidget" in [ast.unparse(b) for b in classNamed("TorchEsegetaWidget").bases]
    widget = classNamed("PanelWidget", PANEL_FILE)
    handlers = [
        node
        for node in widget.body
        if isinstance(node, ast.FunctionDef)
        and node.name.startswith("on")
        and not node.name.startswith("onScene")
    ]
    assert len(handlers) >= 10
    for handler in handlers:
        first = handler.body[0]
        assert isinstance(first, ast.With), handler.name
        call = first.items[0].context_expr
        assert ast.unparse(call.func) == "slicer.util.tryWithErrorDisplay", handler.name


def test_module_has_the_scripted_module_parts():
    bases = {
        name: [ast.unparse(b) for b in classNamed(name).bases]
        for name in ("TorchEsegeta", "TorchEsegetaWidget", "TorchEsegetaLogic", "TorchEsegetaTest")
    }
    assert bases["TorchEsegeta"] == ["ScriptedLoadableModule"]
    assert bases["TorchEsegetaWidget"][0] == "ScriptedLoadableModuleWidget"
    assert bases["TorchEsegetaLogic"] == ["ScriptedLoadableModuleLogic"]
    assert bases["TorchEsegetaTest"] == ["ScriptedLoadableModuleTest"]
    logicMethods = {
        n.name for n in classNamed("TorchEsegetaLogic").body if isinstance(n, ast.FunctionDef)
    }
    assert {"explain", "getParameterNode", "startRun", "finishRun"} <= logicMethods
    text = MODULE_FILE.read_text(encoding="utf-8")
    assert "Applied Sciences 12(4):1834" in text and "10.3390/app12041834" in text
    assert 'resourcePath("UI/TorchEsegeta.ui")' in text


def test_panel_selectors_cover_the_channels_the_panel_offers(uiWidgets):
    from TorchEsegetaSlicer.panelView import MAX_INPUT_CHANNELS

    for index in range(MAX_INPUT_CHANNELS):
        assert f"inputVolume{index}Selector" in uiWidgets
        assert f"inputVolume{index}" in parameterFields()


def test_trusting_the_model_folder_is_an_unticked_checkbox_with_a_warning(uiWidgets):
    """Consent to a model folder's code (docs/safety.md) is the user's explicit act: a checkbox
    bound to the parameter node, off by default, and a warning beside it."""
    assert parameterBindings()["trustModelCheckBox"] == "trustModel"
    annotation, default = parameterFields()["trustModel"]
    assert annotation == "bool" and ast.literal_eval(default) is False
    assert not uiWidgets["trustModelCheckBox"].isChecked()
    warning = uiWidgets["trustModelWarningLabel"].text()
    assert "source you trust" in warning and "permissions" in warning


def test_panel_renders_offscreen_for_the_documentation(uiWidgets, tmp_path):
    from panelScreenshot import renderPanel
    from PIL import Image

    with Image.open(renderPanel(tmp_path / "panel.png")) as image:
        width, height = image.size
    assert width == 420 and height > 800


def test_no_two_widgets_of_a_grid_or_form_share_a_cell():
    import xml.etree.ElementTree as ElementTree

    from uiLoading import UI_FILE

    for layout in ElementTree.parse(UI_FILE).iter("layout"):
        taken: dict[tuple[int, int], str] = {}
        for item in layout.findall("item"):
            if item.get("row") is None:
                continue
            child = item.find("widget") if item.find("widget") is not None else item.find("layout")
            row, column = int(item.get("row")), int(item.get("column", 0))
            for offset in range(int(item.get("colspan", 1))):
                cell = (row, column + offset)
                assert cell not in taken, (
                    layout.get("name"),
                    cell,
                    taken.get(cell),
                    child.get("name"),
                )
                taken[cell] = child.get("name")
