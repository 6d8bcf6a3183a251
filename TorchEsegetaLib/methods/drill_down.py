"""Adaptive occlusion's coarse first pass: the adaptive drill-down of Krypton (Nakandala et al.
2019), in 3D and over several levels.

Level 0 occludes boxes of ``window * 2^(levels - 1)`` voxels everywhere; each next level halves
window and stride and occludes only the boxes whose centre lies in a box the level before
refined. The last level is plain occlusion at ``window`` and ``stride`` inside the refined
region; elsewhere a voxel keeps the value of the finest level that reached it, scaled to the
final box's volume (a coarse box's drop spread evenly over its final-size boxes), so the map
reads as occlusion at ``window`` throughout.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from .base import Passes, ScoreModel
from .baselines import make_baseline
from .perturbation import (
    accumulate,
    box_average,
    box_grid,
    score_drops,
    split_by_support,
    window_starts,
)
from .perturbed import PerturbedScores


def refined_boxes(drops: Any, share: float, most: int) -> list[int]:
    """Indices of the boxes a level refines: the largest absolute drops first, the fewest that
    hold ``share`` of the level's total absolute drop, and at most ``most`` of them. None when
    no box changes the score."""
    import torch

    magnitude = drops.detach().abs().double().cpu()
    total = float(magnitude.sum())
    if total == 0 or most < 1:
        return []
    order = torch.argsort(magnitude, descending=True, stable=True)
    held = torch.cumsum(magnitude[order], dim=0)
    # The first position where the boxes so far hold the share (rounding can leave the last
    # cumulative sum a hair below the total: then every box that changes the score).
    needed = int(torch.searchsorted(held, share * total)) + 1
    return order[: min(needed, most, int((magnitude > 0).sum()))].tolist()


def box_centres_in(boxes: list, region: Any) -> list[bool]:
    """For each box, whether its centre voxel lies in the bool volume ``region``."""
    return [bool(region[tuple(b.start + (b.stop - b.start) // 2 for b in box)]) for box in boxes]


class DrillDown:
    """The coarse-to-fine levels of :class:`~.adaptive_occlusion.AdaptiveOcclusion` (its
    ``first_pass="coarse"``); reads the method's ``config`` and ``name``."""

    config: dict[str, Any]
    name: ClassVar[str]

    def level_sizes(self) -> list[tuple[int, int]]:
        """(window, stride) of each level, coarsest first."""
        window, stride, levels = self.config["window"], self.config["stride"], self.config["levels"]
        return [(window * 2**k, stride * 2**k) for k in reversed(range(levels))]

    def level_grid(self, spatial: tuple[int, ...], level: int) -> list:
        window, stride = self.level_sizes()[level]
        return box_grid(spatial, window, stride, self.config["cover_edges"])

    def coarse_passes(self, shape, forward=None):
        """At most: every box of the coarsest level, then at each level the boxes inside as many
        boxes of the level before as ``max_refined`` allows, each holding the most centres a box
        of that level can (never more than the level's whole grid); and the unoccluded input."""
        spatial = tuple(shape[1:])
        grid = self.level_grid(spatial, 0)
        evaluated = len(split_by_support(grid, spatial, forward)[0])
        total, grid_bound = evaluated, len(grid)
        for level in range(1, self.config["levels"]):
            parents = min(math.ceil(self.config["max_refined"] * grid_bound), evaluated)
            grid = self.level_grid(spatial, level)
            grid_bound = min(len(grid), parents * self.most_children(spatial, level))
            evaluated = min(len(split_by_support(grid, spatial, forward)[0]), grid_bound)
            total += evaluated
        return Passes(forward=total + 1)

    def most_children(self, spatial: tuple[int, ...], level: int) -> int:
        """The most boxes of ``level`` whose centres one box of the level before holds: a box
        is a product of intervals, so per axis the most centres one interval holds, multiplied."""
        (parent_window, parent_stride), (window, stride) = self.level_sizes()[level - 1 : level + 1]
        most = 1
        for n in spatial:
            centres = [s + min(window, n) // 2 for s in self.starts(n, window, stride)]
            most *= max(
                sum(start <= c < start + min(parent_window, n) for c in centres)
                for start in self.starts(n, parent_window, parent_stride)
            )
        return most

    def starts(self, length: int, window: int, stride: int) -> list[int]:
        return window_starts(length, window, stride, self.config["cover_edges"])

    def attribute_coarse(self, forward, inputs, target, context):
        import torch

        score = ScoreModel(forward, target)
        records = [
            {"window": w, "stride": s, "boxes": 0, "evaluated": 0, "refined": 0, "held": []}
            for w, s in self.level_sizes()
        ]
        bound = max(1, self.coarse_passes(tuple(inputs.shape[1:]), forward).forward - 1)
        out = torch.empty_like(inputs)
        for example in range(inputs.shape[0]):
            x = inputs[example : example + 1]
            share = (example / inputs.shape[0], (example + 1) / inputs.shape[0])
            progress = context.part(*share)
            out[example] = self.explain_one(score, x, records, bound, progress)[0]
        for level, record in enumerate(records[:-1]):
            held = record.pop("held")
            record["share_refined"] = round(min(held), 4) if held else 0.0
            if held and min(held) < self.config["refine_share"] - 1e-9:
                context.notes.append(
                    f"level {level + 1} (window {record['window']}): the drop is spread over "
                    f"many boxes; max_refined let the refined ones hold only {min(held):.0%} "
                    f"of it, not the {self.config['refine_share']:.0%} of refine_share, so "
                    "finer boxes with large drops may be missed (raise max_refined, or use "
                    "plain occlusion)"
                )
        records[-1].pop("held")
        evaluated = sum(record["evaluated"] for record in records)
        context.facts.update(
            first_pass="coarse", passes=evaluated + inputs.shape[0], levels=records
        )
        return out

    def explain_one(self, score, x, records: list[dict[str, Any]], bound: int, context):
        """The map of one example (1, C, *S); adds its boxes to ``records``."""
        import torch

        spatial = tuple(x.shape[2:])
        fill = make_baseline(self.config["baseline"], x)
        scores = PerturbedScores(score, x, context)
        final_volume = math.prod(min(self.config["window"], n) for n in spatial)
        averaged = torch.zeros(spatial, dtype=x.dtype, device=x.device)
        region = None
        done = 0
        for level, record in enumerate(records):
            last = level == len(records) - 1
            grid = self.level_grid(spatial, level)
            if region is not None:
                grid = [b for b, inside in zip(grid, box_centres_in(grid, region)) if inside]
            boxes, skipped = split_by_support(grid, spatial, score.forward)
            part = context.part(done / bound, min(1.0, (done + len(boxes)) / bound))
            message = (
                f"{self.name} level {level + 1}/{len(records)} (window {record['window']}) box"
            )
            drops = score_drops(scores, fill, boxes, part, message).to(x.dtype)
            done += len(boxes)
            record["boxes"] += len(grid)
            record["evaluated"] += len(boxes)
            if not last:
                # A coarse box's drop spread evenly over the final-size boxes it holds: the map
                # keeps the scale of occlusion at the final window.
                box_volume = math.prod(min(record["window"], n) for n in spatial)
                drops = drops * (final_volume / box_volume)
            total = torch.zeros(spatial, dtype=x.dtype, device=x.device)
            count = torch.zeros(spatial, dtype=x.dtype, device=x.device)
            accumulate(total, count, skipped, None)
            accumulate(total, count, boxes, drops)
            # Finer levels replace coarser ones where they reached.
            averaged = torch.where(count > 0, box_average(total, count), averaged)
            if last:
                break
            most = math.ceil(self.config["max_refined"] * len(grid))
            chosen = refined_boxes(drops, self.config["refine_share"], most)
            record["refined"] += len(chosen)
            magnitude = drops.abs()
            if magnitude.sum() > 0:
                record["held"].append(float(magnitude[chosen].sum() / magnitude.sum()))
            region = torch.zeros(spatial, dtype=torch.bool)
            for index in chosen:
                region[boxes[index]] = True
        scores.finish(self.name)
        return averaged.expand(x.shape[1:])[None]
