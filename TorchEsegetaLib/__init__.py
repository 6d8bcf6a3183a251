"""TorchEsegeta: explain 3D medical image segmentation models.

``import TorchEsegetaLib`` is cheap: torch, MONAI and captum load on first use. The main entry
points are :func:`explain` (Python), :func:`run_job` (a Job into a run folder) and the
``torchesegeta`` command.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "explain": "api",
    "run_job": "runner",
    "explain_volume": "runner",
    "ExplainResult": "case",
    "Job": "job",
    "MethodSpec": "job",
    "TargetSpec": "targets",
    "ModelCard": "card",
    "Geometry": "volume",
    "Volume": "volume",
    "read_volume": "io",
    "read_channels": "io",
    "write_volume": "io",
    "load_model": "models",
    "CancelToken": "engine",
    "UserInputError": "errors",
    "run_cohort": "cohort",
    "evaluate_result": "evaluation",
    "evaluate_run": "evaluation",
    "write_report": "report",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
