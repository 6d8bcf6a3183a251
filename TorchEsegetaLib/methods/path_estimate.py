"""The drop of every occluding box at once, estimated along its occlusion path.

A box's drop when occluded, ``f(x) - f(x with the box at the baseline)``, is the integral of the
gradient along the straight path that moves the box from the input to the baseline, times the
box's change (integrated gradients restricted to the box: exact for a score linear in the box).
Boxes that lie apart barely interact, so they move together: one pass with its backward gives a
path point for every box of a group, and the estimate of all the boxes costs ``groups x steps``
such passes. Adaptive occlusion's gradient first pass uses it to decide which boxes exact
occlusion re-measures.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from .base import input_gradients
from .perturbation import window_starts


def path_groups(spatial: tuple[int, ...], window: int, stride: int, cover_edges: bool, gap: int):
    """For each box of :func:`box_grid` (same order), the group whose paths share a pass: two
    boxes of a group lie at least ``gap`` voxels apart along some axis. Per axis, each start
    joins the first class whose last start ends ``gap`` voxels before it (boxes every
    ``ceil((window + gap) / stride)`` steps, and the flush box at the border where it fits);
    a group is one class per axis."""
    classes = []
    for n in spatial:
        extent = min(window, n)
        ends: list[int] = []  # each class's last start
        axis = []
        for start in window_starts(n, window, stride, cover_edges):
            fits = [c for c, last in enumerate(ends) if start >= last + extent + gap]
            if fits:
                ends[fits[0]] = start
            else:
                ends.append(start)
            axis.append(fits[0] if fits else len(ends) - 1)
        classes.append(axis)
    sizes = [max(axis) + 1 for axis in classes]
    return [
        sum(c * math.prod(sizes[axis + 1 :]) for axis, c in enumerate(corner))
        for corner in itertools.product(*classes)
    ]


def path_estimates(
    score: Any,
    x: Any,
    delta: Any,
    boxes: list,
    groups: list[int],
    steps: int,
    context: Any,
    message: str,
) -> Any:
    """Each box's estimated drop (float64, one per box): the midpoint rule over ``steps`` points
    of the path that moves the box by ``-delta`` (``x - baseline``, shaped like ``x``), the boxes
    of a group moved together; points batched by the engine (``context.map_batches``)."""
    import torch

    spatial = tuple(x.shape[2:])
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    order = sorted(members)
    estimates = torch.zeros(len(boxes), dtype=torch.float64, device=x.device)

    def compute(start: int, stop: int) -> None:
        points = []
        for item in range(start, stop):
            group, step = divmod(item, steps)
            mask = torch.zeros(spatial, dtype=x.dtype, device=x.device)
            for index in members[order[group]]:
                mask[boxes[index]] = 1
            # the group's boxes moved (step + 1/2) / steps of the way to the baseline
            points.append(x - ((step + 0.5) / steps) * mask * delta)
        _, grads = input_gradients(score, torch.cat(points))
        found = torch.zeros_like(estimates)
        for row, item in enumerate(range(start, stop)):
            product = (grads[row] * delta[0]).sum(dim=0).double()
            for index in members[order[item // steps]]:
                found[index] += product[boxes[index]].sum() / steps
        estimates.add_(found)  # only once the whole batch succeeded

    context.map_batches(len(order) * steps, compute, message, kind="backward")
    return estimates
