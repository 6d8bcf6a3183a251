"""Render the module's panel offscreen with PySide6, filled as for the demo, to a PNG.

    QT_QPA_PLATFORM=offscreen python Testing/slicer_module/panelScreenshot.py docs/panel.png

Slicer's widgets are swapped for the Qt widgets they look like (a node selector for a combo
box, a collapsible section for a group box) so the picture shows what a user sees; the lists
and the parameter form come from the engine's registries through the module's own code.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1] / "TorchEsegeta")]

from uiLoading import UI_FILE, application  # noqa: E402

# Slicer class -> (Qt look-alike, the properties kept; others are Slicer's own)
LOOK_ALIKES = {
    "qMRMLWidget": ("QWidget", set()),
    "ctkCollapsibleButton": ("QGroupBox", {"text"}),
    "qMRMLNodeComboBox": ("QComboBox", {"toolTip"}),
    "qMRMLSegmentSelectorWidget": ("QComboBox", {"toolTip"}),
    "ctkPathLineEdit": ("QLineEdit", {"toolTip"}),
    "ctkDirectoryButton": ("QPushButton", {"toolTip"}),
    "ctkSliderWidget": ("QSlider", {"toolTip"}),
}
DEMO_NODE = "TorchEsegeta demo"


def plainUi(path: Path = UI_FILE) -> bytes:
    """The .ui with Slicer's classes replaced by Qt look-alikes."""
    tree = ElementTree.parse(path)
    root = tree.getroot()
    for widget in root.iter("widget"):
        lookAlike = LOOK_ALIKES.get(widget.get("class"))
        if lookAlike is None:
            continue
        newClass, kept = lookAlike
        for prop in list(widget.findall("property")):
            if prop.get("name") not in kept:
                widget.remove(prop)
            elif newClass == "QGroupBox" and prop.get("name") == "text":
                prop.set("name", "title")
        widget.set("class", newClass)
    for section in ("customwidgets", "connections"):
        for element in root.findall(section):
            root.remove(element)
    return ElementTree.tostring(root)


def renderPanel(output: Path, width: int = 420) -> Path:
    import PySide6.QtWidgets as QtWidgets

    application()
    # The module's form code imports Slicer's `qt`; it only calls setters PySide6 shares.
    added = "qt" not in sys.modules
    sys.modules.setdefault("qt", QtWidgets)
    try:
        return _render(Path(output), width)
    finally:
        if added:
            del sys.modules["qt"]


def _render(output: Path, width: int) -> Path:
    import PySide6.QtWidgets as QtWidgets
    from PySide6.QtCore import QBuffer, QByteArray, Qt
    from PySide6.QtUiTools import QUiLoader
    from TorchEsegetaSlicer import jobBuilder, methodForms, modelInfo

    data = QByteArray(plainUi())  # the buffer only points at it: keep it alive
    buffer = QBuffer(data)
    buffer.open(QBuffer.ReadOnly)
    panel = QUiLoader().load(buffer)
    ui = {w.objectName(): w for w in panel.findChildren(QtWidgets.QWidget)}
    card = modelInfo.demoCard()

    for index in range(4):
        ui[f"inputVolume{index}Selector"].addItem(DEMO_NODE if index == 0 else "None")
        for suffix in ("Label", "Selector"):
            ui[f"inputVolume{index}{suffix}"].setVisible(index < card.in_channels)
    for name in ("modelPath", "network", "networkKwargs"):
        ui[f"{name}Label"].hide()
    for name in ("modelPathLineEdit", "networkLineEdit", "networkKwargsLineEdit"):
        ui[name].hide()
    ui["modelSummaryLabel"].setText(card.summary())
    ui["segmentationSelector"].addItem(f"{DEMO_NODE} segmentation")
    ui["targetClassComboBox"].addItems(card.class_names)
    ui["targetClassComboBox"].setCurrentText("vessel")
    for name in ("Segment", "Roi", "Point"):
        ui[f"target{name}Label"].hide()
        ui[f"target{name}Selector"].hide()
    ui["deviceComboBox"].clear()
    ui["deviceComboBox"].addItems(jobBuilder.deviceChoices(0))

    checked = ("saliency", "integrated_gradients", "gradcam")
    methodList = ui["methodListWidget"]
    offered = methodForms.offeredMethods(methodForms.methodDescriptions(), None)
    for description in offered:
        item = QtWidgets.QListWidgetItem(description["title"])
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
        item.setCheckState(Qt.Checked if description["name"] in checked else Qt.Unchecked)
        item.setToolTip(methodForms.itemToolTip(description))
        methodList.addItem(item)
    methodList.setCurrentRow([d["name"] for d in offered].index("integrated_gradients"))
    methodList.setMaximumHeight(150)
    descriptions = {d["name"]: d for d in methodForms.methodDescriptions()}
    methodForms.parameterForm(
        ui["methodParametersGroupBox"].layout(), descriptions["integrated_gradients"], None, "{}"
    )
    ui["methodParametersGroupBox"].setTitle("Parameters of Integrated Gradients")
    metrics = methodForms.metricDescriptions()
    ui["evaluationCollapsibleButton"].setVisible(methodForms.evaluationAvailable())
    for description in metrics:
        item = QtWidgets.QListWidgetItem(description.get("title") or description["name"])
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
        checkedMetric = description["name"] in ("deletion", "infidelity", "mass_in_target")
        item.setCheckState(Qt.Checked if checkedMetric else Qt.Unchecked)
        ui["metricListWidget"].addItem(item)
    ui["metricListWidget"].setMaximumHeight(120)
    names = [d["name"] for d in metrics]
    if "deletion" in names:
        ui["metricListWidget"].setCurrentRow(names.index("deletion"))
        methodForms.parameterForm(
            ui["metricParametersGroupBox"].layout(), metrics[names.index("deletion")], None, "{}"
        )
        ui["metricParametersGroupBox"].setTitle("Parameters of Deletion AUC")
    else:
        ui["metricParametersGroupBox"].hide()

    ui["timeBudgetSpinBox"].setSpecialValueText("no limit")
    ui["timeBudgetSpinBox"].setSuffix(" s per method")
    ui["outputFolderButton"].setText("Slicer temporary folder")
    ui["opacitySlider"].setOrientation(Qt.Horizontal)
    ui["opacitySlider"].setRange(0, 100)
    ui["opacitySlider"].setValue(50)
    ui["compareCheckBox"].setChecked(True)
    ui["cancelButton"].setEnabled(True)
    ui["progressBar"].setValue(58)
    ui["statusLabel"].setText("integrated_gradients example 1/1 step 14/32")
    ui["logTextEdit"].setPlainText(
        "reading inputs and model\nsegmenting\nsaliency: ok in 0.8 s\n"
        "integrated_gradients: starting\nintegrated_gradients example 1/1 step 14/32"
    )
    ui["logTextEdit"].setMaximumHeight(90)

    panel.resize(width, 10)
    panel.resize(width, panel.sizeHint().height())
    output.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(output)):
        raise RuntimeError(f"could not write {output}")
    panel.deleteLater()
    return output


if __name__ == "__main__":
    from PIL import Image

    path = renderPanel(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/panel.png"))
    # A palette image: a third of the size, no visible difference for flat widgets.
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    print(path)
