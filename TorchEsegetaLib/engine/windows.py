"""Sliding-window inference that can run a chosen subset of its windows, exactly.

A target's output voxels depend only on the windows that cover them: MONAI's sliding-window
inferer blends window predictions with fixed importance weights normalised by the weight of
*all* windows at each voxel (a constant). So, for a local target (an ROI box, a voxel, a small
mask) the windows that do not touch it can be skipped without changing the target's score or
any of its derivatives, and the input voxels outside the touched windows provably have zero
attribution. The window grid, importance map and padding are MONAI's own
(``dense_patch_slices``, ``compute_importance_map``), so a full plan reproduces
``sliding_window_inference`` (tested).

The same plan gives memory-bounded gradients (:meth:`WindowPlan.input_gradients`): the score's
gradient with respect to the blended output is known first, then each window's share is pulled
back through the network one window batch at a time and added into the input gradient. Peak
memory follows the window batch, not the volume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


#: ``paired(network, x, reference) -> (prediction of x, prediction of reference)``: one
#: network call on an input and on its reference (DeepLIFT), see :meth:`WindowPlan.input_gradients`.
PairedPass = Callable[
    [Callable[["torch.Tensor"], "torch.Tensor"], "torch.Tensor", "torch.Tensor"],
    tuple["torch.Tensor", "torch.Tensor"],
]


class WindowPlan:
    """MONAI's sliding-window grid over one spatial shape, with its blending weights.

    Args:
        spatial_shape: the (already preprocessed and padded-to-divisible) input's spatial shape.
        roi_size: window size.
        overlap: window overlap fraction.
        mode: "constant" or "gaussian" blending.
        sigma_scale: Gaussian sigma as a fraction of the window size (MONAI's default).
    """

    def __init__(
        self,
        spatial_shape: Sequence[int],
        roi_size: Sequence[int],
        overlap: float,
        mode: str = "constant",
        sigma_scale: float = 0.125,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        import torch
        from monai.data.utils import (
            compute_importance_map,
            dense_patch_slices,
            get_valid_patch_size,
        )
        from monai.inferers.utils import _get_scan_interval

        dtype = dtype or torch.float32
        self.input_shape = tuple(int(s) for s in spatial_shape)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.image_size = tuple(max(s, r) for s, r in zip(self.input_shape, self.roi_size))
        # MONAI pads an image smaller than the window symmetrically (extra voxel after).
        self.pad_before = tuple((i - s) // 2 for i, s in zip(self.image_size, self.input_shape))
        dims = len(self.input_shape)
        interval = _get_scan_interval(self.image_size, self.roi_size, dims, (overlap,) * dims)
        self.slices: list[tuple[slice, ...]] = list(
            dense_patch_slices(self.image_size, self.roi_size, interval)
        )
        valid = get_valid_patch_size(self.image_size, self.roi_size)
        self.importance = compute_importance_map(
            valid, mode=mode, sigma_scale=sigma_scale, device=device, dtype=dtype
        )
        self.count = torch.zeros(self.image_size, dtype=dtype, device=device)
        for window in self.slices:
            self.count[window] += self.importance
        self.indices: list[int] = list(range(len(self.slices)))

    # -- which windows matter -------------------------------------------------------------
    def windows_touching(self, region: np.ndarray) -> list[int]:
        """Indices of the windows that cover at least one voxel of ``region`` (input shape)."""
        padded = np.zeros(self.image_size, dtype=bool)
        padded[self._inner()] = np.asarray(region, dtype=bool)
        return [i for i, window in enumerate(self.slices) if padded[window].any()]

    def restrict(self, indices: Sequence[int]) -> None:
        """Run only these windows from now on (exact on the voxels they alone cover)."""
        self.indices = sorted(set(int(i) for i in indices))

    def support(self) -> np.ndarray:
        """Bool mask of the input voxels read by the windows in use."""
        covered = np.zeros(self.image_size, dtype=bool)
        for i in self.indices:
            covered[self.slices[i]] = True
        return covered[self._inner()]

    @property
    def fraction(self) -> float:
        """Share of the windows in use."""
        return len(self.indices) / len(self.slices)

    # -- inference ----------------------------------------------------------------------
    def pad(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        if self.image_size == self.input_shape:
            return x
        pads: list[int] = []
        for before, size, full in reversed(
            list(zip(self.pad_before, self.input_shape, self.image_size))
        ):
            pads.extend([before, full - size - before])
        return F.pad(x, pads)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        index = (slice(None), slice(None), *self._inner())
        return x[index]

    def _inner(self) -> tuple[slice, ...]:
        return tuple(slice(b, b + s) for b, s in zip(self.pad_before, self.input_shape))

    def window_batches(
        self, examples: int, batch_size: int, progress: bool | None = None
    ) -> Iterator[list[tuple[slice, ...]]]:
        """Index tuples (example, all channels, window) of the windows in use, ``batch_size``
        windows of one example at a time.

        After each batch is processed, with ``progress`` True the pass reports how far it is
        (:func:`~TorchEsegetaLib.engine.context.pass_progress`: the running method's progress bar
        moves, and cancel and time budget are checked); with False only cancel and budget
        are checked; with None nothing happens.
        """
        from .context import pass_progress

        batches = [
            [
                (slice(example, example + 1), slice(None), *self.slices[i])
                for i in self.indices[start : start + batch_size]
            ]
            for example in range(examples)
            for start in range(0, len(self.indices), batch_size)
        ]
        for done, rows in enumerate(batches, start=1):
            yield rows
            if progress is not None:
                pass_progress(done / len(batches) if progress else None)

    def infer(
        self, x: torch.Tensor, network: Callable[[torch.Tensor], torch.Tensor], batch_size: int
    ) -> torch.Tensor:
        """Blended prediction (B, K, *input shape); exact wherever only windows in use reach."""
        import torch

        padded = self.pad(x)
        out: torch.Tensor | None = None
        for rows in self.window_batches(x.shape[0], batch_size, progress=False):
            prediction = network(torch.cat([padded[r] for r in rows]))
            if out is None:
                out = torch.zeros(
                    (x.shape[0], prediction.shape[1], *self.image_size),
                    dtype=prediction.dtype,
                    device=prediction.device,
                )
            for row, r in enumerate(rows):
                out[r] += prediction[row : row + 1] * self.importance
        assert out is not None
        return self.crop(out / self.count.to(out.device))

    def input_relevance(
        self,
        x: torch.Tensor,
        network: Callable[[torch.Tensor], torch.Tensor],
        relevance: torch.Tensor,
        blended: torch.Tensor,
        batch_size: int,
        stabilise: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """LRP's pass back through the inferer, one window batch at a time.

        ``relevance`` is that of the blended output ``blended`` (both B, K, *input shape;
        ``blended = infer(x)``). The inferer sums importance-weighted window predictions and
        divides by a constant; the epsilon rule of those sums gives each window the share
        ``prediction * importance / stabilise(sum)`` of a voxel's relevance (the division passes
        it unchanged). ``network`` must return predictions whose backward carries relevance
        (LRP's rules); each window's share goes back through it and is added into the input.
        """
        import torch

        padded = self.pad(x.detach())
        count = self.count.to(x.device)
        upstream = self.pad(relevance) / stabilise(self.pad(blended) * count)
        out = torch.zeros_like(padded)
        for rows in self.window_batches(x.shape[0], batch_size, progress=True):
            with torch.enable_grad():
                data = torch.cat([padded[r] for r in rows]).requires_grad_(True)
                prediction = network(data)
                shares = torch.cat([upstream[r] for r in rows]) * prediction.detach()
                (window_relevance,) = torch.autograd.grad(
                    prediction, data, grad_outputs=shares * self.importance
                )
            for row, r in enumerate(rows):
                out[r] += window_relevance[row : row + 1]
        return self.crop(out)

    def input_gradients(
        self,
        x: torch.Tensor,
        network: Callable[[torch.Tensor], torch.Tensor],
        output_gradient: torch.Tensor,
        batch_size: int,
        reference: torch.Tensor | None = None,
        paired: PairedPass | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Gradient of ``sum(output_gradient * infer(x))`` w.r.t. ``x``, one window batch at a time.

        ``x`` is the network's input (already preprocessed); ``output_gradient`` has the shape
        of the blended output (B, K, *input shape). Returns (gradient, blended output, None);
        the output comes for free from the same window passes.

        With a ``reference`` input (DeepLIFT's baseline, same shape) and a ``paired`` pass,
        each window batch runs as ``paired(network, windows of x, same windows of reference)``,
        which returns both predictions, the one of ``x`` attached to a graph whose backward
        follows the pass's own rules; the third result is then the reference's blended output.
        Exact: the blending is linear, so the score's multipliers reach each window's
        prediction as the importance-weighted share of the output's.
        """
        import torch

        padded = self.pad(x.detach())
        padded_reference = self.pad(reference.detach()) if reference is not None else None
        count = self.count.to(x.device)
        upstream = self.pad(output_gradient) / count
        grad = torch.zeros_like(padded)
        out: torch.Tensor | None = None
        out_reference: torch.Tensor | None = None
        for rows in self.window_batches(x.shape[0], batch_size, progress=True):
            with torch.enable_grad():
                data = torch.cat([padded[r] for r in rows]).requires_grad_(True)
                if padded_reference is None or paired is None:
                    prediction, prediction_reference = network(data), None
                else:
                    data_reference = torch.cat([padded_reference[r] for r in rows])
                    prediction, prediction_reference = paired(network, data, data_reference)
                weights = torch.cat([upstream[r] for r in rows]) * self.importance
                (window_grad,) = torch.autograd.grad(prediction, data, grad_outputs=weights)
            if out is None:
                shape = (x.shape[0], prediction.shape[1], *self.image_size)
                out = torch.zeros(shape, dtype=prediction.dtype, device=x.device)
                if prediction_reference is not None:
                    out_reference = torch.zeros_like(out)
            for row, r in enumerate(rows):
                grad[r] += window_grad[row : row + 1]
                out[r] += prediction[row : row + 1].detach() * self.importance
                if out_reference is not None and prediction_reference is not None:
                    out_reference[r] += prediction_reference[row : row + 1] * self.importance
        assert out is not None
        blended_reference = None if out_reference is None else self.crop(out_reference / count)
        return self.crop(grad), self.crop(out / count), blended_reference


class WindowCanvas:
    """Blends maps computed window by window, as the inferer blends predictions: each added
    window map is weighted by the importance map; :meth:`result` divides by the weight of all
    windows at each voxel and crops to the input. Maps can arrive in any number of batches."""

    def __init__(
        self,
        plan: WindowPlan,
        examples: int,
        channels: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        import torch

        self.plan = plan
        self.importance = plan.importance.to(device, dtype)
        self.out = torch.zeros((examples, channels, *plan.image_size), dtype=dtype, device=device)

    def add(self, rows: Sequence[tuple[slice, ...]], maps: torch.Tensor) -> None:
        """``maps[i]`` (C, *roi_size) is the map of window ``rows[i]`` (as
        :meth:`WindowPlan.window_batches` yields them)."""
        for row, r in enumerate(rows):
            self.out[r] += maps[row : row + 1].to(self.out.dtype) * self.importance

    def result(self) -> torch.Tensor:
        count = self.plan.count.to(self.out.device, self.out.dtype)
        return self.plan.crop(self.out / count)


def divisible_crop(spatial: Sequence[int], multiple: int) -> tuple[slice, ...]:
    """Where an array of ``spatial`` shape sits inside its padded-to-``multiple`` version."""
    before = [((-n) % multiple) // 2 if multiple > 1 else 0 for n in spatial]
    return tuple(slice(b, b + n) for b, n in zip(before, spatial))


def pad_explicitly(
    x: torch.Tensor, padding: Sequence[tuple[int, int]]
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial dims by (before, after) each; returns the padded tensor and where
    the input sits in it."""
    import torch.nn.functional as F

    if not any(a or b for a, b in padding):
        return x, (slice(None),) * x.ndim
    pads = [p for a, b in reversed(list(padding)) for p in (a, b)]
    crop = (slice(None), slice(None)) + tuple(
        slice(a, a + n) for (a, _), n in zip(padding, x.shape[2:])
    )
    return F.pad(x, pads), crop


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the (preprocessed) spatial dims symmetrically, as MONAI's DivisiblePad does."""
    spatial = x.shape[2:]
    if multiple <= 1 or all(n % multiple == 0 for n in spatial):
        return x, (slice(None),) * x.ndim
    before = [((-n) % multiple) // 2 for n in spatial]
    after = [(-n) % multiple - b for n, b in zip(spatial, before)]
    return pad_explicitly(x, list(zip(before, after)))
