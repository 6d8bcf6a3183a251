"""Whether an image is large enough for the network, said before the forward pass fails.

A network that down-samples by a total stride ``d`` (the card's ``size_divisible``) reduces an
input padded to a multiple of ``d`` to ``size / d`` voxels per axis at its deepest level. Instance
normalisation there needs more than one voxel per channel (it divides by the variance over the
voxels), so a volume of at most ``d`` voxels along every axis cannot run: PyTorch stops with
"Expected more than 1 spatial element". :func:`check_input_size` says so, with the minimum and
the fixes, before anything runs. Networks whose limits the card does not describe (valid
convolutions, pooling, group normalisation of single channels) are caught by
:func:`too_small_guard`, which turns PyTorch's size errors from the forward pass into the same
kind of message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import UserInputError

if TYPE_CHECKING:
    import torch

    from .card import ModelCard

_FIXES = (
    "pad the image, resample it to a finer spacing, or give the model card a sliding-window "
    "roi_size (which pads the image for the network)"
)
# First lines of PyTorch's errors for inputs too small for a layer.
_TOO_SMALL = re.compile(
    r"Expected more than 1 (spatial element|value per channel)"
    r"|Kernel size can't be greater than actual input size"
    r"|Output size is too small"
    r"|smaller than kernel size"
    r"|Padding size should be less than the corresponding input dimension"
)


def check_input_size(
    network: torch.nn.Module,
    card: ModelCard,
    model_shape: Sequence[int],
    input_shape: Sequence[int] | None = None,
) -> None:
    """Raise a :class:`UserInputError` when the network cannot take an image of this size.

    Args:
        network: the model's network (its layers tell whether instance normalisation is used).
        card: the model card (``size_divisible``, the sliding-window ``roi_size``).
        model_shape: the image's spatial shape on the model's grid.
        input_shape: the shape on the input grid, when resampling changed it (for the message).
    """
    stride = max(1, int(card.size_divisible or 1))
    if not _uses_instance_norm(network):
        return
    if card.roi_size is not None:
        # MONAI pads an image smaller than the window: the network always sees whole windows.
        seen = tuple(card.roi_size)
    else:
        seen = tuple(math.ceil(n / stride) * stride for n in model_shape)
    deepest = math.prod(math.ceil(n / stride) for n in seen)
    if deepest >= 2:
        return
    side = 2 * stride
    example = f"[{side}, {side}, {side}]"
    reason = (
        f"with its total stride of {stride}, the instance normalisation at its deepest level "
        f"gets {deepest} voxel and needs at least 2"
    )
    if card.roi_size is not None:
        raise UserInputError(
            f"the model card's sliding-window roi_size {_shape_text(seen)} is too small for this "
            f"network: {reason}; use a roi_size larger than {stride} along at least one axis, "
            f"e.g. {example}"
        )
    shape = _shape_text(model_shape)
    where = (
        f"{shape} voxels on the model's grid ({_shape_text(input_shape)} as given)"
        if input_shape is not None and tuple(input_shape) != tuple(model_shape)
        else f"{shape} voxels"
    )
    raise UserInputError(
        f"the image ({where}) is too small for this network: {reason}; make it larger than "
        f"{stride} voxels along at least one axis: pad it (e.g. to {side}x{side}x{side}), "
        f"resample it to a finer spacing, or give the model card a sliding-window roi_size "
        f"such as {example} (--card '{{\"roi_size\": {example}}}'), which pads it for the network"
    )


@contextmanager
def too_small_guard(shape: Sequence[int]) -> Iterator[None]:
    """Turn PyTorch's "input too small for this layer" errors into a :class:`UserInputError`."""
    try:
        yield
    except (RuntimeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        match = _TOO_SMALL.search(first_line)
        if match is None:
            raise
        raise UserInputError(
            f"the network cannot run on this image ({_shape_text(shape)} voxels on the model's "
            f"grid): a layer reports {match.group(0)!r}, so the image is too small for it; "
            f"{_FIXES}"
        ) from error


def _uses_instance_norm(network: torch.nn.Module) -> bool:
    """Whether a layer normalises by statistics of the input's own voxels (instance norm
    without running statistics); TorchScript modules keep their class name in ``original_name``."""
    return any(
        getattr(module, "original_name", type(module).__name__).startswith("InstanceNorm")
        and not getattr(module, "track_running_stats", False)
        for module in network.modules()
    )


def _shape_text(shape: Sequence[int] | None) -> str:
    return "x".join(str(int(n)) for n in shape or ())
