"""Attribution methods by name: ``create_method("integrated_gradients", {"n_steps": 64})``."""

from . import cam, coalitions, gradient, layer, layer_reference, perturbation, reference, relevance  # noqa: F401  (registers the methods)
from .base import (
    REGISTRY,
    Method,
    Param,
    ScoreModel,
    create_method,
    get_method,
    input_gradients,
    register,
)
from .layer import default_layer, list_layers, trace_layers

__all__ = [
    "REGISTRY",
    "Method",
    "Param",
    "ScoreModel",
    "create_method",
    "default_layer",
    "get_method",
    "input_gradients",
    "list_layers",
    "trace_layers",
    "register",
]
