"""The scores of perturbed copies of one input, as perturbation methods ask for them.

On a sliding-window model each perturbed copy runs only the windows its perturbed voxels touch
(exact window reuse, :mod:`TorchEsegetaLib.models.window_reuse`); on any other model, or with a
target that is not a sum of voxel shares, every copy runs the whole model as before. The run's
record says how many windows ran and were skipped, and how large the cache was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..engine.context import Context
    from .base import ScoreModel


class PerturbedScores:
    """``scores(batch)`` of perturbed copies of ``x`` (1, C, *S) and the unperturbed
    :attr:`reference` score (1,); float64 where window reuse computes them."""

    def __init__(self, score: ScoreModel, x: torch.Tensor, context: Context) -> None:
        import torch

        self.score, self.x, self.context = score, x, context
        reuse_of = getattr(score.forward, "window_reuse", None)
        with torch.no_grad():
            self.reuse = reuse_of(x, score.target) if reuse_of is not None else None
        self._reference = self.reuse.reference if self.reuse is not None else None

    @property
    def reference(self) -> torch.Tensor:
        """The score of the unperturbed input (one pass on first use without reuse)."""
        if self._reference is None:
            self._reference = self(self.x)
        return self._reference

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.no_grad():
            return self.reuse.scores(batch) if self.reuse is not None else self.score(batch)

    def boxes(self, fill: torch.Tensor, boxes: Sequence[Sequence[slice]]) -> torch.Tensor:
        """Scores of ``x`` with each box (tuple of spatial slices) set to ``fill`` (shaped like
        ``x``) in every channel. Where the reuse knows the windows a box changes from its
        coordinates, only those windows' inputs are built; else the copies are built whole."""
        import torch

        if self.reuse is not None and self.reuse.voxelwise:
            return self.reuse.box_scores(fill, boxes)
        batch = self.x.repeat(len(boxes), *[1] * (self.x.dim() - 1))
        for row, box in enumerate(boxes):
            batch[(row, slice(None)) + tuple(box)] = fill[(0, slice(None)) + tuple(box)]
        with torch.no_grad():
            return self(batch)

    def windows_of(self, box: Sequence[slice]) -> tuple[int, ...]:
        """The windows a box lies in (empty without reuse): boxes that share them run together."""
        return self.reuse.windows_of_box(box) if self.reuse is not None else ()

    def finish(self, name: str) -> None:
        """Add what the reuse did to the run's record (``context.facts["window_reuse"]``,
        summed over examples) and a note."""
        if self.reuse is None:
            return
        record = self.reuse.record()
        total = self.context.facts.setdefault("window_reuse", {})
        for key, value in record.items():
            total[key] = value if isinstance(value, str) else total.get(key, 0) + value
        ran, skipped = total["windows_run"], total["windows_skipped"]
        share = skipped / max(ran + skipped, 1)
        rescoring = (
            "scored per window (linear score)"
            if total.get("rescoring") == "per window"
            else f"cache {total['cache_bytes'] / 2**20:.1f} MB on {total['cache_device']}"
        )
        note = (
            f"{name}: window reuse ran {ran:,} windows for {total['perturbations']:,} perturbed "
            f"inputs and skipped {skipped:,} ({share:.0%}); {rescoring}"
        )
        if total["full_inferences"]:
            note += (
                f"; {total['full_inferences']:,} perturbed inputs changed every window and ran as "
                "full inferences"
            )
        self.context.notes[:] = [
            n for n in self.context.notes if not n.startswith(f"{name}: window reuse")
        ]
        self.context.notes.append(note)


def note_no_reuse(forward: Any, context: Context, name: str, why: str) -> None:
    """Say that a method on a sliding-window model (MONAI's windows, nnU-Net's) runs every
    window of every perturbed input."""
    if getattr(forward, "sliding", False) or getattr(forward, "windowed", False):
        context.notes.append(f"{name}: {why}; every perturbed input runs a full inference")
