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

from ..errors import UserInputError
from .card import ModelCard

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
    """(K, *S) probabilities -> (*S) labels (uint8, uint16 beyond 255 classes): argmax for
    mutually exclusive classes (label n is channel n); otherwise 1 + the highest channel above
    0.5, 0 where none is (label n + 1 is channel n; see :attr:`ModelCard.label_names`)."""
    dtype = np.uint8 if probabilities.shape[0] < 256 else np.uint16
    if activation == "softmax" or (activation == "none" and probabilities.shape[0] > 1):
        return np.argmax(probabilities, axis=0).astype(dtype)
    above = probabilities > 0.5
    highest = probabilities.shape[0] - np.argmax(above[::-1], axis=0)
    return np.where(above.any(axis=0), highest, 0).astype(dtype)


def segmentation_outputs(
    logits: torch.Tensor, card: ModelCard, grid: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """From the (1, K, *model shape) network output, on the input grid: the (K, *S) float32
    probabilities, the (*S) labelmap and, for classes that may overlap (not mutually
    exclusive) under a bundle's postprocessing, each channel's (K, *S) bool mask after that
    postprocessing (None otherwise: the labelmap holds every class then)."""
    restored = restored_probabilities(logits, card, grid)
    if not card.postprocessing:
        return restored, labelmap_from_probabilities(restored, card.activation), None
    labelmap, masks = _follow(logits[0].float(), card, grid)
    return restored, labelmap, masks


def restored_probabilities(logits: torch.Tensor, card: ModelCard, grid: Any) -> np.ndarray:
    """The (K, *S) float32 probabilities on the input grid of a (1, K, *model shape) network
    output, brought back as the segmentation's are (a bundle's ``invert`` step says how)."""
    probabilities = probabilities_from_logits(logits, card.activation)
    invert = next((s for s in card.postprocessing if s["kind"] == "invert"), None)
    mode = "nearest" if invert is not None and invert.get("nearest", True) else "trilinear"
    return grid.to_input_grid(probabilities, mode)[0].cpu().numpy().astype(np.float32)


def class_mask(
    labelmap: np.ndarray, masks: np.ndarray | None, card: ModelCard, class_index: int
) -> np.ndarray:
    """One class's (*S) bool mask in the segmentation (from :func:`segmentation_outputs`)."""
    if masks is not None:
        return masks[class_index]
    return labelmap == card.label_of(class_index)


def _follow(pred: torch.Tensor, card: ModelCard, grid: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The labelmap a bundle's postprocessing makes of one (K, *S) prediction, and each
    channel's mask where the classes may overlap (see :func:`segmentation_outputs`)."""
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
    dtype = np.uint8 if card.out_channels < 256 else np.uint16
    if not discrete:  # probabilities still: labelled as without postprocessing
        labelmap = labelmap_from_probabilities(values, card.activation)
        masks = None if card.exclusive else values > 0.5
        return labelmap, masks
    if values.shape[0] == 1:  # argmax labels, or a one-channel output's 0/1 threshold
        labelmap = np.rint(values[0]).clip(0, None).astype(dtype)
        return labelmap, None if card.exclusive else (labelmap > 0)[None]
    if card.exclusive:
        return np.argmax(values, axis=0).astype(dtype), None
    return labelmap_from_probabilities(values, "sigmoid"), values > 0.5


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
