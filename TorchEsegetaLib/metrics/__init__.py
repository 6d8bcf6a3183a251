"""Evaluation metrics by name: ``create_metric("deletion", {"steps": 10})``; see ``torchesegeta metrics``.

May import: :mod:`TorchEsegetaLib.methods` and what it may import.
"""

from . import localisation, ordering, perturbation, randomisation  # noqa: F401  (registers them)
from .base import (
    REGISTRY,
    Case,
    Metric,
    MetricSpec,
    Score,
    Subject,
    get_metric,
    metric_specs,
    ordered,
    register,
)
from .randomisation import spearman, ssim3d


def create_metric(name: str, params: dict | None = None) -> Metric:
    return REGISTRY.create(name, params)


__all__ = [
    "REGISTRY",
    "Case",
    "Metric",
    "MetricSpec",
    "Score",
    "Subject",
    "create_metric",
    "get_metric",
    "metric_specs",
    "ordered",
    "register",
    "spearman",
    "ssim3d",
]
