"""One case as every method and metric sees it, and what explaining it gave.

:func:`prepare_case` segments the volume, fixes the target on the unperturbed prediction and
freezes the network's input statistics; the runner explains the prepared case and the
evaluation scores the explanations on the same one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from ..io.volume import Geometry, Volume
    from ..metrics.results import Evaluation
    from ..models.loading import LoadedModel
    from ..targets.spec import TargetSpec
    from .job import MethodSpec

#: progress(event) with event = {"stage", "fraction", "message", ["method", "index", "total"],
#: ["phase": "start" | "end" of a method or metric]}.
ProgressHandler = Callable[[dict[str, Any]], None]


@dataclass
class PreparedCase:
    """One case ready to be explained or evaluated: the model-grid input, the frozen forward
    and the bound target, exactly as every method sees them."""

    segmentation: Any
    x: Any
    info: Any
    bound: Any
    forward: Any
    input_region: np.ndarray
    target_info: dict[str, Any]
    #: what the run's warnings must say about the target (an ROI's corners reordered or clipped)
    warnings: list[str] = field(default_factory=list)


def prepare_case(
    volume: Volume, model: LoadedModel, target: TargetSpec, torch_device: Any
) -> PreparedCase:
    """Segment ``volume``, fix the target on the unperturbed prediction, freeze the statistics."""
    from ..models.inference import SegmentationForward, segment
    from ..models.intensity import statistics_on
    from ..targets.bound import resolve_target, roi_box

    segmentation = segment(model, volume, torch_device)
    model_input = segmentation.input
    if model_input is None:
        raise ValueError("segment() gave no model input")
    x, info = model_input.x, model_input.grid
    bound, input_region = resolve_target(target, model.card, segmentation, volume.geometry)
    target_info = {**target.to_dict(), **bound.describe(model.card)}
    warnings: list[str] = []
    if target.kind == "roi":
        low, high, warnings = roi_box(target, volume.geometry)
        target_info["box"] = {"start": low, "end": high, "coordinates": "voxel"}
    forward = SegmentationForward(model.network, model.card).to(torch_device)
    x = x.to(torch_device)
    forward.frozen_statistics = statistics_on(model_input.statistics, torch_device)
    forward.fills = {k: mask.to(torch_device) for k, mask in model_input.fills.items()}
    freeze = getattr(model.network, "freeze_statistics", None)
    if callable(freeze):  # a network with input-dependent steps of its own (nnU-Net's pipeline)
        freeze(x)
    # Sliding-window models: only the windows that touch the target run (exact; see windows.py).
    forward.restrict_to(bound.region.cpu().numpy())
    if forward.sliding:
        target_info["windows"] = forward.window_usage(x.shape[2:])
    bound.region = bound.region.to(torch_device)
    return PreparedCase(segmentation, x, info, bound, forward, input_region, target_info, warnings)


@dataclass
class MethodResult:
    """One method's outcome. ``attribution`` is (C, I, J, K) on the input grid, None unless ok."""

    spec: MethodSpec
    status: str
    seconds: float
    signed: bool
    shared_channels: bool
    attribution: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    message: str = ""
    #: {"peak_memory_mb", "memory_kind"} of the method's run (see :mod:`~TorchEsegetaLib.engine.memory`).
    memory: dict[str, Any] = field(default_factory=dict)
    #: the cost estimated before the run (see :mod:`.cost`), beside the actual ``seconds``
    estimate: dict[str, Any] = field(default_factory=dict)
    #: what the run did beyond its map, by topic (``window_reuse``: windows run and skipped, cache)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def map(self) -> np.ndarray | None:
        """The (I, J, K) map: channels summed, or the common map of channel-shared methods."""
        if self.attribution is None:
            return None
        return self.attribution[0] if self.shared_channels else self.attribution.sum(axis=0)


@dataclass
class ExplainResult:
    """Everything :func:`explain_volume` computed, on the input grid."""

    geometry: Geometry
    image: np.ndarray
    probabilities: np.ndarray
    labelmap: np.ndarray
    target: dict[str, Any]
    region: np.ndarray
    methods: list[MethodResult]
    device: str
    seed: int
    timings: dict[str, float]
    warnings: list[str]
    #: What the run was computed from, kept so it can be evaluated (:func:`.evaluation.evaluate_result`).
    volume: Volume | None = None
    model: LoadedModel | None = None
    target_spec: TargetSpec | None = None
    max_batch: int | None = None
    #: the scores of the maps, when the job asked for metrics (:func:`.runner.explain_job`)
    evaluation: Evaluation | None = None

    @property
    def maps(self) -> dict[str, np.ndarray]:
        """label -> (I, J, K) map for every method that succeeded."""
        return {m.spec.label: m.map for m in self.methods if m.map is not None}

    def centre(self) -> tuple[int, int, int]:
        """Voxel at the centre of mass of the target region (for slices through it)."""
        points = np.argwhere(self.region)
        if len(points) == 0:
            return cast("tuple[int, int, int]", tuple(s // 2 for s in self.region.shape))
        centre = np.round(points.mean(axis=0)).astype(int)
        # The centroid of a curved region may fall outside it: take the region voxel nearest to it.
        nearest = points[np.argmin(((points - centre) ** 2).sum(axis=1))]
        return cast("tuple[int, int, int]", tuple(int(v) for v in nearest))
