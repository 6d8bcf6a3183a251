"""The Methods and Evaluation sections are generated from the engine's registries."""

from __future__ import annotations

import json
import sys

import pytest
from TorchEsegetaSlicer import methodForms
from TorchEsegetaSlicer.methodForms import (
    formSpecs,
    mergedValues,
    methodDescriptions,
    offeredMethods,
    widgetSpec,
)

from TorchEsegetaLib.methods import REGISTRY


def test_offered_methods_are_the_registry_read_at_call_time(monkeypatch):
    assert [d["name"] for d in methodDescriptions()] == list(REGISTRY)
    layered = [d["name"] for d in methodDescriptions() if d["needs_layer"]]
    assert layered, "the registry should hold at least one layer method"
    # Not loaded yet: every method, layer methods with their automatic layer.
    assert [d["name"] for d in offeredMethods(methodDescriptions(), None)] == list(REGISTRY)
    # A model that hides its layers (TorchScript) cannot run layer methods.
    hidden = [d["name"] for d in offeredMethods(methodDescriptions(), [])]
    assert hidden == [name for name in REGISTRY if name not in layered]

    class NewMethod:
        @staticmethod
        def describe():
            return {"name": "brand_new", "title": "Brand new", "needs_layer": False, "params": []}

    monkeypatch.setitem(REGISTRY, "brand_new", NewMethod)
    assert "brand_new" in [d["name"] for d in offeredMethods(methodDescriptions(), [])]


def test_metrics_come_from_the_metric_registry_or_are_hidden(monkeypatch):
    try:
        from TorchEsegetaLib import metrics
    except ImportError:
        assert methodForms.metricDescriptions() == []
        assert not methodForms.evaluationAvailable()
        metrics = None
    if metrics is not None and getattr(metrics, "REGISTRY", None):
        assert [d["name"] for d in methodForms.metricDescriptions()] == list(metrics.REGISTRY)

    class Infidelity:
        @staticmethod
        def describe():
            return {"name": "infidelity", "title": "Infidelity", "params": []}

    fake = type(sys)("TorchEsegetaLib.metrics")
    fake.REGISTRY = {"infidelity": Infidelity}
    monkeypatch.setitem(sys.modules, "TorchEsegetaLib.metrics", fake)
    import TorchEsegetaLib

    monkeypatch.setattr(TorchEsegetaLib, "metrics", fake, raising=False)
    assert [d["name"] for d in methodForms.metricDescriptions()] == ["infidelity"]
    assert methodForms.evaluationAvailable()
    fake.REGISTRY = {}
    assert not methodForms.evaluationAvailable()


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        (
            {
                "name": "n_steps",
                "type": "int",
                "default": 32,
                "help": "h",
                "minimum": 1,
                "maximum": 4096,
            },
            {"widget": "QSpinBox", "minimum": 1, "maximum": 4096, "label": "N steps"},
        ),
        (
            {"name": "blur_sigma", "type": "float", "default": 4.0, "help": "h", "minimum": 0.1},
            {"widget": "QDoubleSpinBox", "minimum": 0.1, "maximum": 1e9, "decimals": 2},
        ),
        (
            {"name": "noise_level", "type": "float", "default": 0.005, "help": "h"},
            {"widget": "QDoubleSpinBox", "decimals": 4, "singleStep": 0.001},
        ),
        ({"name": "abs", "type": "bool", "default": True, "help": "h"}, {"widget": "QCheckBox"}),
        (
            {
                "name": "baseline",
                "type": "choice",
                "default": "zero",
                "help": "h",
                "choices": ["zero", "min"],
            },
            {"widget": "QComboBox", "items": ["zero", "min"]},
        ),
        ({"name": "layer", "type": "str", "default": "", "help": "h"}, {"widget": "QLineEdit"}),
    ],
)
def test_each_parameter_kind_gets_its_widget_with_default_and_help(param, expected):
    spec = widgetSpec(param)
    assert spec["default"] == param["default"] and spec["toolTip"] == param["help"]
    assert expected.items() <= spec.items()


def test_layer_parameter_offers_the_model_layers():
    spec = widgetSpec({"name": "layer", "type": "str", "default": "", "help": "h"}, ["enc", "dec"])
    assert spec["widget"] == "QComboBox"
    assert spec["items"] == ["", "enc", "dec"]
    assert spec["itemLabels"][0] == methodForms.AUTOMATIC_LAYER_LABEL


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_default_fits_its_widget(name):
    description = REGISTRY[name].describe()
    for spec in formSpecs(description, ["layer.a"]):
        default = spec["default"]
        if spec["widget"] in ("QSpinBox", "QDoubleSpinBox"):
            assert spec["minimum"] <= default <= spec["maximum"]
        elif spec["widget"] == "QComboBox":
            assert default in spec["items"]
    assert methodForms.itemToolTip(description).startswith(description["summary"])


def test_saved_values_are_kept_only_when_still_valid():
    specs = formSpecs(REGISTRY["integrated_gradients"].describe())
    values = mergedValues(specs, {"n_steps": 8, "method": "no_longer_offered"})
    assert values["n_steps"] == 8
    assert values["method"] == "gausslegendre"
    assert values["baseline"] == "zero"


def test_forms_build_and_read_back_with_qt(monkeypatch):
    QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="needs PySide6-Essentials")
    from uiLoading import application

    application()
    # The form code uses Qt's setters, which PythonQt (Slicer) and PySide6 share.
    monkeypatch.setitem(sys.modules, "qt", QtWidgets)
    host = QtWidgets.QWidget()
    layout = QtWidgets.QFormLayout(host)
    form = methodForms.parameterForm(
        layout,
        REGISTRY["integrated_gradients"].describe(),
        None,
        json.dumps({"integrated_gradients": {"n_steps": 7}}),
    )
    widgets = form["widgets"]
    assert layout.rowCount() == len(REGISTRY["integrated_gradients"].params)
    assert isinstance(widgets["n_steps"], QtWidgets.QSpinBox) and widgets["n_steps"].value() == 7
    assert (widgets["n_steps"].minimum(), widgets["n_steps"].maximum()) == (1, 4096)
    assert isinstance(widgets["baseline"], QtWidgets.QComboBox)
    assert widgets["baseline"].currentText() == "zero"
    assert widgets["blur_sigma"].toolTip() == "Sigma in voxels of the blurred baseline."

    gradcam = methodForms.parameterForm(
        layout, REGISTRY["gradcam"].describe(), ["down", "up"], "{}"
    )
    assert layout.rowCount() == len(REGISTRY["gradcam"].params), "the previous rows are removed"
    layer = gradcam["widgets"]["layer"]
    assert [layer.itemText(i) for i in range(layer.count())] == ["(automatic)", "down", "up"]
    assert isinstance(gradcam["widgets"]["relu"], QtWidgets.QCheckBox)
    assert gradcam["widgets"]["relu"].isChecked()
