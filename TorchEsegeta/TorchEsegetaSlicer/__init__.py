"""Slicer side of TorchEsegeta: MRML glue, and the small parts the module's panel is built from.

The MRML glue functions take the scene (or a node) explicitly and use only MRML classes and
logics that need no application, so the same code runs inside Slicer and, in CI, on the
``slicer-core`` wheel. Names are resolved on first use, so the pure-Python parts
(``jobBuilder``, ``process``, ``methodForms``, ``dependencies``) import without ``slicer``.
The panel (``panelWidget``, ``parameterNode``) needs the application.
"""

from importlib import import_module

from . import enginePath

enginePath.ensureEngineImportable()

_LAZY = {
    "addResultNodes": "resultNodes",
    "arrayAndGeometryFromVolumeNode": "volumeNodes",
    "divergingColorNode": "display",
    "explainNodes": "consoleApi",
    "geometryFromVolumeNode": "volumeNodes",
    "ijkToRasArray": "volumeNodes",
    "labelmapFromSegment": "segmentations",
    "loadRunFolder": "runFolder",
    "loadSceneBundle": "sceneExport",
    "newScene": "sceneSetup",
    "plotChartFromCurves": "tables",
    "saveSceneBundle": "sceneExport",
    "segmentationNodeFromLabelmap": "segmentations",
    "sequentialColorNode": "display",
    "showAsForeground": "display",
    "showColorLegend": "display",
    "styleAttributionNode": "display",
    "styleUncertaintyNode": "display",
    "tableNodeFromMetrics": "tables",
    "targetFromNode": "targetNodes",
    "uncertaintyColorNode": "display",
    "volumeNodeFromArray": "volumeNodes",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
