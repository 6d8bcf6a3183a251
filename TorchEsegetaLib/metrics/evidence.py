"""What a recommendation is built from: each method's evidence (:class:`Candidate`), read from
one evaluated case (:func:`case_candidates`) or from a cohort's case summaries
(:func:`cohort_candidates`), with the draws that give its score a spread; :mod:`.recommendation`
decides from them.

The components are read from the faithfulness metrics' details: the deletion and insertion gains
against random block orders and the faithfulness correlation. The random parts of their
measurement are drawn again ``DRAWS`` times, paired across methods where they are shared (which
random order is the reference, which subsets are resampled) and per method where they are its own
(the map's tie order). Over a cohort the draws are bootstrap resamples of the cases.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .results import Evaluation

#: component -> (metric it is read from, what it is, in words)
COMPONENTS: dict[str, tuple[str, str]] = {
    "deletion_gain": ("deletion", "deletion against random block orders"),
    "insertion_gain": ("insertion", "insertion against random block orders"),
    "faithfulness_correlation": ("faithfulness_correlation", "faithfulness correlation"),
}
SANITY_METRIC = "model_randomisation"
#: metrics shown beside the recommendation for information, never weighed
SHOWN_ONLY = ("mass_in_target", "mass_in_dilated_target", "relevance_rank_accuracy")
DRAWS = 2000
#: a faithful method's score is above 0 in all but this share of the draws
FAITHFUL_QUANTILE = 0.05

PASSED, FAILED, NOT_CHECKED = "passed", "failed", "not checked"


@dataclass
class Candidate:
    """One method's evidence: point components, its score over the draws, its sanity check."""

    label: str
    title: str
    components: dict[str, float | None] = field(default_factory=dict)
    draws: np.ndarray | None = None
    sanity: str = NOT_CHECKED
    similarity: float | None = None
    threshold: float | None = None
    shown: dict[str, float | None] = field(default_factory=dict)
    layer: bool = False
    cases: int = 1
    failed_cases: int = 0
    #: the score where it is not the mean of the components (a cohort: the mean over cases)
    point: float | None = None

    @property
    def score(self) -> float | None:
        if self.draws is None:
            return None
        if self.point is not None:
            return self.point
        values = [v for v in self.components.values() if v is not None]
        return float(np.mean(values)) if values else None

    @property
    def faithful(self) -> bool:
        return self.draws is not None and float(np.quantile(self.draws, FAITHFUL_QUANTILE)) > 0


def shared_draws(evaluation: Evaluation, draws: int, rng: np.random.Generator) -> dict[str, Any]:
    """The draws every method shares: which random order is the reference, which subsets."""
    shared: dict[str, Any] = {}
    for component in ("deletion_gain", "insertion_gain"):
        metric = COMPONENTS[component][0]
        orders = max(
            (len(d.get("random_aucs", [])) for d in evaluation.details.get(metric, {}).values()),
            default=0,
        )
        shared[component] = rng.integers(0, orders, draws) if orders else None
    subsets = max(
        (
            len(d.get("drops", []))
            for d in evaluation.details.get("faithfulness_correlation", {}).values()
        ),
        default=0,
    )
    shared["faithfulness_correlation"] = (
        rng.integers(0, subsets, (draws, subsets)) if subsets else None
    )
    return shared


def component_draws(
    evaluation: Evaluation,
    component: str,
    label: str,
    shared: dict[str, Any],
    draws: int,
    seed: int,
    index: int,
) -> tuple[float, np.ndarray] | None:
    """(point value, values over the draws) of one component for one method, or None."""
    metric = COMPONENTS[component][0]
    detail = evaluation.details.get(metric, {}).get(label, {})
    if component == "faithfulness_correlation":
        value = evaluation.scores.get(label, {}).get(metric)
        explained = np.asarray(detail.get("explained", []), dtype=np.float64)
        drops = np.asarray(detail.get("drops", []), dtype=np.float64)
        if value is None:
            note = evaluation.notes.get(label, {}).get(metric, "")
            # A constant map explains none of the score's changes: no correlation.
            return (0.0, np.zeros(draws)) if "constant" in note else None
        if shared[component] is None or explained.size != shared[component].shape[1]:
            return float(value), np.full(draws, float(value))
        return float(value), resampled_correlation(explained, drops, shared[component], value)
    gain = detail.get("gain")
    if gain is None or shared[component] is None:
        return None
    areas = np.asarray(detail["aucs"], dtype=np.float64)
    randoms = np.asarray(detail["random_aucs"], dtype=np.float64)
    # Each map's own ties are its own noise: drawn per method, not shared.
    own = np.random.default_rng([seed, index, list(COMPONENTS).index(component)]).integers(
        0, areas.size, draws
    )
    sign = 1.0 if metric == "insertion" else -1.0
    values = sign * (areas[own] - randoms[shared[component] % randoms.size]) / detail["span"]
    return float(gain), values


def resampled_correlation(
    explained: np.ndarray, drops: np.ndarray, indices: np.ndarray, value: float
) -> np.ndarray:
    """Pearson r of each bootstrap resample of the (map sum, score drop) pairs."""
    a, b = explained[indices], drops[indices]
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / denominator
    # A resample of identical pairs has no correlation of its own: keep the point value there.
    return np.where(np.isfinite(r), r, value)


def has_component(evaluation: Evaluation, component: str) -> bool:
    """Whether any method has a value of the component (gains need random orders and a span)."""
    metric = COMPONENTS[component][0]
    if component == "faithfulness_correlation":
        return any(metric in s and s[metric] is not None for s in evaluation.scores.values())
    return any(d.get("gain") is not None for d in evaluation.details.get(metric, {}).values())


def read_sanity(evaluation: Evaluation, label: str, candidate: Candidate) -> None:
    detail = evaluation.details.get(SANITY_METRIC, {}).get(label)
    if detail is None or "passed" not in detail:
        return
    candidate.sanity = PASSED if detail["passed"] else FAILED
    candidate.similarity = evaluation.scores.get(label, {}).get(SANITY_METRIC)
    candidate.threshold = detail.get("threshold")


def is_layer(label: str, names: Mapping[str, str] | None) -> bool:
    from ..methods import REGISTRY

    cls = REGISTRY.get((names or {}).get(label, label))
    return cls is not None and cls.family == "layer"


def case_candidates(
    evaluation: Evaluation, method_names: Mapping[str, str] | None, draws: int, seed: int
) -> tuple[list[Candidate], dict[str, Any], list[str]]:
    """One evaluated case's candidates, the evidence's description and its caveats (see
    :func:`.recommendation.recommend`)."""
    rng = np.random.default_rng(seed)
    usable = [c for c in COMPONENTS if has_component(evaluation, c)]
    shared = shared_draws(evaluation, draws, rng)
    candidates = []
    for index, label in enumerate(evaluation.methods):
        candidate = Candidate(label, evaluation.title(label), layer=is_layer(label, method_names))
        found = {
            c: component_draws(evaluation, c, label, shared, draws, seed, index) for c in usable
        }
        candidate.components = {c: v[0] if v else None for c, v in found.items()}
        if usable and all(found.values()):
            candidate.draws = np.mean([v[1] for v in found.values() if v], axis=0)
        read_sanity(evaluation, label, candidate)
        scores = evaluation.scores.get(label, {})
        candidate.shown = {m: scores.get(m) for m in SHOWN_ONLY if m in evaluation.metrics}
        candidates.append(candidate)
    evidence = {
        "basis": "faithfulness (scale-free, higher is better), gated by the model randomisation check",
        "components": {c: COMPONENTS[c][1] for c in usable},
        "spread": "paired draws of the random parts of the measurement (reference random "
        "order, tie order, resampled subsets) of this one case",
        "draws": draws,
        "cases": 1,
    }
    caveats = []
    if not usable:
        caveats.append(
            "No faithfulness metric with a chance level was evaluated: evaluate deletion, "
            "insertion and faithfulness_correlation (the default metrics) to get a recommendation."
        )
    missing = [COMPONENTS[c][0] for c in COMPONENTS if c not in usable]
    if usable and missing:
        caveats.append(
            f"Ranked without {', '.join(missing)} (not evaluated, or without random orders): "
            "the evidence is thinner than it could be."
        )
    caveats.append(
        "One case: the spread is over the measurement's random draws on this case only; run a "
        "cohort (torchesegeta batch) for the spread over cases."
    )
    return candidates, evidence, caveats


def cohort_candidates(
    case_summaries: Mapping[str, Mapping[str, Any]], draws: int, seed: int
) -> tuple[list[Candidate], dict[str, Any], list[str]]:
    """A cohort's candidates from each case's summary, the evidence's description and its
    caveats (see :func:`.recommendation.recommend_cohort`)."""
    rng = np.random.default_rng(seed)
    cases = list(case_summaries)
    per_method: dict[str, dict[str, dict[str, Any]]] = {}
    titles: dict[str, str] = {}
    for case in cases:
        for entry in case_summaries[case].get("ranking", []):
            per_method.setdefault(entry["method"], {})[case] = entry
            titles.setdefault(entry["method"], entry.get("title") or entry["method"])
    resamples = rng.integers(0, len(cases), size=(draws, len(cases))) if cases else None
    candidates = []
    for label, by_case in per_method.items():
        candidate = Candidate(label, titles[label], cases=len(by_case))
        scored = {c: e["score"] for c, e in by_case.items() if e.get("score") is not None}
        if resamples is not None and len(scored) == len(cases):
            values = np.array([scored[c] for c in cases])
            candidate.draws = values[resamples].mean(axis=1)
            candidate.point = float(values.mean())
            for name in COMPONENTS:
                found = [(e.get("components") or {}).get(name) for e in by_case.values()]
                known = [v for v in found if v is not None]
                candidate.components[name] = (
                    float(np.mean(known)) if len(known) == len(found) else None
                )
        statuses = [(e.get("sanity") or {}).get("status", NOT_CHECKED) for e in by_case.values()]
        candidate.failed_cases = statuses.count(FAILED)
        if candidate.failed_cases:
            candidate.sanity = FAILED
        elif PASSED in statuses:
            candidate.sanity = PASSED
        candidate.layer = any(e.get("layer") for e in by_case.values())
        for name in SHOWN_ONLY:
            found = [(e.get("also") or {}).get(name) for e in by_case.values()]
            known = [v for v in found if v is not None]
            if known:
                candidate.shown[name] = float(np.mean(known))
        candidates.append(candidate)
    evidence = {
        "basis": "faithfulness (scale-free, higher is better), gated by the model randomisation check",
        "components": {c: COMPONENTS[c][1] for c in COMPONENTS},
        "spread": "bootstrap resamples of the cases",
        "draws": draws,
        "cases": len(cases),
    }
    caveats = []
    if len(cases) < 5:
        caveats.append(
            f"Only {len(cases)} case(s): a bootstrap over so few cases understates the spread."
        )
    partial = [c.title for c in candidates if c.cases < len(cases)]
    if partial:
        caveats.append(
            f"{', '.join(partial)} have no score on every case and are not compared with the others."
        )
    return candidates, evidence, caveats
