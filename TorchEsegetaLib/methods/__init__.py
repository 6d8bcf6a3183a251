"""Attribution methods by name: ``create_method("integrated_gradients", {"n_steps": 64})``.

One small class per method, grouped by mechanism (gradient, layer, perturbation, reference,
relevance), each declaring its parameters. May import: :mod:`TorchEsegetaLib.targets` and what it
may import (models, engine, io, schema, errors).
"""

# The import order is the order in which `torchesegeta methods` and the panel list the methods.
# isort: off
from . import gradient, layer, cam, cam_scores, perturbation, adaptive_occlusion  # noqa: F401
from . import coalitions, features  # noqa: F401
from . import layer_reference, deeplift, shap, relevance  # noqa: F401

# isort: on
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
