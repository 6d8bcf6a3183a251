"""Explaining a local target of a whole-volume model on a crop: a labelled approximation.

A whole-volume model (one run over the whole input, no sliding window) may use the whole input
for every output voxel: instance normalisation alone couples them, and a 4-level UNet's
convolutions reach across a 128^3 input. So the map of a local target computed on a crop around
it is *not* the map of the model's real decision. It can be much cheaper, though, so it is
offered on request (``crop_margin``: the target's bounding box grown by that many model-grid
voxels), and every such run measures what the crop changes and writes it to ``run.json``
(``target.crop``): the target score on the crop against the full volume, and the saliency map
(one gradient each way) against the full volume's, inside the box and overall (outside the box
the cropped map is zero). The intensity statistics stay those of the whole input.

Sliding-window models never need it: only the windows that touch the target run, exactly
(:mod:`TorchEsegetaLib.engine.windows`), so a crop request is ignored for them with a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from ..targets.bound import BoundTarget

#: A crop that keeps at least this share of the volume saves too little to be worth its error.
MAX_SHARE = 0.5


@dataclass(frozen=True)
class Crop:
    """A box on the model grid (``box``) of a volume of spatial ``shape``, and the zero padding
    (before, after) per axis the network sees around it (``padding``: the whole volume's own
    padding where the box touches the volume's edge)."""

    box: tuple[slice, ...]
    shape: tuple[int, ...]
    margin: int
    padding: tuple[tuple[int, int], ...]

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """The box of a (B, C, *shape) tensor."""
        index = (slice(None), slice(None), *self.box)
        return x[index].contiguous()

    def paste(self, part: torch.Tensor) -> torch.Tensor:
        """A (B, C, *shape) tensor holding ``part`` in the box and zeros elsewhere."""
        import torch

        full = torch.zeros((*part.shape[:2], *self.shape), dtype=part.dtype, device=part.device)
        index = (slice(None), slice(None), *self.box)
        full[index] = part
        return full

    def target(self, bound: BoundTarget) -> BoundTarget:
        """The same target on the crop (its whole region lies inside the box)."""
        return bound.replace(region=bound.region[self.box])

    @property
    def share(self) -> float:
        """Share of the volume's voxels inside the box."""
        inside = np.prod([s.stop - s.start for s in self.box])
        return float(inside / np.prod(self.shape))

    def describe(self) -> dict[str, Any]:
        return {
            "box": [[s.start, s.stop] for s in self.box],
            "padding": [list(p) for p in self.padding],
            "margin": self.margin,
            "share_of_volume": round(self.share, 4),
        }


def plan_crop(forward: Any, region: np.ndarray, margin: int) -> tuple[Crop | None, str]:
    """The crop for a target ``region`` (bool, model grid), or None and the reason it is not
    used (a sliding-window model, or a box that keeps most of the volume).

    The box is aligned to the grid of the network's strides: the whole volume is padded to a
    multiple ``m`` of ``size_divisible`` before the network, and the box's ends are moved out
    to multiples of ``m`` on that padded grid, so every strided convolution samples the crop at
    the voxels it samples in the whole volume (a crop off that grid would shift every
    downsampled feature by a voxel). Where the box reaches the volume's edge, the crop gets the
    volume's own padding there.
    """
    if getattr(forward, "sliding", False):
        return None, (
            "crop_margin ignored: this sliding-window model already runs only the windows that "
            "touch the target, exactly"
        )
    if getattr(forward, "windowed", False):
        return None, (
            "crop_margin ignored: this model places its own windows on the image it is given "
            "(nnU-Net), so a crop would change them; its explanations already go window by "
            "window, with memory set by one window"
        )
    if getattr(forward, "fills", None):
        return None, (
            "crop_margin ignored: this bundle pads its image between intensity steps, which a "
            "crop of it would not reproduce; the maps are exact"
        )
    shape = tuple(int(n) for n in region.shape)
    multiple = max(1, int(getattr(getattr(forward, "card", None), "size_divisible", 1) or 1))
    voxels = np.argwhere(region)
    befores = [((-n) % multiple) // 2 for n in shape]  # the whole volume's padding before
    lows, highs = [], []
    for axis, (n, before) in enumerate(zip(shape, befores)):
        low = max(int(np.min(voxels[:, axis])) - margin, 0) + before
        high = min(int(np.max(voxels[:, axis])) + 1 + margin, n) + before
        lows.append(low // multiple * multiple)  # on the grid
        highs.append(-(-high // multiple) * multiple)
    _keep_two_voxels_deepest(lows, highs, [n + (-n) % multiple for n in shape], multiple)
    box, padding = [], []
    for n, before, low, high in zip(shape, befores, lows, highs):
        box.append(slice(max(low - before, 0), min(high - before, n)))
        padding.append((max(before - low, 0), max(high - before - n, 0)))
    crop = Crop(tuple(box), shape, int(margin), tuple(padding))
    if crop.share >= MAX_SHARE:
        return None, (
            f"crop_margin ignored: the target's box grown by {margin} voxels keeps "
            f"{crop.share:.0%} of the volume, too much to save time; the maps are exact"
        )
    return crop, ""


def _keep_two_voxels_deepest(
    lows: list[int], highs: list[int], padded: list[int], multiple: int
) -> None:
    """Grow a box of one stride cell per axis by one cell along an axis where the padded
    volume has room: the network's deepest level then has two voxels, which instance
    normalisation needs (one voxel has no variance)."""
    if np.prod([(h - lo) // multiple for lo, h in zip(lows, highs)]) >= 2:
        return
    for axis, size in enumerate(padded):
        if highs[axis] + multiple <= size:
            highs[axis] += multiple
            return
        if lows[axis] - multiple >= 0:
            lows[axis] -= multiple
            return


def measure_crop(
    crop: Crop, forward: Any, x: torch.Tensor, bound: BoundTarget, device: Any
) -> dict[str, Any]:
    """What the crop changes: the target score, and the saliency map against the full
    volume's (relative L2 difference overall and inside the box, Pearson r inside the box)."""
    import torch

    from ..engine.context import Context
    from ..methods import create_method

    cropped, on_crop = crop.target(bound), forward.on_crop(crop.padding)
    with torch.no_grad():
        score = float(bound(forward(x))[0])
        score_cropped = float(cropped(on_crop(crop.take(x)))[0])
    saliency = create_method("saliency", {"abs": False})
    full = saliency.attribute(forward, x, bound, Context(device=device)).double()
    part = saliency.attribute(on_crop, crop.take(x), cropped, Context(device=device)).double()
    inside = crop.take(full)

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm().clamp(min=1e-30))

    pair = torch.stack([part.flatten(), inside.flatten()])
    pearson = float(torch.corrcoef(pair)[0, 1]) if float(pair.std(dim=1).min()) > 0 else 0.0
    return {
        **crop.describe(),
        "approximation": True,
        "score": {
            "full": score,
            "cropped": score_cropped,
            "relative_change": abs(score_cropped - score) / max(abs(score), 1e-30),
        },
        "saliency": {
            "relative_l2": relative(crop.paste(part), full),
            "relative_l2_in_box": relative(part, inside),
            "pearson_in_box": pearson,
        },
    }
