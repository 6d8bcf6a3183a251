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
    "explain": "runs.api",
    "run_job": "runs.runner",
    "explain_volume": "runs.runner",
    "ExplainResult": "runs.case",
    "Job": "runs.job",
    "MethodSpec": "runs.job",
    "TargetSpec": "targets.spec",
    "ModelCard": "models.card",
    "Geometry": "io.volume",
    "Volume": "io.volume",
    "read_volume": "io.images",
    "read_channels": "io.images",
    "write_volume": "io.images",
    "load_model": "models.loading",
    "CancelToken": "engine.context",
    "UserInputError": "errors",
    "run_cohort": "cohort",
    "evaluate_result": "runs.evaluation",
    "evaluate_run": "runs.evaluation",
    "write_report": "runs.report",
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
