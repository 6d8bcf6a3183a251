"""Uncertainty in a run: the maps of each kind the job lists, their summaries for the target,
their cost, and their place in the run folder.

Each kind's members are run one at a time on the case's frozen input (no gradients, the whole
volume) and folded into :class:`~TorchEsegetaLib.models.uncertainty.statistics.MemberStatistics`
on the input grid; members that are the segmentation itself are not run again, and nnU-Net's
ensemble members are taken from the segmentation's own passes
(:func:`segment_recording_members`). What is written, per kind: three maps on the input grid
(``uncertainty_<kind>_<quantity>``), one ``run.json`` "uncertainty" entry per map, and one
"uncertainty_summary" entry for the target (mean entropy and mutual information in the target
region, the share of the class's segmentation whose class flips between members, the class's
volume across members in mL).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CancelledError
from ..models.uncertainty import QUANTITIES, UncertaintySpec
from .cost import Estimate

if TYPE_CHECKING:
    import torch

    from ..engine.context import CancelToken
    from ..engine.denormals import DenormalFlush
    from ..io.volume import Geometry, Volume
    from ..models.inference import SegmentationResult
    from ..models.loading import LoadedModel
    from ..models.uncertainty.members import MemberForward
    from ..models.uncertainty.statistics import MemberStatistics
    from .case import ExplainResult, PreparedCase, ProgressHandler

#: What each map holds, for titles, legends and colour bars (short: figure rows).
TITLES = {
    "entropy": "predictive entropy",
    "mutual_information": "mutual information",
    "std": "std of the {} probability",
}
SHORT_TITLES = {"entropy": "entropy", "mutual_information": "mutual info.", "std": "std p({})"}
UNITS = {"entropy": "nats", "mutual_information": "nats", "std": "probability"}


@dataclass
class UncertaintyResult:
    """One kind's maps (I, J, K) on the input grid and its summary for the target."""

    spec: UncertaintySpec
    members: list[str]
    maps: dict[str, np.ndarray]
    summary: dict[str, Any]
    seconds: float = 0.0
    estimate: dict[str, Any] = field(default_factory=dict)

    def label(self, quantity: str) -> str:
        """Names the map's file and node: ``uncertainty_tta_entropy``."""
        return f"uncertainty_{self.spec.kind}_{quantity}"

    def title(self, quantity: str) -> str:
        """``predictive entropy (tta, 8 members)``."""
        what = TITLES[quantity].format(self.summary.get("class", "class"))
        return f"{what} ({self.spec.kind}, {len(self.members)} members)"


def segment_recording_members(
    model: LoadedModel,
    volume: Volume,
    device: torch.device,
    class_index: int,
    flush_denormals: bool | DenormalFlush = True,
) -> tuple[SegmentationResult, MemberStatistics]:
    """Segment ``volume`` (nnU-Net) and fold each ensemble member of its passes into statistics
    of the class ``class_index`` on the way (see
    :meth:`~TorchEsegetaLib.models.nnunet.pipeline.NnUNetPipeline.recording_members`).

    The first pass of a run may check denormal flushing first (:mod:`~TorchEsegetaLib.models.denormal_check`):
    a pass on a central box of the input is no member; where the box is the whole input, the
    check's two passes (flushed, exact) both record, and the statistics of the pass whose
    logits the segmentation keeps are returned."""
    from ..engine.denormals import DenormalFlush
    from ..models.inference import check_input, resolve_device, segment
    from ..models.pipeline import model_input
    from ..models.postprocessing import restored_probabilities
    from ..models.uncertainty.members import fold_mirror_names
    from ..models.uncertainty.statistics import MemberStatistics

    check_input(volume, model.card)
    prepared = model_input(volume, model.card)
    pipeline: Any = model.network
    names = fold_mirror_names(pipeline, list(model.source.get("folds") or []))
    flush = DenormalFlush.of(flush_denormals, resolve_device(device))
    passes: list[MemberStatistics] = []

    def fold_in(index: int, logits: torch.Tensor) -> None:
        if tuple(logits.shape[2:]) != tuple(volume.spatial_shape):
            return  # the denormal check's pass on a central box of the input
        if index == 0:
            passes.append(MemberStatistics(model.card.exclusive, class_index))
        probabilities = restored_probabilities(logits.float().cpu(), model.card, prepared.grid)
        passes[-1].add(probabilities, names[index])

    with pipeline.recording_members(fold_in):
        segmentation = segment(model, volume, device, prepared, flush)
    if not passes:
        raise RuntimeError("the segmentation recorded no ensemble member")
    # two whole passes: the check's flushed one, then its exact one (kept where flushing is not)
    kept = passes[0] if len(passes) == 2 and flush.active else passes[-1]
    return segmentation, kept


def plan_members(
    specs: list[UncertaintySpec], case: PreparedCase, model: LoadedModel, seed: int
) -> list[tuple[UncertaintySpec, MemberForward | None]]:
    """Each kind with its members on the whole volume (None: the segmentation recorded them)."""
    from ..models.uncertainty.members import build_members

    return [
        (
            spec,
            None
            if spec.kind in case.recorded
            else build_members(spec, model, case.whole_volume_forward(), case.x, seed),
        )
        for spec in specs
    ]


def estimates(
    planned: list[tuple[UncertaintySpec, MemberForward | None]],
    pass_seconds: float,
    warn_after_s: float,
) -> list[Estimate]:
    """Each kind's cost: its passes beyond the segmentation's, each as long as the segmentation."""
    from ..methods.base import Passes

    found = []
    for spec, members in planned:
        passes = 0 if members is None else members.extra_passes
        estimate = Estimate(
            f"uncertainty {spec.kind}", Passes(forward=passes), passes * pass_seconds, warn_after_s
        )
        if estimate.too_long and spec.kind != "ensemble":
            estimate.cheaper = [f"fewer members (--uncertainty {spec.kind}:members=4)"]
        found.append(estimate)
    return found


def compute_uncertainty(
    planned: list[tuple[UncertaintySpec, MemberForward | None]],
    case: PreparedCase,
    model: LoadedModel,
    progress: ProgressHandler | None = None,
    cancel: CancelToken | None = None,
) -> list[UncertaintyResult]:
    """Each kind's maps and summary (members the segmentation recorded are used as they are)."""
    import torch

    from ..models.postprocessing import restored_probabilities
    from ..models.uncertainty.statistics import MemberStatistics

    card, grid = model.card, case.info
    results = []
    for spec, members in planned:
        started = time.perf_counter()
        statistics = case.recorded.get(spec.kind)
        if statistics is None:
            assert members is not None
            statistics = MemberStatistics(card.exclusive, case.class_index)
            for index, name in enumerate(members.names):
                if cancel is not None and cancel.cancelled:
                    raise CancelledError("the run was cancelled")
                _emit(progress, index / len(members), f"uncertainty {spec.kind}: {name}")
                if index in members.reused:
                    logits = case.segmentation.logits
                else:
                    with torch.no_grad():
                        logits = members.member(index, case.x).float().cpu()
                statistics.add(restored_probabilities(logits, card, grid), name)
        maps = statistics.maps()
        class_name = card.class_names[case.class_index]
        assert case.geometry is not None
        summary = summarise(statistics, maps, case.input_region, case.geometry, class_name)
        result = UncertaintyResult(spec, statistics.names, maps, {"kind": spec.kind, **summary})
        result.seconds = time.perf_counter() - started
        results.append(result)
        _emit(progress, 1.0, f"uncertainty {spec.kind}: {statistics.count} members")
    return results


def _emit(progress: ProgressHandler | None, fraction: float, text: str) -> None:
    if progress is not None:
        progress({"stage": "uncertainty", "fraction": fraction, "message": text})


def summarise(
    statistics: MemberStatistics,
    maps: dict[str, np.ndarray],
    region: np.ndarray,
    geometry: Geometry,
    class_name: str,
) -> dict[str, Any]:
    """The kind's numbers for the target: see the module doc."""
    millilitres = float(np.prod(geometry.spacing)) / 1000.0
    volumes = [round(n * millilitres, 4) for n in statistics.class_voxels]
    inside = np.asarray(region, dtype=bool)
    return {
        "members": statistics.count,
        "class": class_name,
        "mean_entropy_in_target": float(maps["entropy"][inside].mean()) if inside.any() else None,
        "mean_mutual_information_in_target": (
            float(maps["mutual_information"][inside].mean()) if inside.any() else None
        ),
        "class_flip_share": round(statistics.class_flip_share(), 6),
        "class_volume_ml": {
            "min": min(volumes),
            "max": max(volumes),
            "range": round(max(volumes) - min(volumes), 4),
            "members": volumes,
        },
    }


def write_uncertainty(
    result: ExplainResult, out: Path, suffix: str, figures: bool, title: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Write each kind's maps (and the figure) into the run folder ``out``; returns run.json's
    "uncertainty" entries, its "uncertainty_summary" entries and the figure files."""
    from ..io.images import write_volume

    entries, summaries = [], []
    shown: dict[str, np.ndarray] = {}
    info = {}
    for found in result.uncertainty:
        for quantity in QUANTITIES:
            label = found.label(quantity)
            name = f"{label}{suffix}"
            write_volume(found.maps[quantity], result.geometry, out / name, dtype=np.float32)
            entries.append(
                {
                    "kind": found.spec.kind,
                    "quantity": quantity,
                    "file": name,
                    "members": len(found.members),
                    "label": label,
                    "title": found.title(quantity),
                    "unit": UNITS[quantity],
                }
            )
            shown[label] = found.maps[quantity]
            short = SHORT_TITLES[quantity].format(found.summary.get("class", "class"))
            info[label] = (
                f"{short} ({found.spec.kind})",
                f"{UNITS[quantity]}, {len(found.members)} members",
            )
        summaries.append(
            {
                **found.summary,
                "options": found.spec.to_dict(every=True),
                "member_names": found.members,
                "seconds": round(found.seconds, 4),
                "estimate": found.estimate,
            }
        )
    files: list[str] = []
    if figures and shown:
        from ..figures.uncertainty import write_uncertainty_figure

        path = write_uncertainty_figure(
            result.image,
            shown,
            info,
            result.geometry,
            result.centre(),
            out,
            segmentation=result.labelmap,
            region=result.region,
            title=title,
        )
        files.append(str(path.relative_to(out)))
    return entries, summaries, files
