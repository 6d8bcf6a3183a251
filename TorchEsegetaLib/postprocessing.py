"""From the network's output to the probabilities and the labelmap on the input grid.

Without postprocessing steps in the card: the card's activation, back to the input grid, then
argmax (mutually exclusive classes) or a 0.5 threshold. A bundle's postprocessing is followed
step by step, in its order, by MONAI's own transforms (Activations, AsDiscrete,
KeepLargestConnectedComponent, ...), with its ``Invertd`` where the bundle has it (nearest
neighbour or the transforms' own interpolation, as its ``nearest_interp`` says).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .card import ModelCard
from .errors import UserInputError

#: The MONAI transforms a postprocessing step may name.
TRANSFORMS = (
    "Activations",
    "AsDiscrete",
    "KeepLargestConnectedComponent",
    "FillHoles",
    "LabelFilter",
)
#: The ones MONAI runs with scikit-image.
_SCIKIT_IMAGE = {"KeepLargestConnectedComponent"}
#: The ones whose output is a labelmap (the others keep probabilities or labels as they are).
_DISCRETE = {"AsDiscrete"}


def probabilities_from_logits(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """Softmax over channels, elementwise sigmoid, or the outputs as they are ("none")."""
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    return torch.sigmoid(logits) if activation == "sigmoid" else logits


def labelmap_from_probabilities(probabilities: np.ndarray, activation: str) -> np.ndarray:
    """(K, *S) probabilities -> (*S) labels (uint8, uint16 beyond 256 classes): argmax for
    mutually exclusive classes, else the highest channel above 0.5 (0 where none is)."""
    dtype = np.uint8 if probabilities.shape[0] <= 256 else np.uint16
    if activation == "softmax" or (activation == "none" and probabilities.shape[0] > 1):
        return np.argmax(probabilities, axis=0).astype(dtype)
    above = probabilities > 0.5
    highest = probabilities.shape[0] - 1 - np.argmax(above[::-1], axis=0)
    return np.where(above.any(axis=0), highest, 0).astype(dtype)


def segmentation_outputs(
    logits: torch.Tensor, card: ModelCard, grid: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(K, *input shape) float32 probabilities and the (*input shape) labelmap from the
    (1, K, *model shape) network output."""
    probabilities = probabilities_from_logits(logits, card.activation)
    if not card.postprocessing:
        restored = grid.to_input_grid(probabilities)[0].cpu().numpy().astype(np.float32)
        return restored, labelmap_from_probabilities(restored, card.activation)
    invert = next((s for s in card.postprocessing if s["kind"] == "invert"), None)
    mode = "nearest" if invert is not None and invert.get("nearest", True) else "trilinear"
    restored = grid.to_input_grid(probabilities, mode)[0].cpu().numpy().astype(np.float32)
    return restored, _follow(logits[0].float(), card, grid)


def _follow(pred: torch.Tensor, card: ModelCard, grid: Any) -> np.ndarray:
    """The labelmap a bundle's postprocessing makes of one (K, *S) prediction."""
    discrete, inverted = False, False
    for step in card.postprocessing:
        if step["kind"] == "invert":
            mode = "nearest" if step.get("nearest", True) else "trilinear"
            pred, inverted = grid.to_input_grid(pred[None], mode)[0], True
            continue
        pred = make_transform(step)(pred)
        pred = pred.as_tensor() if hasattr(pred, "as_tensor") else torch.as_tensor(pred)
        discrete = discrete or step["name"] in _DISCRETE
    if not inverted:
        pred = grid.to_input_grid(pred[None].float(), "nearest" if discrete else "trilinear")[0]
    values = pred.float().cpu().numpy()
    dtype = np.uint8 if card.out_channels <= 256 else np.uint16
    if not discrete:
        return labelmap_from_probabilities(values, card.activation)
    if values.shape[0] == 1:
        return np.rint(values[0]).clip(0, None).astype(dtype)
    if card.exclusive:
        return np.argmax(values, axis=0).astype(dtype)
    return labelmap_from_probabilities(values, "sigmoid")


def make_transform(step: dict[str, Any]) -> Any:
    """The MONAI array transform a postprocessing step names."""
    import monai.transforms as transforms

    name = step.get("name")
    if name not in TRANSFORMS:
        raise UserInputError(
            f"postprocessing transform {name!r} is not supported; use one of {', '.join(TRANSFORMS)}"
        )
    if name in _SCIKIT_IMAGE:
        import importlib.util

        if importlib.util.find_spec("skimage") is None:
            raise UserInputError(
                f"the bundle's {name} postprocessing needs scikit-image: pip install scikit-image"
            )
    try:
        return getattr(transforms, name)(**(step.get("args") or {}))
    except (TypeError, ValueError) as error:
        raise UserInputError(
            f"cannot build MONAI's {name} from the postprocessing step {step} ({error}); fix its args"
        ) from error
