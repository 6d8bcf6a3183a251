"""Metrics of the map alone, on the input grid: where its mass lies (localisation) and how
concentrated it is (complexity). All use the magnitude |map|; none runs the model."""

from __future__ import annotations

import numpy as np

from ..errors import UserInputError
from ..schema.registry import Param
from .base import Case, Metric, Score, Subject, register


def dilated(
    region: np.ndarray, radius_mm: float, spacing: tuple[float, float, float]
) -> np.ndarray:
    """``region`` grown by ``radius_mm`` (physical distance, so anisotropic voxels are honoured)."""
    if radius_mm <= 0:
        return region
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(~region, sampling=spacing) <= radius_mm


def magnitude(subject: Subject) -> np.ndarray:
    return np.abs(subject.map.astype(np.float64))


def _radius_param(default: float) -> Param:
    return Param(
        "radius_mm",
        "float",
        default,
        "Grow the target region by this distance in mm before scoring (0: the region itself).",
        minimum=0.0,
        maximum=1000.0,
    )


class _MapMetric(Metric):
    needs_model = False
    cost = "negligible (the map only)"


@register
class MassInTarget(_MapMetric):
    name = "mass_in_target"
    title = "Mass in target"
    summary = "Share of the map's total |attribution| that lies inside the target region."
    family = "localisation"
    direction = "higher"
    unit = "share of |map|, 0 to 1"
    reference = "Arras et al. 2022 (relevance mass accuracy), arXiv:2003.07258"
    radius_mm = 0.0

    def evaluate(self, case: Case, subject: Subject) -> Score:
        values = magnitude(subject)
        total = values.sum()
        if total == 0:
            return Score.skipped("the map is zero everywhere")
        radius = self.config.get("radius_mm", self.radius_mm)
        inside = values[dilated(case.region, radius, case.spacing)].sum()
        return Score(float(inside / total))


@register
class MassInDilatedTarget(MassInTarget):
    name = "mass_in_dilated_target"
    title = "Mass in dilated target"
    summary = "Share of the map's total |attribution| within radius_mm of the target region."
    params = (_radius_param(2.0),)


@register
class PointingGame(_MapMetric):
    name = "pointing_game"
    title = "Pointing game"
    summary = (
        "Whether the map's maximum |attribution| lies inside the (dilated) target region: 1 or "
        "0, or the share of the maximal voxels inside when several tie."
    )
    family = "localisation"
    direction = "higher"
    unit = "share of the peak voxels inside, 0 to 1"
    reference = "Zhang et al. 2018, arXiv:1608.00507"
    params = (_radius_param(2.0),)

    def evaluate(self, case: Case, subject: Subject) -> Score:
        values = magnitude(subject)
        peak = values.max()
        if peak == 0:
            return Score.skipped("the map is zero everywhere")
        maxima = values == peak
        inside = dilated(case.region, self.config["radius_mm"], case.spacing)
        return Score(float((maxima & inside).sum() / maxima.sum()))


@register
class RelevanceRankAccuracy(_MapMetric):
    name = "relevance_rank_accuracy"
    title = "Relevance rank accuracy"
    summary = (
        "Share of the K voxels of highest |attribution| that lie inside a reference mask of K "
        "voxels (a ground-truth lesion or structure the user gives); skipped without one."
    )
    family = "localisation"
    direction = "higher"
    unit = "share of the top K voxels inside, 0 to 1"
    reference = "Arras et al. 2022, arXiv:2003.07258"
    params = (
        Param(
            "reference",
            "str",
            "",
            "Reference mask file on the input grid (empty: the array given to the API, else skipped).",
            file=True,
        ),
        Param(
            "label",
            "int",
            0,
            "Use only this label of the reference (0: every non-zero voxel).",
            minimum=0,
        ),
    )

    def reference_mask(self, case: Case) -> np.ndarray | None:
        if self.config["reference"]:
            from ..io.images import read_label

            if case.geometry is None:
                raise UserInputError("a reference mask file needs the image geometry of the case")
            labels = read_label(self.config["reference"], like=case.geometry)
        elif case.reference_mask is not None:
            labels = np.asarray(case.reference_mask)
        else:
            return None
        mask = labels == self.config["label"] if self.config["label"] else labels != 0
        if mask.shape != case.region.shape:
            raise UserInputError(
                f"the reference mask has shape {mask.shape} but the image has {case.region.shape}; "
                "resample it onto the image grid"
            )
        return mask

    def evaluate(self, case: Case, subject: Subject) -> Score:
        mask = case.cached(("reference", *self.config.values()), lambda: self.reference_mask(case))
        if mask is None:
            return Score.skipped(
                "skipped: no reference mask (give --param relevance_rank_accuracy.reference=FILE)"
            )
        count = int(mask.sum())
        if count == 0:
            return Score.skipped("the reference mask is empty")
        values = magnitude(subject).ravel()
        if values.max() == 0:
            return Score.skipped("the map is zero everywhere")
        top = np.argpartition(-values, count - 1)[:count]
        return Score(float(mask.ravel()[top].mean()))


@register
class Sparseness(_MapMetric):
    name = "sparseness"
    title = "Sparseness (Gini)"
    summary = "Gini index of |map| over all voxels: 0 when evenly spread, near 1 when a few voxels hold all of it."
    family = "complexity"
    direction = "higher"
    unit = "Gini index, 0 to 1"
    reference = "Chalasani et al. 2020, arXiv:1810.06583"

    def evaluate(self, case: Case, subject: Subject) -> Score:
        values = np.sort(magnitude(subject).ravel())
        total = values.sum()
        if total == 0:
            return Score.skipped("the map is zero everywhere")
        n = values.size
        ranks = np.arange(1, n + 1, dtype=np.float64)
        return Score(float(((2 * ranks - n - 1) * values).sum() / (n * total)))


@register
class Entropy(_MapMetric):
    name = "entropy"
    title = "Entropy"
    summary = (
        "Shannon entropy of |map| normalised to a distribution, divided by log(voxels): 1 for a "
        "uniform map, 0 when one voxel holds all of it."
    )
    family = "complexity"
    direction = "lower"
    unit = "entropy / log(voxels), 0 to 1"
    reference = "Bhatt et al. 2020 (complexity), arXiv:2005.00631"

    def evaluate(self, case: Case, subject: Subject) -> Score:
        values = magnitude(subject).ravel()
        total = values.sum()
        if total == 0:
            return Score.skipped("the map is zero everywhere")
        p = values[values > 0] / total
        return Score(float(-(p * np.log(p)).sum() / np.log(values.size)))
