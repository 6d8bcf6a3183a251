"""Proof that flushing denormals leaves the segmentation as it is, checked on the first pass.

Flushing denormal floats to zero (:class:`~TorchEsegetaLib.engine.denormals.DenormalFlush`)
changes arithmetic only where a value falls below float32's normal range; usually the results
are bit-identical, but a network may amplify such values (a denormal weight followed by a large
scale). Before a run trusts flushing, :func:`check_flush` runs the network on a small region of
its input twice, flushed and exactly, and compares the labelmaps and probabilities: one sliding
window, a central box of :data:`CHECK_EDGE` voxels per axis for whole-volume models, or the whole
input when that box would hold half of it or more. The exact pass is the slow one, which is why
the region is small.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch

from .postprocessing import labelmap_from_probabilities, probabilities_from_logits

if TYPE_CHECKING:
    from ..engine.denormals import DenormalFlush
    from .inference import SegmentationForward

#: edge of the central box a whole-volume model is checked on (rounded up to size_divisible)
CHECK_EDGE = 48

_BATCH_AND_CHANNELS = (slice(None), slice(None))


def check_box(shape: tuple[int, ...], forward: SegmentationForward) -> tuple[slice, ...]:
    """The central region of a model-grid input of spatial ``shape`` that the check runs on:
    the whole input when the box would hold half of it or more (the whole input's flushed pass
    is then the segmentation itself, so checking it costs one exact pass of the input)."""
    card = forward.card
    multiple = max(1, card.size_divisible)
    edges = card.roi_size or [CHECK_EDGE + (-CHECK_EDGE) % multiple] * len(shape)
    sizes = [min(n, int(edge)) for n, edge in zip(shape, edges)]
    if 2 * math.prod(sizes) >= math.prod(shape):
        sizes = list(shape)
    return tuple(slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(shape, sizes))


def check_flush(
    forward: SegmentationForward, x: torch.Tensor, flush: DenormalFlush
) -> torch.Tensor | None:
    """Run ``forward`` on the check region of ``x`` flushed and exactly, and hand what it found
    to ``flush`` (:meth:`~TorchEsegetaLib.engine.denormals.DenormalFlush.checked`), which keeps
    exact arithmetic for the run when the labelmaps differ. Call it inside ``flush.scope()``.

    Returns:
        Where the region was the whole input, its logits under the arithmetic the run keeps
        (no need to run it again); None otherwise.
    """
    from ..engine.context import is_out_of_memory

    box = check_box(tuple(x.shape[2:]), forward)
    whole = all(s.stop - s.start == n for s, n in zip(box, x.shape[2:]))
    try:
        check, logits = _compare(_on_region(forward, box), x[_BATCH_AND_CHANNELS + box], flush)
    except RuntimeError as error:  # a network that cannot run on the box: check it whole
        if is_out_of_memory(error) or whole:
            raise
        whole = True
        check, logits = _compare(forward, x, flush)
    shape = tuple(int(n) for n in x.shape[2:])
    region = "whole input" if whole else f"central box {tuple(s.stop - s.start for s in box)}"
    check["region"] = f"{region} of {shape}"
    flush.checked(check)
    return logits[0 if flush.active else 1] if whole else None


def _on_region(forward: SegmentationForward, box: tuple[slice, ...]) -> SegmentationForward:
    """The forward of the region ``box`` of the input: the same network and frozen statistics,
    the bundle's padding masks cut to the box."""
    from .inference import SegmentationForward

    cropped = SegmentationForward(forward.network, forward.card, forward.precision)
    cropped.frozen_statistics = forward.frozen_statistics
    cropped.fills = {
        index: mask[_BATCH_AND_CHANNELS + box] for index, mask in forward.fills.items()
    }
    return cropped


def _compare(
    forward: SegmentationForward, x: torch.Tensor, flush: DenormalFlush
) -> tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor]]:
    """Labelmaps and probabilities of ``x`` flushed and exact, the time of each pass, and the
    (flushed, exact) logits."""
    activation = forward.card.activation
    began = time.perf_counter()
    flushed = forward(x)
    flushed_seconds = time.perf_counter() - began
    with flush.exact():  # the comparison too: a flushing thread reads a denormal as zero
        began = time.perf_counter()
        exact = forward(x)
        exact_seconds = time.perf_counter() - began
        flushed_p, exact_p = (
            probabilities_from_logits(t.float(), activation) for t in (flushed, exact)
        )
        changed = labelmap_from_probabilities(
            flushed_p[0].cpu().numpy(), activation
        ) != labelmap_from_probabilities(exact_p[0].cpu().numpy(), activation)
        difference = float((flushed_p - exact_p).abs().max()) if exact_p.numel() else 0.0
    check = {
        "labelmaps_equal": not bool(changed.any()),
        "changed_voxels": int(changed.sum()),
        "voxels": int(changed.size),
        "max_probability_difference": difference,
        "seconds_flushed": round(flushed_seconds, 4),
        "seconds_exact": round(exact_seconds, 4),
    }
    return check, (flushed, exact)
