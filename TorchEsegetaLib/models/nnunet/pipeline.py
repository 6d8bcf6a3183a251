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
    """(B, C, I, J, K) raw intensities -> (B, K, I, J, K) logits, as nnUNetPredictor computes them.

    Args:
        folds: one network per fold (nnU-Net's ``build_network_architecture`` with its weights).
        plan: the configuration's plans.
        mirror_axes: the checkpoint's ``inference_allowed_mirroring_axes`` (None: no mirroring).
        tile_step_size: nnUNetPredictor's, 0.5 by default.
        explain_fold: index into ``folds``: explanations use that fold alone without mirroring
            (faster); None explains the ensemble with mirroring, as it segments.
        out_channels: the networks' output channels, when known (it spares a pass for the
            gradient of a logit target without resampling).

    Explanations that go network call by network call (memory set by one window, layer maps
    of every window) use :meth:`windowed_pass` (:mod:`.windows`).
    """

    def __init__(
        self,
        folds: list[torch.nn.Module],
        plan: Plan,
        mirror_axes: tuple[int, ...] | None,
        tile_step_size: float = 0.5,
        explain_fold: int | None = None,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
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

    def explained(self) -> tuple[list[int], tuple[int, ...] | None]:
        """The folds (indices into :attr:`folds`) and mirror axes of the explained function."""
        if self.explain_fold is None:
            return list(range(len(self.folds))), self.mirror_axes
        return [self.explain_fold], None

    # -- the seams of explanations ----------------------------------------------------------
    @property
    def layer_networks(self) -> list[torch.nn.Module]:
        """The networks the explained function calls: a layer method's layer (named within one
        fold's network) is read in each of them."""
        return [self.folds[fold] for fold in self.explained()[0]]

    @property
    def window_size(self) -> tuple[int, ...]:
        """The spatial size of one network input (nnU-Net's patch)."""
        return tuple(self.plan.patch_size)

    def windowed_pass(self, x: torch.Tensor, target: Any = None) -> Any:
        """The explained function on ``x`` network call by network call
        (:class:`.windows.NnUNetPass`; the case must be frozen)."""
        from .windows import NnUNetPass

        return NnUNetPass(self, x, target)

    def window_reuse(
        self,
        x: torch.Tensor,
        target: Any,
        prepare: Callable[[torch.Tensor], torch.Tensor],
        cache_bytes: float | None = None,
    ) -> Any:
        """Scores of perturbed copies of ``x`` that run only the windows each perturbation
        touches, per fold and mirror combination (:class:`.reuse.NnUNetReuse`); None before the
        case is frozen."""
        if self.case is None:
            return None
        from .reuse import NnUNetReuse

        return NnUNetReuse(self, x, target, prepare, cache_bytes)

    def window_incidence(self, boxes: Sequence[Sequence[slice]]) -> tuple[Any, int] | None:
        """(boxes, windows) bool: the windows each perturbation box reaches after nnU-Net's
        preparation (:func:`.reuse.window_incidence`), and the network inputs per window (folds
        x mirror combinations); None before the case is frozen."""
        if self.case is None:
            return None
        from .reuse import window_incidence

        return window_incidence(self, self.case, boxes), self.inputs_per_window()

    def inputs_per_window(self) -> int:
        """Network inputs of one window in an explained pass: folds x mirror combinations."""
        folds, mirror = self.explained()
        return len(folds) * len(mirror_flips(mirror))

    def windows_per_pass(self, spatial_shape: Any = None) -> int:
        """Network inputs per example in one explained pass: folds x windows x mirror combinations."""
        if self.case is None:
            raise RuntimeError("freeze_statistics() must be called before a windowed pass")
        return len(self.case.windows) * self.inputs_per_window()

    def score_gradients(
        self, x: torch.Tensor, target: Any
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(scores, d scores / d x) of the explained function, one window's mirror combinations
        at a time: equal to differentiating the whole pass, with memory set by one window's
        batch instead of every window's graph. None before the case is frozen."""
        if self.case is None:
            return None
        with torch.enable_grad():
            raw = x.detach().requires_grad_(True)
            passes = self.windowed_pass(raw, target)
            data = passes.data
            (grad,) = torch.autograd.grad(data, raw, grad_outputs=passes.data_gradient())
        return passes.scores(), grad

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
            folds, mirror = self.explained()
            # example by example: the network calls run in the order of a windowed pass's rows
            return torch.cat(
                [
                    self._run(x[b : b + 1], self.case, folds, mirror, exact=False)
                    for b in range(len(x))
                ]
            )
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
        data = self.prepare(x, case, exact)
        logits = None
        for fold in folds:
            network = fold if isinstance(fold, torch.nn.Module) else self.folds[fold]
            fold_logits = self._sliding_window(network, data, case, mirror, exact)
            if self.member_recorder is not None:
                self.member_recorder.emit(lambda t: self.restore(t, case, exact=exact))
            logits = fold_logits if logits is None else logits + fold_logits
        assert logits is not None
        if len(folds) > 1:
            logits = logits / len(folds)
        return self.restore(logits, case, exact=exact)

    def prepare(self, x: torch.Tensor, case: Case, exact: bool = False) -> torch.Tensor:
        """Raw (B, C, I, J, K) on the input grid -> the networks' input grid, before padding:
        axis order and ``transpose_forward``, the crop, the normalisation, the resampling."""
        plan = self.plan
        data = x.permute(0, 1, 4, 3, 2).permute(0, 1, *[t + 2 for t in plan.transpose_forward])
        inside = (slice(None), slice(None), *case.crop)
        data = data[inside]
        data = torch.stack([norm(data[:, c]) for c, norm in enumerate(case.normalizations)], dim=1)
        if exact:
            return self._nnunet_resampling("data", data, case.to_model, case).to(x.dtype)
        return case.to_model(data)

    def restore(
        self, values: torch.Tensor, case: Case, outside: float | None = None, exact: bool = False
    ) -> torch.Tensor:
        """(B, K, *model grid) -> (B, K, I, J, K) on the input grid, as nnU-Net brings its
        predictions back: resampling (the plans' probabilities resampling), the crop undone,
        ``transpose_backward``, axis order. Outside the crop: background logits (``outside``
        None), or ``outside`` everywhere (maps: 0)."""
        plan = self.plan
        if exact:
            values = self._nnunet_resampling("probabilities", values, case.to_input, case).float()
        else:
            values = case.to_input(values)
        full = torch.full(
            (values.shape[0], values.shape[1], *case.shape),
            OUTSIDE_LOGIT if outside is None else outside,
            dtype=values.dtype,
            device=values.device,
        )
        if outside is None and not plan.regions:
            full[:, 0] = 0.0
        inside = (slice(None), slice(None), *case.crop)
        full[inside] = values
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
        if not mirror:
            prediction = network_output(network, patch)
            if keep is not None:
                keep.append(prediction.clone())
            return prediction
        combinations = mirror_flips(mirror)[1:]
        if exact:
            prediction = network_output(network, patch)
            if keep is not None:
                keep.append(prediction.clone())
            for flip in combinations:
                flipped = torch.flip(network_output(network, torch.flip(patch, flip)), flip)
                if keep is not None:
                    keep.append(flipped)
                prediction += flipped
            prediction /= len(combinations) + 1
            return prediction
        # all flips in one batch: one network call
        batch = torch.cat([patch] + [torch.flip(patch, flip) for flip in combinations])
        outputs = network_output(network, batch).split(patch.shape[0])
        total = outputs[0]
        if keep is not None:
            keep.append(outputs[0].clone())
        for flip, output in zip(combinations, outputs[1:]):
            if keep is not None:
                keep.append(torch.flip(output, flip))
            total = total + torch.flip(output, flip)
        return total / (len(combinations) + 1)


def mirror_flips(mirror: tuple[int, ...] | None) -> list[tuple[int, ...]]:
    """nnU-Net's test-time mirror combinations, in its order, as tensor dimensions of a
    (B, C, *patch) batch: () (no flip) first, then every non-empty combination of the axes."""
    axes = [a + 2 for a in mirror or ()]
    return [()] + [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]


def network_output(network: torch.nn.Module, patch: torch.Tensor) -> torch.Tensor:
    out = network(patch)
    # a network built with deep supervision returns one output per scale; the first is full size
    return out[0] if isinstance(out, (list, tuple)) else out
