"""Adaptive occlusion: exact occlusion only where a cheap first pass finds most of the score drop.

Two first passes. ``gradient`` (the default) estimates the drop of every box at the final window
at once: each box's drop is the integral of the gradient along the straight path that moves the
box from the input to the baseline (exact for a score linear in the box; integrated gradients
restricted to one box). Boxes ``separation`` windows apart share their path points, so all of them
cost ``groups x path_steps`` passes with their backward; then exact occlusion re-measures the
``exact_share`` of the boxes with the largest estimated drops. ``coarse`` is the adaptive
drill-down of Krypton (:mod:`.drill_down`). Either way it is an approximation of occlusion at the
window: how closely it follows it is measured (``benchmarks/bench.py --config adaptive``), not
implied.
"""

from __future__ import annotations

import math

from .base import Method, Param, Passes, ScoreModel, register
from .baselines import make_baseline
from .drill_down import DrillDown
from .path_estimate import path_estimates, path_groups
from .perturbation import (
    BOX_PARAMS,
    accumulate,
    box_average,
    box_grid,
    note_skipped_boxes,
    score_drops,
    split_by_support,
)
from .perturbed import PerturbedScores


@register
class AdaptiveOcclusion(DrillDown, Method):
    name = "occlusion_adaptive"
    title = "Adaptive occlusion"
    summary = (
        "Occlusion at the window, exact only where a cheap first pass finds the score drop: each "
        "box's drop estimated along its occlusion path (or coarse boxes refined level by level), "
        "the largest re-measured (an approximation of occlusion, at a fraction of its passes)."
    )
    family = "perturbation"
    signed = True
    quantity = "score drop when occluded"
    cost = (
        "gradient: (ceil((separation + 1) x window / stride))^3 x path_steps forward+backward, "
        "then 1 forward per re-measured box; coarse: 1 forward per coarse box + 1 per finer box "
        "inside the refined ones (run.json records the passes made)"
    )
    reference = (
        "Nakandala, Kumar & Papakonstantinou, SIGMOD 2019 (Krypton's adaptive drill-down); "
        "Sundararajan et al. 2017, arXiv:1703.01365 (path integral); "
        "Zeiler & Fergus 2014, arXiv:1311.2901"
    )
    needs_baseline = True
    shared_channels = True
    passes_are_bound = True  # the run refines only the boxes that hold the share
    params = (
        Param(
            "window",
            "int",
            8,
            "Edge length of the finest occluding box (the map's resolution), in voxels.",
            minimum=1,
            maximum=1024,
        ),
        Param(
            "stride",
            "int",
            8,
            "Step between the finest boxes, in voxels; each coarser level doubles window and stride.",
            minimum=1,
            maximum=1024,
        ),
        Param(
            "first_pass",
            "choice",
            "gradient",
            "What decides where exact occlusion runs: 'gradient' estimates every box's drop along "
            "its occlusion path (path_steps, separation) and re-measures the largest (exact_share); "
            "'coarse' occludes coarse boxes and refines level by level (levels, refine_share, "
            "max_refined).",
            choices=("gradient", "coarse"),
        ),
        Param(
            "path_steps",
            "int",
            3,
            "first_pass=gradient: points on each box's path from the input to the baseline "
            "(midpoint rule); more are closer to the exact drop.",
            minimum=1,
            maximum=256,
        ),
        Param(
            "separation",
            "int",
            2,
            "first_pass=gradient: least gap, in windows, between boxes whose paths share a pass; "
            "larger is closer to occluding each box alone, and costs more passes.",
            minimum=0,
            maximum=16,
        ),
        Param(
            "exact_share",
            "float",
            0.02,
            "first_pass=gradient: share of the boxes, largest estimated drops first, that exact "
            "occlusion re-measures (1: plain occlusion).",
            minimum=0.0,
            maximum=1.0,
        ),
        Param(
            "levels",
            "int",
            3,
            "first_pass=coarse: levels from coarse to fine; the coarsest box is "
            "window x 2^(levels - 1); 1 is plain occlusion.",
            minimum=1,
            maximum=8,
        ),
        Param(
            "refine_share",
            "float",
            0.95,
            "first_pass=coarse: share of a level's absolute score drop whose boxes (largest "
            "drops first) are refined at the next level.",
            minimum=0.01,
            maximum=1.0,
        ),
        Param(
            "max_refined",
            "float",
            0.2,
            "first_pass=coarse: largest fraction of a level's boxes that is refined, whatever "
            "the share: bounds the passes before the run.",
            minimum=0.01,
            maximum=1.0,
        ),
        *BOX_PARAMS,
    )

    def passes(self, shape, forward=None):
        if self.config["first_pass"] == "gradient":
            boxes, _, groups = self.estimated_boxes(tuple(shape[1:]), forward)
            exact = self.exact_count(len(boxes))
            return Passes(
                forward=exact + 1 if exact else 0,
                backward=len(set(groups)) * self.config["path_steps"],
            )
        return self.coarse_passes(shape, forward)

    def estimated_boxes(self, spatial: tuple[int, ...], forward) -> tuple[list, list, list[int]]:
        """The final boxes that change the score, those that cannot (:func:`split_by_support`)
        and the path group of each of the first."""
        window, stride, edges = (
            self.config["window"],
            self.config["stride"],
            self.config["cover_edges"],
        )
        grid = box_grid(spatial, window, stride, edges)
        group_of = {
            tuple(s.start for s in box): group
            for box, group in zip(
                grid,
                path_groups(spatial, window, stride, edges, self.config["separation"] * window),
            )
        }
        boxes, skipped = split_by_support(grid, spatial, forward)
        return boxes, skipped, [group_of[tuple(s.start for s in box)] for box in boxes]

    def exact_count(self, boxes: int) -> int:
        return min(boxes, math.ceil(self.config["exact_share"] * boxes))

    def cheaper(self):
        if self.config["first_pass"] == "gradient":
            return [
                "fewer points on each path (occlusion_adaptive.path_steps=2) or fewer boxes "
                "re-measured (occlusion_adaptive.exact_share=0.01)",
                f"a larger final window (occlusion_adaptive.window={2 * self.config['window']} "
                f"occlusion_adaptive.stride={2 * self.config['stride']})",
            ]
        return [
            "a smaller share refined (occlusion_adaptive.refine_share=0.3) or a larger final "
            f"window (occlusion_adaptive.window={2 * self.config['window']} "
            f"occlusion_adaptive.stride={2 * self.config['stride']})"
        ]

    def attribute(self, forward, inputs, target, context):
        if self.config["first_pass"] == "gradient":
            return self.attribute_by_gradient(forward, inputs, target, context)
        return self.attribute_coarse(forward, inputs, target, context)

    def attribute_by_gradient(self, forward, inputs, target, context):
        import torch

        score = ScoreModel(forward, target)
        spatial = tuple(inputs.shape[2:])
        boxes, skipped, groups = self.estimated_boxes(spatial, forward)
        note_skipped_boxes(context, boxes, skipped)
        record = {
            "window": self.config["window"],
            "stride": self.config["stride"],
            "boxes": len(boxes) + len(skipped),
            "estimated": len(boxes),
            "groups": len(set(groups)),
            "path_steps": self.config["path_steps"],
            "exact": 0,
            "no_drop_estimated": 0,
        }
        out = torch.empty_like(inputs)
        for example in range(inputs.shape[0]):
            share = (example / inputs.shape[0], (example + 1) / inputs.shape[0])
            x = inputs[example : example + 1]
            part = context.part(*share)
            explained = self.explain_by_gradient(score, x, boxes, skipped, groups, record, part)
            out[example] = explained[0]
        if record["no_drop_estimated"] and record["exact"] < len(boxes) * inputs.shape[0]:
            context.notes.append(
                "the gradient first pass estimated no drop for any box (the score's gradient is "
                "zero along every path: a model that is not differentiable, or a saturated "
                "score); use first_pass=coarse"
            )
        record.pop("no_drop_estimated")
        context.facts.update(
            first_pass="gradient",
            passes=record["exact"] + (inputs.shape[0] if record["exact"] else 0),
            backward_passes=record["groups"] * record["path_steps"] * inputs.shape[0],
            estimate=record,
        )
        return out

    def explain_by_gradient(self, score, x, boxes, skipped, groups, record, context):
        """The map of one example (1, C, *S): every box's drop estimated along its path, the
        largest re-measured by exact occlusion."""
        import torch

        spatial = tuple(x.shape[2:])
        fill = make_baseline(self.config["baseline"], x)
        delta = x - fill
        steps = self.config["path_steps"]
        exact = self.exact_count(len(boxes))
        items = len(set(groups)) * steps
        # progress: a pass with its backward weighs about three forward passes
        split = 3 * items / max(3 * items + exact, 1)
        estimates = path_estimates(
            score,
            x,
            delta,
            boxes,
            groups,
            steps,
            context.part(0.0, split),
            f"{self.name} path estimate, point",
        )
        if not bool(estimates.any()):
            record["no_drop_estimated"] += 1
        values = estimates.to(x.dtype)
        # boxes in the same windows run together (window reuse), else in the grid's order,
        # the order plain occlusion runs and adds them in
        ranked = list(range(len(boxes)))
        if exact:
            top = set(torch.argsort(estimates.abs(), descending=True, stable=True)[:exact].tolist())
            scores = PerturbedScores(score, x, context)
            ranked.sort(key=lambda i: (scores.windows_of(boxes[i]), i))
            chosen = [i for i in ranked if i in top]
            message = f"{self.name} exact box"
            drops = score_drops(
                scores, fill, [boxes[i] for i in chosen], context.part(split, 1.0), message
            )
            values[chosen] = drops.to(x.dtype)
            record["exact"] += exact
            scores.finish(self.name)
        total = torch.zeros(spatial, dtype=x.dtype, device=x.device)
        count = torch.zeros(spatial, dtype=x.dtype, device=x.device)
        accumulate(total, count, skipped, None)
        accumulate(total, count, [boxes[i] for i in ranked], values[ranked])
        return box_average(total, count).expand(x.shape[1:])[None]
