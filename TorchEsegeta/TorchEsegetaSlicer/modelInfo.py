"""What the panel knows about its model: the card (channels, classes) and the layers."""

from __future__ import annotations

import json
from typing import Any

# Side of the probe input used to trace the layers: small, but divisible as the model needs.
_PROBE_SIDE = 16


class ModelCache:
    """Models loaded by the panel, by reference, with their layer names (loading is slow)."""

    def __init__(self) -> None:
        self._models: dict[str, tuple[Any, list[str]]] = {}

    def load(self, reference: dict[str, Any]):
        """The loaded model of ``reference`` (loaded once)."""
        from .consoleApi import loadedModel

        key = _key(reference)
        if key not in self._models:
            loaded = loadedModel(reference)
            self._models[key] = (loaded, layerNames(loaded))
        return self._models[key][0]

    def card(self, reference: dict[str, Any] | None):
        """The model card: the demo's is known without torch, others once loaded; else None."""
        if reference is None:
            return None
        cached = self._models.get(_key(reference))
        if cached:
            return cached[0].card
        return demoCard() if reference.get("kind") == "demo" else None

    def state(self, reference: dict[str, Any] | None) -> tuple[str | None, bool]:
        """What the panel shows about the model depends on this: (reference, loaded yet)."""
        if reference is None:
            return None, False
        return _key(reference), _key(reference) in self._models

    def layers(self, reference: dict[str, Any] | None) -> list[str] | None:
        """The model's layers once loaded ([] when it hides them); None before."""
        cached = self._models.get(_key(reference)) if reference is not None else None
        return cached[1] if cached else None


def classChoices(card) -> dict[str, str]:
    """The Target section's classes: ``{label: value}`` ("" lets the engine pick)."""
    if card is None:
        return {"(first foreground class)": ""}
    return {name: name for name in card.class_names}


def defaultClass(card) -> str:
    """The class the engine explains by default (the first foreground class)."""
    from TorchEsegetaLib.targets.bound import default_class

    return card.class_names[default_class(card)] if card else ""


def demoCard():
    """The demo model's card, without loading torch."""
    from TorchEsegetaLib.models.demo import demo_card

    return demo_card()


def layerNames(loaded: Any) -> list[str]:
    """The model's layers in execution order ([] when the model hides them, e.g. TorchScript)."""
    from TorchEsegetaLib.methods import trace_layers
    from TorchEsegetaLib.methods.layer import blank_input

    forward, probe, _ = blank_input(loaded.network, loaded.card, _PROBE_SIDE)
    return [layer["name"] for layer in trace_layers(forward, probe)]


def _key(reference: dict[str, Any]) -> str:
    return json.dumps(reference, sort_keys=True)
