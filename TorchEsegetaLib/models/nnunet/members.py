"""nnU-Net's ensemble, member by member: each fold's prediction with each mirror combination
alone, as the uncertainty of the ``ensemble`` kind needs them.

nnUNetPredictor averages, window by window, the predictions of every flip along the allowed
axes, then the folds. :class:`MemberRecorder` keeps each flip's prediction of a window apart
and accumulates it over the windows with nnU-Net's own operations (the Gaussian weight, the
float16 sum, the division by the summed weights), so a member equals what nnUNetPredictor gives
for one fold whose mirroring is that flip alone; the pipeline then brings it back to the input
grid as it brings the ensemble (:meth:`~.pipeline.NnUNetPipeline.recording_members`).
:class:`FlippedNetwork` is one member's network for the differentiable path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class FlippedNetwork(torch.nn.Module):
    """A fold's network that predicts each patch flipped along ``flip`` (nnU-Net's axes of the
    patch) and flips the prediction back: one mirror member of nnU-Net's test-time mirroring."""

    def __init__(self, network: torch.nn.Module, flip: tuple[int, ...]) -> None:
        super().__init__()
        self.network = network
        self.dims = [a + 2 for a in flip]

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        if not self.dims:
            return self.network(patch)
        out = self.network(torch.flip(patch, self.dims))
        # deep supervision: the first output is the full-size prediction
        out = out[0] if isinstance(out, (list, tuple)) else out
        return torch.flip(out, self.dims)


class MemberRecorder:
    """Accumulates one fold's per-flip window predictions, then hands each member on.

    Args:
        consumer: ``consumer(member index, logits on the input grid)``, members numbered fold
            by fold, no flip first (:meth:`~.pipeline.NnUNetPipeline.member_pairs`).
        flips: mirror combinations per fold (no flip included).
    """

    def __init__(self, consumer: Callable[[int, torch.Tensor], None], flips: int) -> None:
        self.consumer = consumer
        self.flips = flips
        self.folds_done = 0
        self._sums: list[torch.Tensor] | None = None
        self._finished: list[torch.Tensor] = []

    def start_pass(self) -> None:
        """Forget what an earlier pass left (one that failed part way): number from 0."""
        self.folds_done = 0
        self._sums = None
        self._finished = []

    def add_window(
        self,
        target: tuple[slice, ...],
        predictions: list[torch.Tensor],
        gaussian: torch.Tensor,
        like: torch.Tensor,
        exact: bool,
    ) -> None:
        """Each flip's prediction of one window into its own sum, as the pipeline adds their
        mean into ``like`` (the ensemble's accumulator)."""
        if len(predictions) != self.flips:
            raise RuntimeError(f"{len(predictions)} predictions of a window, {self.flips} flips")
        if self._sums is None:
            self._sums = [torch.zeros_like(like) for _ in predictions]
        for total, prediction in zip(self._sums, predictions):
            if exact:  # nnUNetPredictor's in-place float16 accumulation
                prediction *= gaussian
                total[target] += prediction
            else:
                total[target] = total[target] + prediction * gaussian.to(prediction.dtype)

    def finish_fold(self, counts: torch.Tensor, inner: tuple[slice, ...], exact: bool) -> None:
        """Divide each member's sum by the windows' summed weights and crop the padding."""
        for total in self._sums or []:
            if exact:
                torch.div(total, counts, out=total)
            else:
                total = total / counts
            self._finished.append(total[inner])
        self._sums = None

    def emit(self, restore: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Hand the fold's members, brought to the input grid by ``restore``, to the consumer."""
        for flip, logits in enumerate(self._finished):
            self.consumer(self.folds_done * self.flips + flip, restore(logits))
        self._finished = []
        self.folds_done += 1
