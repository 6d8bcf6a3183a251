"""nnU-Net v2's inference as one differentiable module: raw intensities in, logits out, both on
the input grid.

The steps are nnUNetPredictor's, in its order (``DefaultPreprocessor.run_case_npy``,
``predict_sliding_window_return_logits``, ``convert_predicted_logits_to_segmentation_with_correct_shape``):
axis order of SimpleITK arrays, ``transpose_forward``, crop to the nonzero bounding box,
normalisation, resampling to the plans' spacing, padding to the patch size, Gaussian-weighted
sliding windows with test-time mirroring, the mean over folds, resampling back, the crop
undone (background outside it), ``transpose_backward``.

What depends on the input other than linearly is fixed per case (:class:`Case`): the crop box and
nonzero mask and the normalisation statistics, computed as nnU-Net computes them. Before
:meth:`NnUNetPipeline.freeze_statistics` every call recomputes them from its input and follows
nnU-Net's numerics (float64 resampling, float16 accumulation of the windows as nnUNetPredictor
does), so the segmentation equals nnU-Net's. After it, the case of the unperturbed input is kept
and everything runs in float32: the function explained is that pipeline, smooth in the
intensities, with resampling (linear, clipped to the input's range) and sliding windows
differentiated exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .members import FlippedNetwork, MemberRecorder
from .normalization import ChannelNormalization, channel_normalization
from .resampling import Resampling, plan_resampling

#: Logit of the non-background channels outside the crop box (background: 0). nnU-Net puts
#: probability 1 on background there; exp(-1000) is exactly 0 in float32 as well.
OUTSIDE_LOGIT = -1000.0


@dataclass(frozen=True)
class Plan:
    """What the pipeline needs of nnU-Net's plans for one configuration."""

    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    normalization_schemes: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    intensity_properties: dict[str, dict]
    resampling_data: tuple[str, dict]
    resampling_probabilities: tuple[str, dict]
    regions: bool


@dataclass
class Case:
    """The per-case, input-dependent parts of the pipeline, as nnU-Net computes them."""

    crop: tuple[slice, ...]
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    target: tuple[float, ...]
    normalizations: list[ChannelNormalization]
    to_model: Resampling
    to_input: Resampling
    padding: tuple[tuple[int, int], ...]
    windows: list[tuple[Any, ...]]


class NnUNetPipeline(torch.nn.Module):
    #: why layer methods cannot map this model's layers onto the input grid (read by their preflight)
    layer_maps_refused = (
        "nnU-Net's layers see the image cropped, transposed, resampled and cut into mirrored "
        "patches, so a layer's map has no place on the input grid; use a gradient or "
        "perturbation method"
    )

    """(B, C, I, J, K) raw intensities -> (B, K, I, J, K) logits, as nnUNetPredictor computes them.

    Args:
        folds: one network per fold (nnU-Net's ``build_network_architecture`` with its weights).
        plan: the configuration's plans.
        mirror_axes: the checkpoint's ``inference_allowed_mirroring_axes`` (None: no mirroring).
        tile_step_size: nnUNetPredictor's, 0.5 by default.
        explain_fold: index into ``folds``: explanations use that fold alone without mirroring
            (faster); None explains the ensemble with mirroring, as it segments.
    """

    def __init__(
        self,
        folds: list[torch.nn.Module],
        plan: Plan,
        mirror_axes: tuple[int, ...] | None,
        tile_step_size: float = 0.5,
        explain_fold: int | None = None,
    ) -> None:
        super().__init__()
        self.folds = torch.nn.ModuleList(folds)
        self.plan = plan
        self.mirror_axes = tuple(mirror_axes) if mirror_axes else None
        self.tile_step_size = float(tile_step_size)
        self.explain_fold = explain_fold
        self.spacing: tuple[float, ...] | None = None
        self.case: Case | None = None
        #: while set, the segmentation also hands over each ensemble member (see
        #: :meth:`recording_members`)
        self.member_recorder: MemberRecorder | None = None

    # -- engine hooks ---------------------------------------------------------------------
    def bind_geometry(self, geometry: Any) -> None:
        """The grid of the volume about to be run (its spacing decides the resampling)."""
        self.spacing = tuple(float(s) for s in geometry.spacing)
        self.case = None

    def freeze_statistics(self, x: torch.Tensor) -> None:
        """Keep the case (crop, mask, statistics) of ``x``, the unperturbed input, for every later
        call, and switch to float32 throughout (see the module doc)."""
        self.case = self.analyse(x[0].detach().cpu().numpy())

    # -- the ensemble's members (uncertainty) -----------------------------------------------
    def member_pairs(self) -> list[tuple[int, tuple[int, ...]]]:
        """The ensemble's members, in the order nnU-Net sums them: (fold position, mirror axes)
        for every fold and every mirror combination, no mirroring first (nnU-Net's axes)."""
        axes = list(self.mirror_axes or ())
        flips = [c for i in range(len(axes) + 1) for c in itertools.combinations(axes, i)]
        return [(fold, tuple(flip)) for fold in range(len(self.folds)) for flip in flips]

    def input_mirror_axes(self) -> tuple[int, ...]:
        """The mirroring axes as axes of the input grid (i = 0, j = 1, k = 2)."""
        offset = 3 - len(self.plan.patch_size)  # a 2d configuration's patches skip axis 0
        forward = self.plan.transpose_forward
        return tuple(sorted(2 - forward[a + offset] for a in self.mirror_axes or ()))

    @contextmanager
    def recording_members(self, consumer: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
        """While active, every segmentation (nnU-Net's numerics) also hands each member of
        :meth:`member_pairs` to ``consumer(member index, logits (1, K, I, J, K) on the input
        grid)``: each fold's prediction with one mirror combination, accumulated over the
        windows and brought back exactly as nnUNetPredictor does for the ensemble. The passes
        are the segmentation's; only the accumulation and the resampling back are added."""
        self.member_recorder = MemberRecorder(consumer, len(self.member_pairs()) // len(self.folds))
        try:
            yield
        finally:
            self.member_recorder = None

    def member_forward(self, x: torch.Tensor, fold: int, flip: tuple[int, ...]) -> torch.Tensor:
        """One member of :meth:`member_pairs` as a differentiable function of ``x``: fold
        ``fold`` alone, each window predicted flipped along ``flip`` and flipped back, on the
        case of :meth:`freeze_statistics`, in float32."""
        if self.case is None:
            raise RuntimeError("freeze_statistics() must be called before running a member")
        return self._run(x, self.case, [FlippedNetwork(self.folds[fold], flip)], None, False)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.member_recorder is not None:
            self.member_recorder.start_pass()  # members are numbered per pass
        if self.case is not None:
            folds = range(len(self.folds)) if self.explain_fold is None else [self.explain_fold]
            mirror = self.mirror_axes if self.explain_fold is None else None
            return self._run(x, self.case, list(folds), mirror, exact=False)
        # nnU-Net's own numerics where no gradient is asked for (the segmentation)
        exact = not (torch.is_grad_enabled() and x.requires_grad)
        return torch.cat(
            [
                self._run(
                    x[b : b + 1],
                    self.analyse(x[b].detach().cpu().numpy()),
                    list(range(len(self.folds))),
                    self.mirror_axes,
                    exact=exact,
                )
                for b in range(x.shape[0])
            ]
        )

    def analyse(self, image: np.ndarray) -> Case:
        """The case of one (C, I, J, K) image: nnU-Net's crop, statistics and resampling plans."""
        from acvl_utils.cropping_and_padding.bounding_boxes import (
            bounding_box_to_slice,
            get_bbox_from_mask,
        )
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
        from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask
        from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

        if self.spacing is None:
            raise RuntimeError("bind_geometry() must be called before running an nnU-Net model")
        plan = self.plan
        # nnU-Net's array: SimpleITK's (k, j, i) order, C-contiguous, then transpose_forward
        data = np.ascontiguousarray(image.transpose(0, 3, 2, 1), dtype=np.float32)
        data = data.transpose([0, *[t + 1 for t in plan.transpose_forward]])
        spacing = tuple(self.spacing[::-1][t] for t in plan.transpose_forward)
        nonzero = create_nonzero_mask(data)
        crop = bounding_box_to_slice(get_bbox_from_mask(nonzero))
        inside = (slice(None), *crop)
        cropped, nonzero = data[inside], nonzero[crop]
        normalizations = [
            channel_normalization(
                plan.normalization_schemes[c],
                plan.use_mask_for_norm[c],
                plan.intensity_properties.get(str(c), {}),
                cropped[c],
                nonzero,
            )
            for c in range(cropped.shape[0])
        ]
        shape = tuple(cropped.shape[1:])
        target = tuple(plan.spacing)
        if len(target) < len(shape):  # 2d configurations keep the slice spacing
            target = (spacing[0], *target)
        new_shape = tuple(int(s) for s in compute_new_shape(shape, spacing, target))
        to_model = plan_resampling(*plan.resampling_data, shape, new_shape, spacing, target)
        to_input = plan_resampling(
            *plan.resampling_probabilities, new_shape, shape, target, spacing
        )
        # nnU-Net's pad_nd_image to at least the patch size, then its window steps
        patch = plan.patch_size
        lead = len(new_shape) - len(patch)
        padded = list(new_shape[:lead]) + [max(s, p) for s, p in zip(new_shape[lead:], patch)]
        padding = tuple(((p - s) // 2, (p - s) - (p - s) // 2) for s, p in zip(new_shape, padded))
        steps = compute_steps_for_sliding_window(padded[lead:], patch, self.tile_step_size)
        windows = [
            (*lead_index, *[slice(s, s + p) for s, p in zip(starts, patch)])
            for lead_index in itertools.product(*[range(n) for n in padded[:lead]])
            for starts in itertools.product(*steps)
        ]
        return Case(
            tuple(crop),
            tuple(data.shape[1:]),
            tuple(spacing),
            tuple(target),
            normalizations,
            to_model,
            to_input,
            padding,
            windows,
        )

    def _run(
        self,
        x: torch.Tensor,
        case: Case,
        folds: Sequence[int | torch.nn.Module],
        mirror: tuple[int, ...] | None,
        exact: bool,
    ) -> torch.Tensor:
        plan = self.plan
        data = x.permute(0, 1, 4, 3, 2).permute(0, 1, *[t + 2 for t in plan.transpose_forward])
        inside = (slice(None), slice(None), *case.crop)
        data = data[inside]
        data = torch.stack([norm(data[:, c]) for c, norm in enumerate(case.normalizations)], dim=1)
        if exact:
            data = self._nnunet_resampling("data", data, case.to_model, case).to(x.dtype)
        else:
            data = case.to_model(data)
        logits = None
        for fold in folds:
            network = fold if isinstance(fold, torch.nn.Module) else self.folds[fold]
            fold_logits = self._sliding_window(network, data, case, mirror, exact)
            if self.member_recorder is not None:
                self.member_recorder.emit(lambda t: self._restore(t, case, x.shape[0], exact))
            logits = fold_logits if logits is None else logits + fold_logits
        assert logits is not None
        if len(folds) > 1:
            logits = logits / len(folds)
        return self._restore(logits, case, x.shape[0], exact)

    def _restore(self, logits: torch.Tensor, case: Case, batch: int, exact: bool) -> torch.Tensor:
        """Logits on the network's grid -> the input grid: resampled back, the crop undone
        (background outside it), transposed back."""
        plan = self.plan
        if exact:
            logits = self._nnunet_resampling("probabilities", logits, case.to_input, case).float()
        else:
            logits = case.to_input(logits)
        full = torch.full(
            (batch, logits.shape[1], *case.shape),
            OUTSIDE_LOGIT,
            dtype=logits.dtype,
            device=logits.device,
        )
        if not plan.regions:
            full[:, 0] = 0.0
        inside = (slice(None), slice(None), *case.crop)
        full[inside] = logits
        full = full.permute(0, 1, *[t + 2 for t in plan.transpose_backward])
        return full.permute(0, 1, 4, 3, 2)

    def _nnunet_resampling(
        self, which: str, x: torch.Tensor, resampling: Resampling, case: Case
    ) -> torch.Tensor:
        """nnU-Net's own resampling function of the plans on a batch of one (no gradient): its
        float64 arithmetic and rounding to the input's dtype, bit for bit."""
        from nnunetv2.preprocessing.resampling.utils import recursive_find_resampling_fn_by_name

        name, kwargs = getattr(self.plan, f"resampling_{which}")
        function = recursive_find_resampling_fn_by_name(name)
        current, new = (
            (case.spacing, case.target) if which == "data" else (case.target, case.spacing)
        )
        out = function(x[0].detach().cpu().numpy(), resampling.new_shape, current, new, **kwargs)
        return torch.as_tensor(np.ascontiguousarray(out), device=x.device)[None]

    def _sliding_window(
        self,
        network: torch.nn.Module,
        data: torch.Tensor,
        case: Case,
        mirror: tuple[int, ...] | None,
        exact: bool,
    ) -> torch.Tensor:
        """nnUNetPredictor's ``predict_sliding_window_return_logits`` for one fold; with
        ``exact``, its float16 accumulators and order of operations."""
        import torch.nn.functional as F
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        from ...engine.context import pass_progress

        pads = [p for before_after in reversed(case.padding) for p in before_after]
        padded = F.pad(data, pads) if any(pads) else data
        gaussian = compute_gaussian(
            tuple(self.plan.patch_size),
            sigma_scale=1.0 / 8,
            value_scaling_factor=10,
            device=data.device,
        )
        accumulate = torch.half if exact else data.dtype
        if not exact:
            gaussian = gaussian.to(data.dtype)
        heads = None
        logits: torch.Tensor | None = None
        counts: torch.Tensor | None = None
        recorder = self.member_recorder
        for window in case.windows:
            index = (slice(None), slice(None), *window)
            kept: list[torch.Tensor] | None = [] if recorder is not None else None
            prediction = self._mirrored(network, padded[index], mirror, exact, kept)
            if logits is None or counts is None:
                heads = prediction.shape[1]
                logits = torch.zeros(
                    (data.shape[0], heads, *padded.shape[2:]), dtype=accumulate, device=data.device
                )
                counts = torch.zeros(padded.shape[2:], dtype=accumulate, device=data.device)
            target = (slice(None), slice(None), *window)
            if recorder is not None and kept is not None:
                recorder.add_window(target, kept, gaussian, logits, exact)
            if exact:
                prediction *= gaussian
                logits[target] += prediction
            else:
                logits[target] = logits[target] + prediction * gaussian
            counts[window] += gaussian
            pass_progress(None)  # cancel and time budget, window by window
        assert logits is not None and counts is not None and heads is not None
        if exact:
            torch.div(logits, counts, out=logits)
        else:
            logits = logits / counts
        inner = tuple(slice(b, n - a) for (b, a), n in zip(case.padding, padded.shape[2:]))
        index = (slice(None), slice(None), *inner)
        if recorder is not None:
            recorder.finish_fold(counts, index, exact)
        return logits[index]

    @staticmethod
    def _mirrored(
        network: torch.nn.Module,
        patch: torch.Tensor,
        mirror: tuple[int, ...] | None,
        exact: bool,
        keep: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """nnU-Net's ``_internal_maybe_mirror_and_predict``: the mean of the predictions of all
        flips along the allowed axes. ``keep`` receives each flip's own prediction (flipped
        back), no flip first."""
        prediction = _network(network, patch)
        if keep is not None:
            keep.append(prediction.clone())
        if not mirror:
            return prediction
        axes = [a + 2 for a in mirror]
        combinations = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        if exact:
            for flip in combinations:
                flipped = torch.flip(_network(network, torch.flip(patch, flip)), flip)
                if keep is not None:
                    keep.append(flipped)
                prediction += flipped
            prediction /= len(combinations) + 1
            return prediction
        # all flips in one batch: one network call
        batch = torch.cat([patch] + [torch.flip(patch, flip) for flip in combinations])
        outputs = _network(network, batch).split(patch.shape[0])
        total = outputs[0]
        for flip, output in zip(combinations, outputs[1:]):
            if keep is not None:
                keep.append(torch.flip(output, flip))
            total = total + torch.flip(output, flip)
        return total / (len(combinations) + 1)


def _network(network: torch.nn.Module, patch: torch.Tensor) -> torch.Tensor:
    out = network(patch)
    # a network built with deep supervision returns one output per scale; the first is full size
    return out[0] if isinstance(out, (list, tuple)) else out
