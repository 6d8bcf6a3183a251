"""The Methods and Evaluation sections, generated from the engine's registries.

Which methods and metrics are offered, and which widget edits each declared parameter, are
pure functions of the registries' ``describe()`` output (tested without Slicer); only
:func:`buildForm` and :func:`readForm` touch Qt, and import it when called.
"""

from __future__ import annotations

import json
import math
from typing import Any

AUTOMATIC_LAYER_LABEL = "(automatic)"
# Spin boxes need finite limits; Qt's own int limits, and a wide float range.
_INT_LIMIT = 2**31 - 1
_FLOAT_LIMIT = 1e9


def methodDescriptions() -> list[dict[str, Any]]:
    """``describe()`` of every registered method, read now (the catalog grows)."""
    from TorchEsegetaLib.methods import REGISTRY

    return [cls.describe() for cls in REGISTRY.values()]


def metricDescriptions() -> list[dict[str, Any]]:
    """``describe()`` of every registered metric; empty while the engine has no evaluation."""
    try:
        from TorchEsegetaLib import metrics
    except ImportError:
        return []
    registry = getattr(metrics, "REGISTRY", None)
    if not registry:
        return []
    return [_describe(entry) for entry in registry.values()]


def evaluationAvailable() -> bool:
    """Whether the Evaluation section can be offered: the engine's metric registry loads."""
    return bool(metricDescriptions())


def offeredMethods(descriptions: list[dict[str, Any]], layerNames: list[str] | None) -> list[dict]:
    """The methods that fit the model, in registry order.

    Args:
        descriptions: ``describe()`` of each method.
        layerNames: the model's layers in execution order; None while the model is not
            loaded yet (layer methods are offered, with the automatic layer), [] when the model
            hides its layers (TorchScript): layer methods are left out.
    """
    return [
        description
        for description in descriptions
        if not (description.get("needs_layer") and layerNames is not None and not layerNames)
    ]


def itemToolTip(description: dict[str, Any]) -> str:
    """A checkable item's tooltip: what the method or metric does, sign or direction, cost, reference."""
    lines = [description.get("summary", "")]
    if "signed" in description:
        lines.append(
            "Signed map (blue: against, red: for the target)."
            if description["signed"]
            else "Unsigned map (brighter: more important)."
        )
    if description.get("direction") in ("higher", "lower"):
        lines.append(f"{description['direction'].capitalize()} is better.")
    for key, title in (("cost", "Cost"), ("reference", "Reference")):
        if description.get(key):
            lines.append(f"{title}: {description[key]}")
    return "\n".join(line for line in lines if line)


def widgetSpec(param: dict[str, Any], layerNames: list[str] | None = None) -> dict[str, Any]:
    """How to edit one declared parameter (a ``Param.to_dict()``): widget class and settings.

    Returns a dict with "name", "label", "toolTip", "widget" (QSpinBox, QDoubleSpinBox,
    QCheckBox, QComboBox or QLineEdit), "default", and per widget: "minimum"/"maximum"
    (+ "decimals"/"singleStep" for floats), or "items" (values) and "itemLabels".
    """
    kind, default = param["type"], param.get("default")
    spec: dict[str, Any] = {
        "name": param["name"],
        "label": param["name"].replace("_", " ").capitalize(),
        "toolTip": param.get("help", ""),
        "default": default,
    }
    if kind == "int":
        spec.update(
            widget="QSpinBox",
            minimum=int(_bound(param.get("minimum"), -_INT_LIMIT)),
            maximum=int(_bound(param.get("maximum"), _INT_LIMIT)),
        )
    elif kind == "float":
        minimum = _bound(param.get("minimum"), -_FLOAT_LIMIT)
        maximum = _bound(param.get("maximum"), _FLOAT_LIMIT)
        spec.update(
            widget="QDoubleSpinBox",
            minimum=minimum,
            maximum=maximum,
            decimals=_decimals(default, minimum),
            singleStep=_singleStep(default),
        )
    elif kind == "bool":
        spec.update(widget="QCheckBox")
    elif kind == "choice":
        choices = list(param.get("choices") or [])
        spec.update(widget="QComboBox", items=choices, itemLabels=list(choices))
    elif param["name"] == "layer" and layerNames:
        # A layer is picked from the model, never typed: "" lets the method choose.
        spec.update(
            widget="QComboBox",
            items=["", *layerNames],
            itemLabels=[AUTOMATIC_LAYER_LABEL, *layerNames],
        )
    else:
        spec.update(widget="QLineEdit")
    return spec


def formSpecs(description: dict[str, Any], layerNames: list[str] | None = None) -> list[dict]:
    """One :func:`widgetSpec` per declared parameter of a method or metric."""
    return [widgetSpec(param, layerNames) for param in description.get("params", [])]


def mergedValues(specs: list[dict[str, Any]], saved: dict[str, Any] | None) -> dict[str, Any]:
    """Each parameter's value to show: the saved one when still valid for its widget, else the default."""
    saved = saved or {}
    values = {}
    for spec in specs:
        value = saved.get(spec["name"], spec["default"])
        if spec["widget"] == "QComboBox" and value not in spec["items"]:
            value = spec["default"] if spec["default"] in spec["items"] else spec["items"][0]
        values[spec["name"]] = value
    return values


def parameterForm(formLayout, description: dict | None, layerNames, savedJson: str) -> dict:
    """Rebuild ``formLayout`` for one method or metric with its saved values (``savedJson``:
    every entry's values, by name).

    Returns ``{"name", "specs", "widgets"}`` for :func:`savedWithForm`.
    """
    while formLayout.rowCount():
        formLayout.removeRow(0)
    if description is None:
        return {"name": None, "specs": [], "widgets": {}}
    specs = formSpecs(description, layerNames)
    saved = json.loads(savedJson or "{}").get(description["name"])
    widgets = buildForm(formLayout, specs, mergedValues(specs, saved))
    return {"name": description["name"], "specs": specs, "widgets": widgets}


def savedWithForm(form: dict, savedJson: str) -> str:
    """``savedJson`` (every method's values) updated with the values of ``form``."""
    saved = json.loads(savedJson or "{}")
    if form and form.get("name"):
        saved[form["name"]] = readForm(form["widgets"], form["specs"])
    return json.dumps(saved)


def buildForm(formLayout, specs: list[dict[str, Any]], values: dict[str, Any]) -> dict:
    """Fill a QFormLayout with one widget per spec; returns ``{name: widget}``."""
    import qt

    widgets = {}
    for spec in specs:
        value = values.get(spec["name"], spec["default"])
        kind = spec["widget"]
        if kind == "QSpinBox":
            widget = qt.QSpinBox()
            widget.setRange(spec["minimum"], spec["maximum"])
            widget.setValue(int(value))
        elif kind == "QDoubleSpinBox":
            widget = qt.QDoubleSpinBox()
            widget.setDecimals(spec["decimals"])
            widget.setRange(spec["minimum"], spec["maximum"])
            widget.setSingleStep(spec["singleStep"])
            widget.setValue(float(value))
        elif kind == "QCheckBox":
            widget = qt.QCheckBox()
            widget.setChecked(bool(value))
        elif kind == "QComboBox":
            widget = qt.QComboBox()
            for label in spec["itemLabels"]:
                widget.addItem(label)
            widget.setCurrentIndex(spec["items"].index(value))
        else:
            widget = qt.QLineEdit()
            widget.setText("" if value is None else str(value))
        widget.setToolTip(spec["toolTip"])
        widget.setObjectName(f"param_{spec['name']}")
        formLayout.addRow(spec["label"], widget)
        widgets[spec["name"]] = widget
    return widgets


def readForm(widgets: dict, specs: list[dict[str, Any]]) -> dict[str, Any]:
    """The values the user set in a form built by :func:`buildForm`."""
    values = {}
    for spec in specs:
        widget = widgets[spec["name"]]
        kind = spec["widget"]
        if kind in ("QSpinBox", "QDoubleSpinBox"):
            values[spec["name"]] = widget.value
        elif kind == "QCheckBox":
            values[spec["name"]] = bool(widget.checked)
        elif kind == "QComboBox":
            values[spec["name"]] = spec["items"][widget.currentIndex]
        else:
            values[spec["name"]] = widget.text
    return values


def changedSignal(spec: dict[str, Any]) -> str:
    """The PythonQt signal by which the widget of ``spec`` tells it changed."""
    return {
        "QSpinBox": "valueChanged(int)",
        "QDoubleSpinBox": "valueChanged(double)",
        "QCheckBox": "toggled(bool)",
        "QComboBox": "currentIndexChanged(int)",
    }.get(spec["widget"], "textChanged(QString)")


def _describe(entry: Any) -> dict[str, Any]:
    return entry.describe() if hasattr(entry, "describe") else dict(entry)


def _bound(value: Any, fallback: float) -> float:
    return fallback if value is None else float(value)


def _decimals(default: Any, minimum: float) -> int:
    """Enough decimals to show the default and the smallest allowed positive step."""
    smallest = min(
        (abs(v) for v in (default, minimum) if isinstance(v, (int, float)) and v),
        default=1.0,
    )
    return max(2, min(6, 1 - math.floor(math.log10(smallest)))) if smallest < 1 else 2


def _singleStep(default: Any) -> float:
    if isinstance(default, (int, float)) and default:
        return float(10 ** math.floor(math.log10(abs(default))))
    return 0.1
