"""nnU-Net's explained pass network call by network call (:class:`~..windowed.WindowedPass`).

The explained function (:class:`~.pipeline.NnUNetPipeline` with its case frozen) is, per example:
prepare the input (transpose, crop, normalise, resample to the plans' spacing, pad to the
patch), run each fold's network on each window under each mirror combination, flip each output
back, blend the windows with nnU-Net's Gaussian weights (each voxel divided by the weight of all
windows there), average the mirror combinations and the folds, then bring the blend back to the
input grid (resample as the probabilities, undo the crop, ``transpose_backward``). Everything
after the networks is linear in their outputs but the resampling's clip to the blend's range,
so:

* a row is one network input: (example, fold, window, mirror combination); a batch is one
  window of one fold with all its mirror combinations (nnU-Net's own batch of flips);
* the score's gradient with respect to a row's output is the gradient with respect to the
  blend, (pulled back through the resampling, crop and transposes by autograd), cut to the
  window, times the Gaussian, divided by the weight of all windows and by the number of flips
  and folds, and flipped into the row's frame;
* a map computed in a row's frame (a layer's map) is upsampled to the patch, flipped back, and
  blended, averaged and brought back exactly as that row's prediction is: the map is nnU-Net's
  prediction pipeline applied to per-window maps instead of per-window logits. Outside the crop
  box it is zero (those voxels never reach a network).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..windowed import Target, WindowedPass, upsampled
from .pipeline import mirror_flips, network_output

if TYPE_CHECKING:
    from .pipeline import NnUNetPipeline


@dataclass(frozen=True)
class WindowRow:
    """One network input of the pass: ``example`` of the batch, ``fold`` (index into the
    pipeline's folds), ``window`` (index into the case's windows), ``flip`` (tensor dimensions
    mirrored; () for none)."""

    example: int
    fold: int
    window: int
    flip: tuple[int, ...]


class NnUNetPass(WindowedPass):
    """The frozen pipeline's pass over ``x`` (B, C, I, J, K), one window's flips at a time."""

    def __init__(self, pipeline: NnUNetPipeline, x: torch.Tensor, target: Target | None = None):
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        if pipeline.case is None:
            raise RuntimeError("freeze_statistics() must be called before a windowed pass")
        self.pipeline, self.case, self.x, self.target = pipeline, pipeline.case, x, target
        self.folds, mirror = pipeline.explained()
        self.flips = mirror_flips(mirror)
        self.examples = x.shape[0]
        self.rows_per_example = len(self.folds) * len(self.case.windows) * len(self.flips)
        device, dtype = x.device, torch.float32
        patch = tuple(pipeline.plan.patch_size)
        self.gaussian = compute_gaussian(
            patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=device
        ).to(dtype)
        padded = [
            n + before + after
            for n, (before, after) in zip(self.case.to_model.new_shape, self.case.padding)
        ]
        self.counts = torch.zeros(padded, dtype=dtype, device=device)
        for window in self.case.windows:
            self.counts[window] += self.gaussian
        #: each row's weight in the blend, besides the Gaussian and the count
        self.share = 1.0 / (len(self.flips) * len(self.folds))
        self._data: torch.Tensor | None = None
        self._padded: torch.Tensor | None = None
        self._blended: torch.Tensor | None = None
        self._blend_gradient: torch.Tensor | None = None
        self._canvas: torch.Tensor | None = None

    # -- the input side ------------------------------------------------------------------
    @property
    def data(self) -> torch.Tensor:
        """The networks' input grid (B, C, *model shape) before padding, with the graph from
        :attr:`x` (differentiate through it to reach the raw intensities)."""
        if self._data is None:
            self._data = self.pipeline.prepare(self.x, self.case)
        return self._data

    def pad(self, t: torch.Tensor) -> torch.Tensor:
        pads = [p for before_after in reversed(self.case.padding) for p in before_after]
        return F.pad(t, pads) if any(pads) else t

    def inner(self, t: torch.Tensor) -> torch.Tensor:
        """The model grid inside the padded grid."""
        inner = tuple(slice(b, n - a) for (b, a), n in zip(self.case.padding, self.counts.shape))
        index = (slice(None), slice(None), *inner)
        return t[index]

    def _at(self, row: WindowRow) -> tuple[Any, ...]:
        """Index of ``row``'s window in a (B, C, *padded) tensor."""
        return (slice(row.example, row.example + 1), slice(None), *self.case.windows[row.window])

    def row_batches(self, progress=True):
        from ...engine.context import pass_progress

        total = self.examples * len(self.folds) * len(self.case.windows)
        done = 0
        for example in range(self.examples):
            for fold in self.folds:
                for window in range(len(self.case.windows)):
                    yield [WindowRow(example, fold, window, flip) for flip in self.flips]
                    done += 1
                    if progress is not None:
                        pass_progress(done / total if progress else None)

    def inputs(self, rows):
        padded = self.padded_data()
        patch = padded[self._at(rows[0])]
        return torch.cat([torch.flip(patch, row.flip) if row.flip else patch for row in rows])

    def padded_data(self) -> torch.Tensor:
        if self._padded is None:
            self._padded = self.pad(self.data.detach())
        return self._padded

    def network(self, rows):
        network = self.pipeline.folds[rows[0].fold]
        return lambda patch: network_output(network, patch)

    # -- back to the input grid ------------------------------------------------------------
    def blend_rows(self, rows: list[WindowRow], values: torch.Tensor) -> torch.Tensor:
        """``values`` of ``rows`` (one window's flips) in the window's frame, weighted: each
        flipped back, times the Gaussian and the row's share (not yet divided by the count)."""
        total = None
        for row, value in zip(rows, values):
            value = value[None]
            value = torch.flip(value, row.flip) if row.flip else value
            total = value if total is None else total + value
        assert total is not None
        return total * (self.gaussian * self.share)

    def add_maps(self, rows, maps):
        up = upsampled(maps, self.pipeline.plan.patch_size)
        if self._canvas is None:
            shape = (self.examples, up.shape[1], *self.counts.shape)
            self._canvas = torch.zeros(shape, dtype=up.dtype, device=up.device)
        self._canvas[self._at(rows[0])] += self.blend_rows(rows, up)

    def maps(self):
        if self._canvas is None:
            raise ValueError("no maps were added")
        blended = self.inner(self._canvas / self.counts.to(self._canvas.dtype))
        return self.pipeline.restore(blended, self.case, outside=0.0)

    # -- the score and its gradient -----------------------------------------------------------
    def blended(self) -> torch.Tensor:
        """The blend of every row's output on the model grid (B, K, *model shape), no graph;
        computed once, by a pass without gradients unless :meth:`data_gradient` ran first."""
        if self._blended is None:
            total: torch.Tensor | None = None
            with torch.no_grad():
                for rows in self.row_batches(progress=False):
                    total = self._accumulate(total, rows, self.network(rows)(self.inputs(rows)))
            self._blended = self._finish(total)
        return self._blended

    def _accumulate(
        self, total: torch.Tensor | None, rows: list[WindowRow], outputs: torch.Tensor
    ) -> torch.Tensor:
        if total is None:
            shape = (self.examples, outputs.shape[1], *self.counts.shape)
            total = torch.zeros(shape, dtype=outputs.dtype, device=outputs.device)
        total[self._at(rows[0])] += self.blend_rows(rows, outputs.detach())
        return total

    def _finish(self, total: torch.Tensor | None) -> torch.Tensor:
        assert total is not None
        return self.inner(total / self.counts.to(total.dtype))

    def scores(self):
        with torch.no_grad():
            return self._needs_target()(self.pipeline.restore(self.blended(), self.case))

    def gradient_needs_blend(self) -> bool:
        # a logit target through a linear restoring (no resampling, or a linear or nearest one,
        # whose clip never acts) has a gradient that does not depend on the blend
        linear = getattr(self.target, "output_gradient", None) is not None
        known = self.pipeline.out_channels is not None
        return not (linear and known and self.case.to_input.convex)

    def blend_gradient(self) -> torch.Tensor:
        """d score / d blend on the padded model grid (B, K, *padded shape), zero in the padding."""
        if self._blend_gradient is None:
            channels = self.pipeline.out_channels
            gradient = None
            if not self.gradient_needs_blend() and channels is not None:
                gradient = self.linear_blend_gradient(channels)
            if gradient is None:
                with torch.enable_grad():
                    leaf = self.blended().detach().requires_grad_(True)
                    restored = self.pipeline.restore(leaf, self.case)
                    (grad,) = torch.autograd.grad(self._needs_target()(restored).sum(), leaf)
                gradient = self.pad(grad) / self.counts
            self._blend_gradient = gradient
        return self._blend_gradient

    def linear_blend_gradient(self, channels: int) -> torch.Tensor | None:
        """d score / d blend on the padded model grid, divided by the windows' summed weight
        (so: the gradient with respect to the weighted sum of the rows' outputs), where the
        score is linear in the blend: a logit target of ``channels`` outputs restored by a
        linear resampling (convex: its clip never acts). None where it is not."""
        output_gradient = getattr(self._needs_target(), "output_gradient", None)
        if not callable(output_gradient) or not self.case.to_input.convex:
            return None
        gradient = output_gradient(channels, self.x.device, torch.float32)
        if gradient is None:
            return None
        shape = (self.examples, channels, *self.case.to_model.new_shape)
        with torch.enable_grad():
            leaf = torch.zeros(shape, device=self.x.device).requires_grad_(True)
            restored = self.pipeline.restore(leaf, self.case)
            (grad,) = torch.autograd.grad(restored, leaf, grad_outputs=gradient.expand_as(restored))
        return self.pad(grad) / self.counts

    def output_gradient(self, rows):
        window = self.blend_gradient()[self._at(rows[0])] * (self.gaussian * self.share)
        return torch.cat([torch.flip(window, row.flip) if row.flip else window for row in rows])

    def scores_replacing(self, rows, index, outputs, base):
        row = rows[index]
        change = outputs - base
        change = torch.flip(change, row.flip) if row.flip else change
        counts = self.counts[self.case.windows[row.window]]
        change = change * (self.gaussian * self.share) / counts
        blended = self.pad(self.blended()[row.example : row.example + 1])
        changed = blended.expand(len(outputs), *blended.shape[1:]).clone()
        at = (slice(None), slice(None), *self.case.windows[row.window])
        changed[at] += change
        with torch.no_grad():
            return self._needs_target()(self.pipeline.restore(self.inner(changed), self.case))

    def data_gradient(self) -> torch.Tensor:
        """d score / d :attr:`data`, one window's flips at a time (memory: one such batch's
        graph); the blend comes for free when it is not known yet. Windows the score's gradient
        does not reach (a local target far away) are skipped once the blend is known."""
        gradient = torch.zeros_like(self.padded_data())
        known = self._blended is not None
        total: torch.Tensor | None = None
        for rows in self.row_batches():
            share = self.output_gradient(rows)
            if known and not bool(share.any()):
                continue
            with torch.enable_grad():
                inputs = self.inputs(rows).requires_grad_(True)
                outputs = self.network(rows)(inputs)
                (grads,) = torch.autograd.grad(outputs, inputs, grad_outputs=share)
            back = [
                torch.flip(g[None], row.flip) if row.flip else g[None]
                for row, g in zip(rows, grads)
            ]
            gradient[self._at(rows[0])] += torch.stack(back).sum(0)
            if not known:
                total = self._accumulate(total, rows, outputs)
        if not known:
            self._blended = self._finish(total)
        return self.inner(gradient)
