"""Perturbation methods: the change of the target score when parts of the input are replaced."""

from __future__ import annotations

import itertools
import math

from .base import Method, Param, Passes, ScoreModel, register
from .baselines import baseline_params, make_baseline
from .perturbed import PerturbedScores, note_no_reuse

BASELINE_PARAMS = baseline_params(
    "Value of a removed part of the input: zeros, each channel's minimum or mean, or a "
    "Gaussian blur of the input."
)


def window_starts(length: int, window: int, stride: int, cover_edges: bool) -> list[int]:
    """Start indices of the windows along one axis (captum's grid, plus one flush window at the end)."""
    window = min(window, length)
    starts = list(range(0, length - window + 1, stride))
    if cover_edges and starts[-1] + window < length:
        starts.append(length - window)
    return starts


#: what fills an occluded box and whether the boxes reach every border (occlusion's and adaptive
#: occlusion's)
BOX_PARAMS = (
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


@register
class Occlusion(Method):
    name = "occlusion"
    title = "Occlusion"
    summary = "Score drop when a sliding 3D box of the input (all channels) is replaced by a baseline, averaged per voxel."
    family = "perturbation"
    signed = True
    quantity = "score drop when occluded"
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
        *BOX_PARAMS,
    )

    def boxes(self, spatial: tuple[int, ...], forward) -> tuple[list, list]:
        """The occluding boxes that change the score, and those that cannot (see
        :func:`split_by_support`)."""
        window, stride = self.config["window"], self.config["stride"]
        boxes = box_grid(spatial, window, stride, self.config["cover_edges"])
        return split_by_support(boxes, spatial, forward)

    def passes(self, shape, forward=None):
        boxes, _ = self.boxes(tuple(shape[1:]), forward)
        reused = getattr(forward, "reused_windows", None)
        windows = reused(tuple(shape[1:]), boxes) if reused is not None else None
        if windows is None:
            return Passes(forward=len(boxes) + 1)  # each box, and the unoccluded input
        # window reuse: only the windows each box touches run, counted in whole inferences
        per_pass = forward.windows_per_pass(tuple(shape[1:]))
        return Passes(forward=-(-windows // per_pass))

    def cheaper(self):
        window, stride = self.config["window"], self.config["stride"]
        return [
            f"a larger occlusion window (occlusion.window={2 * window} "
            f"occlusion.stride={2 * stride}: about 8 times fewer passes)",
            f"adaptive occlusion (--method occlusion_adaptive --param occlusion_adaptive.window={window}"
            f" --param occlusion_adaptive.stride={stride}: every box's drop estimated from "
            "gradients, the largest re-measured; a measured approximation)",
            "feature ablation over supervoxels (--method feature_ablation "
            "--param feature_ablation.features=supervoxels)",
        ]

    def attribute(self, forward, inputs, target, context):
        import torch

        score = ScoreModel(forward, target)
        spatial = inputs.shape[2:]
        boxes, skipped = self.boxes(tuple(spatial), forward)
        note_skipped_boxes(context, boxes, skipped)
        out = torch.empty_like(inputs)
        for example in range(inputs.shape[0]):
            x = inputs[example : example + 1]
            fill = make_baseline(self.config["baseline"], x)
            scores = PerturbedScores(score, x, context)
            # boxes in the same windows run together: they update the same part of the output
            ordered = sorted(boxes, key=scores.windows_of)
            drops = score_drops(scores, fill, ordered, context, f"{self.name} window")
            total = torch.zeros(spatial, dtype=x.dtype, device=x.device)
            count = torch.zeros(spatial, dtype=x.dtype, device=x.device)
            accumulate(total, count, skipped, None)
            accumulate(total, count, ordered, drops.to(total.dtype))
            scores.finish(self.name)
            out[example] = box_average(total, count).expand(inputs.shape[1:])
        return out


def box_grid(spatial: tuple[int, ...], window: int, stride: int, cover_edges: bool) -> list:
    """The occluding boxes (tuples of slices) of a window and stride, in captum's order."""
    axes = [window_starts(n, window, stride, cover_edges) for n in spatial]
    return [
        tuple(slice(s, s + min(window, n)) for s, n in zip(corner, spatial))
        for corner in itertools.product(*axes)
    ]


def split_by_support(boxes: list, spatial: tuple[int, ...], forward) -> tuple[list, list]:
    """``boxes`` that change the score, and those that cannot: a box that misses every voxel the
    restricted forward reads (sliding-window models with a local target) leaves the score as it
    is, so its drop is exactly zero."""
    import torch

    support = forward.input_support(spatial) if hasattr(forward, "input_support") else None
    if support is None:
        return boxes, []
    seen = torch.from_numpy(support)
    inside = [bool(seen[box].any()) for box in boxes]
    return [b for b, i in zip(boxes, inside) if i], [b for b, i in zip(boxes, inside) if not i]


def note_skipped_boxes(context, boxes: list, skipped: list) -> None:
    """Say how many boxes lie outside the target's windows (:func:`split_by_support`)."""
    if skipped:
        context.notes.append(
            f"{len(skipped)} of {len(skipped) + len(boxes)} boxes lie outside the target's "
            "windows and were not evaluated (their drop is exactly 0)"
        )


def score_drops(scores: PerturbedScores, fill, boxes: list, context, message: str):
    """``scores.reference - scores(x with each box replaced by fill)``, one value per box (all
    channels occluded), the boxes evaluated in batches sized by the engine (on a sliding-window
    model each batch runs only the windows its boxes touch)."""
    import torch

    reference = scores.reference
    drops = torch.empty(len(boxes), dtype=reference.dtype, device=reference.device)

    def compute(start: int, stop: int) -> None:
        drops[start:stop] = reference - scores.boxes(fill, boxes[start:stop])

    context.map_batches(len(boxes), compute, message, kind="forward")
    return drops


def accumulate(total, count, boxes: list, drops) -> None:
    """Add each box's drop (None: a drop of exactly 0) to the voxels it covers."""
    for index, box in enumerate(boxes):
        if drops is not None:
            total[box] += drops[index]
        count[box] += 1


def box_average(total, count):
    """Each voxel's mean drop over the boxes covering it (0 where none does)."""
    import torch

    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


@register
class Rise(Method):
    name = "rise"
    title = "RISE"
    summary = "Average of random smooth 3D masks weighted by the target score of the input seen through each mask."
    family = "perturbation"
    signed = True
    quantity = "score-weighted mask average"
    cost = "n_masks forwards, batched"
    reference = "Petsiuk et al. 2018, arXiv:1806.07421"
    needs_baseline = True
    shared_channels = True
    params = (
        Param("n_masks", "int", 500, "Number of random masks.", minimum=1, maximum=100000),
        Param(
            "cell_size",
            "int",
            16,
            "Edge length in voxels of the cells of the coarse random grid that is upsampled "
            "into each mask.",
            minimum=1,
            maximum=1024,
        ),
        Param(
            "keep_probability",
            "float",
            0.5,
            "Probability that a cell of the coarse grid keeps the input.",
            minimum=0.01,
            maximum=0.99,
        ),
        Param(
            "subtract_mean",
            "bool",
            True,
            "Weight the masks by the score minus the mean score: removes the uniform offset "
            "(the mean score) and much of the sampling noise of the paper's estimator.",
        ),
        *BASELINE_PARAMS,
    )

    def passes(self, shape, forward=None):
        return Passes(forward=self.config["n_masks"])

    def cheaper(self):
        return ["fewer masks (rise.n_masks=100)"]

    def attribute(self, forward, inputs, target, context):
        import torch

        score = ScoreModel(forward, target)
        note_no_reuse(forward, context, self.name, "every mask changes every window")
        fills = make_baseline(self.config["baseline"], inputs, self.config["blur_sigma"])
        n, cell = self.config["n_masks"], self.config["cell_size"]
        p = self.config["keep_probability"]
        spatial = tuple(inputs.shape[2:])
        generator = context.generator()
        grids = (
            torch.rand((n, *(math.ceil(s / cell) + 1 for s in spatial)), generator=generator) < p
        )
        shifts = torch.randint(0, cell, (n, len(spatial)), generator=generator)
        out = torch.empty_like(inputs)
        for index in range(inputs.shape[0]):
            x, fill = inputs[index : index + 1], fills[index : index + 1]
            # float64 sums: the centred map is a small difference of large ones
            weighted = torch.zeros(spatial, dtype=torch.float64, device=x.device)
            coverage, total = torch.zeros_like(weighted), weighted.new_zeros(())

            def compute(
                start: int, stop: int, x=x, fill=fill, sums=(weighted, coverage, total)
            ) -> None:
                masks = smooth_masks(grids[start:stop], shifts[start:stop], cell, spatial, x)
                with torch.no_grad():
                    scores = score(fill + masks.unsqueeze(1) * (x - fill)).double()
                masks = masks.double()
                parts = (torch.tensordot(scores, masks, dims=1), masks.sum(dim=0), scores.sum())
                for accumulated, part in zip(sums, parts):
                    accumulated.add_(part)

            context.map_batches(n, compute, f"{self.name} example {index + 1} mask", kind="forward")
            if self.config["subtract_mean"]:
                weighted -= total / n * coverage
            out[index] = (weighted / (n * p)).to(x.dtype).expand(inputs.shape[1:])
        return out


def smooth_masks(grids, shifts, cell, spatial, like):
    """Upsample binary coarse grids (B, *G) trilinearly by ``cell`` and crop each at its shift:
    (B, *spatial) masks in [0, 1] with the dtype and device of ``like``."""
    import torch
    import torch.nn.functional as F

    coarse = grids.unsqueeze(1).to(device=like.device, dtype=like.dtype)
    size = [g * cell for g in grids.shape[1:]]
    upsampled = F.interpolate(coarse, size=size, mode="trilinear", align_corners=False)[:, 0]
    windows = [
        (row, *(slice(o, o + s) for o, s in zip(shift.tolist(), spatial)))
        for row, shift in enumerate(shifts)
    ]
    return torch.stack([upsampled[window] for window in windows])
