"""Perturbation methods: the change of the target score when parts of the input are replaced."""

from __future__ import annotations

import itertools

from .base import Method, Param, ScoreModel, register
from .gradient import make_baseline


def window_starts(length: int, window: int, stride: int, cover_edges: bool) -> list[int]:
    """Start indices of the windows along one axis (captum's grid, plus one flush window at the end)."""
    window = min(window, length)
    starts = list(range(0, length - window + 1, stride))
    if cover_edges and starts[-1] + window < length:
        starts.append(length - window)
    return starts


@register
class Occlusion(Method):
    name = "occlusion"
    title = "Occlusion"
    summary = "Score drop when a sliding 3D box of the input (all channels) is replaced by a baseline, averaged per voxel."
    family = "perturbation"
    signed = True
    cost = "1 forward per window position, batched"
    reference = "Zeiler & Fergus 2014, arXiv:1311.2901"
    needs_baseline = True
    shared_channels = True
    params = (
        Param(
            "window",
            "int",
            16,
            "Edge length of the cubic occluding box, in voxels.",
            minimum=1,
            maximum=1024,
        ),
        Param(
            "stride", "int", 8, "Step between box positions, in voxels.", minimum=1, maximum=1024
        ),
        Param(
            "baseline",
            "choice",
            "zero",
            "Value put in the box: zero, or each channel's minimum or mean.",
            choices=("zero", "min", "mean"),
        ),
        Param(
            "cover_edges",
            "bool",
            True,
            "Add a last box flush with each border so every voxel is occluded at least once.",
        ),
    )

    def attribute(self, forward, inputs, target, context):
        import torch

        score = ScoreModel(forward, target)
        spatial = inputs.shape[2:]
        window, stride = self.config["window"], self.config["stride"]
        axes = [window_starts(n, window, stride, self.config["cover_edges"]) for n in spatial]
        boxes = [
            tuple(slice(s, s + min(window, n)) for s, n in zip(corner, spatial))
            for corner in itertools.product(*axes)
        ]
        out = torch.empty_like(inputs)
        for example in range(inputs.shape[0]):
            x = inputs[example : example + 1]
            fill = make_baseline(self.config["baseline"], x)
            with torch.no_grad():
                reference = score(x)
            total = torch.zeros(spatial, dtype=x.dtype, device=x.device)
            count = torch.zeros(spatial, dtype=x.dtype, device=x.device)

            def compute(
                start: int, stop: int, x=x, fill=fill, reference=reference, total=total, count=count
            ) -> None:
                batch = x.repeat(stop - start, *[1] * (x.dim() - 1))
                for row, box in enumerate(boxes[start:stop]):
                    batch[(row, slice(None), *box)] = fill[(0, slice(None), *box)]
                with torch.no_grad():
                    drops = reference - score(batch)
                for drop, box in zip(drops, boxes[start:stop]):
                    total[box] += drop
                    count[box] += 1

            context.map_batches(len(boxes), compute, f"{self.name} window")
            averaged = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
            out[example] = averaged.expand(inputs.shape[1:])
        return out
