"""Which map to look at first, and why: a recommendation built only from evidence that compares
methods fairly, with its uncertainty.

Three measurements enter it, each scale-free and "higher is better", so that a map's units (a
gradient of 1e-7, a contribution of 0.3) cannot decide:

* ``deletion_gain`` and ``insertion_gain``: the area between the map's deletion (insertion) curve
  and that of random block orders, in units of the score's whole change (``details["gain"]`` of
  :mod:`.ordering`): 0 is chance, 1 the most any order can do;
* ``faithfulness_correlation``: Pearson r between the map's sum over random block subsets and
  the score's drop when they are removed.

A method's *score* is their mean. Localisation (mass in the target), complexity and raw
infidelity are reported beside it but never weigh in: a map may rightly use context outside the
target, a sparse map is not a truer one, and raw infidelity grows with the square of a map's
scale. The model randomisation check (Adebayo et al. 2018) is a gate, not a score: a map that
stays similar when the model's weights are randomised shows the image rather than the model and
is never recommended.

Uncertainty: within one case the score is recomputed over ``DRAWS`` paired draws of what was
random in its measurement (which random block order is the reference, the map's own tie
order, a bootstrap resample of the correlation's subsets); over a cohort, over bootstrap
resamples of the cases. A method is *faithful* when its score is above 0 (chance) in at least
95% of the draws; the best faithful method that passed the check is recommended when it beats
every other such method in at least ``CONFIDENCE`` of the draws, and otherwise the verdict is
"no clear winner" (``recommended`` null, the tied methods named).

One more rule keeps the gate from promoting a poor map: the recommended map must be nearly as
faithful as the most faithful map of all, checked or not. Its shortfall from a perfect order
(1 - score) may be at most ``SHORTFALL_TOLERANCE`` times the best map's. Where the maps that
follow the model best all fail the check (on a model whose dependence is fixed by its
architecture, a region it alone sees, every faithful map stays the same under randomised
weights) and only clearly weaker maps pass (layer maps, whose upsampled units spill over the
region's rim), nothing is recommended and the caveat says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .results import Evaluation

FORMAT_VERSION = 1
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
#: the share of draws in which the recommended method must beat each other candidate
CONFIDENCE = 0.95
#: a faithful method's score is above 0 in all but this share of the draws
FAITHFUL_QUANTILE = 0.05
#: the recommended map may fall short of a perfect order (score 1) by at most this many times
#: the shortfall of the most faithful map of all
SHORTFALL_TOLERANCE = 1.5

PASSED, FAILED, NOT_CHECKED = "passed", "failed", "not checked"
RECOMMENDED = "recommended"
TIED = "no clear winner"
ELIGIBLE = "faithful, passed the check"
NOT_FAITHFUL = "no better than a random order"
FAILED_CHECK = "failed the randomisation check"
UNCHECKED = "faithful, randomisation check not run"
NOT_COMPARABLE = "not scored by every faithfulness metric"


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


def recommend(
    evaluation: Evaluation,
    method_names: Mapping[str, str] | None = None,
    draws: int = DRAWS,
    seed: int = 0,
) -> dict[str, Any]:
    """The recommendation of one evaluated case, as summary.json holds it.

    Args:
        evaluation: the case's evaluation (its scores and the metrics' details).
        method_names: method label -> registry name (tells layer methods apart), optional.
        draws: number of paired draws of the measurement's random parts.
        seed: seed of the draws (the same evaluation gives the same summary).

    Returns:
        ``{"recommended", "look_first", "verdict", "ranking", "evidence", "caveats"}``.
    """
    rng = np.random.default_rng(seed)
    usable = [c for c in COMPONENTS if _usable(evaluation, c)]
    shared = _shared_draws(evaluation, draws, rng)
    candidates = []
    for index, label in enumerate(evaluation.methods):
        candidate = Candidate(label, evaluation.title(label), layer=_is_layer(label, method_names))
        found = {
            c: _component_draws(evaluation, c, label, shared, draws, seed, index) for c in usable
        }
        candidate.components = {c: v[0] if v else None for c, v in found.items()}
        if usable and all(found.values()):
            candidate.draws = np.mean([v[1] for v in found.values() if v], axis=0)
        _read_sanity(evaluation, label, candidate)
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
    return decide(candidates, evidence, caveats)


def recommend_cohort(
    case_summaries: Mapping[str, Mapping[str, Any]], draws: int = DRAWS, seed: int = 0
) -> dict[str, Any]:
    """The recommendation over a cohort's cases, from each case's summary.json.

    A method's score is its mean over the cases; its spread, bootstrap resamples of the cases
    (paired: every method sees the same resample). A method that failed the randomisation check
    on any case is never recommended; one is eligible when it passed where it was checked.
    """
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
    return decide(candidates, evidence, caveats)


def decide(
    candidates: list[Candidate], evidence: dict[str, Any], caveats: list[str]
) -> dict[str, Any]:
    """Rank the candidates, apply the gate and the confidence rule, and say it as JSON."""
    comparable = [c for c in candidates if c.draws is not None]
    comparable.sort(key=lambda c: -(c.score if c.score is not None else -math.inf))
    ordered = comparable + [c for c in candidates if c.draws is None]
    eligible = [c for c in comparable if c.faithful and c.sanity == PASSED]
    verdicts: dict[str, str] = {}
    for c in ordered:
        if c.draws is None:
            verdicts[c.label] = NOT_COMPARABLE
        elif not c.faithful:
            verdicts[c.label] = NOT_FAITHFUL
        elif c.sanity == FAILED:
            verdicts[c.label] = FAILED_CHECK
        elif c.sanity == NOT_CHECKED:
            verdicts[c.label] = UNCHECKED
        else:
            verdicts[c.label] = ELIGIBLE
    recommended, look_first, tied = None, None, []
    separation: dict[str, Any] = {}
    weaker = _too_weak(eligible, comparable)
    if weaker:
        separation = weaker
        eligible = []
    if eligible:
        best = eligible[0]
        look_first = best.label
        beats = {
            other.label: float(np.mean(best.draws > other.draws))  # type: ignore[operator]
            for other in eligible[1:]
        }
        tied = [label for label, share in beats.items() if share < CONFIDENCE]
        if beats:
            runner_up = eligible[1]
            separation = {"runner_up": runner_up.label, "p_better": beats[runner_up.label]}
        if tied:
            for label in [best.label, *tied]:
                verdicts[label] = TIED
        else:
            recommended = best.label
            verdicts[best.label] = RECOMMENDED
    evidence = {**evidence, "confidence": CONFIDENCE, "separation": separation}
    wins = _p_best(comparable)
    ranking = [_entry(c, verdicts[c.label], wins.get(c.label)) for c in ordered]
    reason, specific = _caveats(ordered, verdicts, recommended, tied, look_first, weaker)
    caveats = specific + caveats
    caveats.append(
        "Localisation (mass in the target) and map sparsity are shown but not weighed: a "
        "faithful map may rightly point outside the target, where the model finds context."
    )
    return {
        "format_version": FORMAT_VERSION,
        "recommended": recommended,
        "look_first": look_first,
        "tied": [look_first, *tied] if tied else [],
        "verdict": RECOMMENDED if recommended else (TIED if tied else "none"),
        "reason": reason,
        "ranking": ranking,
        "evidence": evidence,
        "caveats": caveats,
    }


def pending_checks(summary: Mapping[str, Any]) -> list[str]:
    """Methods whose randomisation check could change the recommendation, to check next: the
    best-ranked faithful unchecked method above the best eligible one (one at a time, best
    first: if it passes it leads), else every unchecked faithful method whose interval reaches
    the best eligible one's (they may tie with it). A map too far behind the most faithful one
    to be recommended (``SHORTFALL_TOLERANCE``) is never worth checking."""
    ranking = summary.get("ranking", [])
    scores = [e["score"] for e in ranking if e.get("score") is not None]
    if not scores:
        return []
    limit = SHORTFALL_TOLERANCE * max(1.0 - max(scores), 1e-12)
    candidates = [e for e in ranking if e["verdict"] == UNCHECKED and 1.0 - e["score"] <= limit]
    look_first = summary.get("look_first")
    for entry in ranking:
        if entry["method"] == look_first:
            break
        if entry in candidates:
            return [entry["method"]]
    if look_first is None:
        return []
    best = next(e for e in ranking if e["method"] == look_first)
    return [e["method"] for e in candidates if e["interval"][1] >= best["interval"][0]]


def _entry(c: Candidate, verdict: str, p_best: float | None) -> dict[str, Any]:
    interval = None
    if c.draws is not None:
        low, high = np.quantile(c.draws, [FAITHFUL_QUANTILE, 1 - FAITHFUL_QUANTILE])
        interval = [_round(low), _round(high)]
    sanity: dict[str, Any] = {"status": c.sanity}
    if c.similarity is not None:
        sanity.update(similarity=_round(c.similarity), threshold=c.threshold)
    if c.failed_cases:
        sanity["failed_cases"] = c.failed_cases
    return {
        "method": c.label,
        "title": c.title,
        "verdict": verdict,
        "score": _round(c.score),
        "interval": interval,
        "p_best": _round(p_best),
        "components": {k: _round(v) for k, v in c.components.items()},
        "sanity": sanity,
        "layer": c.layer,
        "also": {k: _round(v) for k, v in c.shown.items()},
    }


def _too_weak(eligible: list[Candidate], comparable: list[Candidate]) -> dict[str, Any]:
    """When the best eligible map falls short of the most faithful map by more than the
    tolerance: ``{"best_eligible", "most_faithful", "shortfall_ratio"}``; else {}."""
    if not eligible or not comparable:
        return {}
    candidate, best = eligible[0], comparable[0]
    shortfall, best_shortfall = 1.0 - candidate.score, 1.0 - best.score  # type: ignore[operator]
    if candidate is best or shortfall <= SHORTFALL_TOLERANCE * max(best_shortfall, 1e-12):
        return {}
    return {
        "best_eligible": candidate.label,
        "most_faithful": best.label,
        "shortfall_ratio": _round(shortfall / max(best_shortfall, 1e-12), 2),
    }


def _caveats(
    ordered: list[Candidate],
    verdicts: dict[str, str],
    recommended: str | None,
    tied: list[str],
    look_first: str | None,
    weaker: dict[str, Any],
) -> tuple[str, list[str]]:
    """(why nothing is recommended, or ""; the caveats) in words."""
    by_label = {c.label: c for c in ordered}
    caveats, reason = [], ""
    faithful = [c for c in ordered if c.draws is not None and c.faithful]
    best = faithful[0] if faithful else None
    limit = SHORTFALL_TOLERANCE * max(1.0 - (best.score or 0.0), 1e-12) if best else 0.0
    if weaker:
        candidate = by_label[weaker["best_eligible"]]
        leader = by_label[weaker["most_faithful"]]
        why = {FAILED: "failed the randomisation check", NOT_CHECKED: "was not checked"}
        reason = (
            f"{candidate.title} is the most faithful map that passed the randomisation check, "
            f"but it leaves {weaker['shortfall_ratio']:.1f} times as much of the score's "
            f"behaviour unexplained as {leader.title}, which {why.get(leader.sanity, 'passed')}: "
            "the evidence does not single out a map; compare them side by side."
        )
    elif not look_first and not faithful:
        reason = "no map follows the model clearly better than a random order of the voxels."
    elif not look_first:
        reason = (
            "the maps that follow the model best did not pass the randomisation check, and "
            "the others fall too far short of them to be recommended."
        )
    if tied and look_first:
        names = [by_label[label].title for label in [look_first, *tied]]
        caveats.append(
            f"No clear winner: {words_and(names)} are not separated by the evidence (each beats the "
            f"others in fewer than {CONFIDENCE:.0%} of the draws); look at them side by side."
        )
    failed = [c.title for c in ordered if verdicts[c.label] == FAILED_CHECK]
    if failed:
        they = "it reflects" if len(failed) == 1 else "they reflect"
        caveats.append(
            f"{words_and(failed)} stayed similar when the model's weights were randomised: {they} "
            "the image (or the network's fixed structure) more than its learned weights, and "
            f"{'is' if len(failed) == 1 else 'are'} never recommended."
        )
    first = by_label.get(look_first or "")
    low = (
        float(np.quantile(first.draws, FAITHFUL_QUANTILE))
        if first is not None and first.draws is not None
        else None
    )

    def clearly_behind(c: Candidate) -> bool:
        upper = float(np.quantile(c.draws, 1 - FAITHFUL_QUANTILE))  # type: ignore[arg-type]
        return 1.0 - (c.score or 0.0) > limit or (low is not None and upper < low)

    unchecked = [c for c in ordered if verdicts[c.label] == UNCHECKED]
    could_lead = [c.title for c in unchecked if not clearly_behind(c)]
    behind = [c.title for c in unchecked if clearly_behind(c)]
    if could_lead:
        caveats.append(
            f"The randomisation check was not run for {words_and(could_lead)} (evaluate with "
            f"--metric model_randomisation): {'it' if len(could_lead) == 1 else 'they'} cannot "
            "be recommended until it is."
        )
    if behind:
        ahead = first.title if first is not None else "the most faithful map"
        caveats.append(
            f"{words_and(behind)} {'falls' if len(behind) == 1 else 'fall'} clearly short of "
            f"{ahead}, so {'its' if len(behind) == 1 else 'their'} randomisation check was "
            "not run."
        )
    chosen = by_label.get(recommended or look_first or "")
    if chosen is not None and chosen.layer:
        caveats.append(
            f"{chosen.title} is a layer map: it shows where one layer of the network responds, "
            "upsampled to the image, so it cannot resolve detail finer than that layer's voxels."
        )
    return reason, caveats


def _p_best(comparable: list[Candidate]) -> dict[str, float]:
    if not comparable:
        return {}
    stacked = np.stack([c.draws for c in comparable])  # type: ignore[misc]
    winners = np.argmax(stacked, axis=0)
    return {c.label: float(np.mean(winners == i)) for i, c in enumerate(comparable)}


def _shared_draws(evaluation: Evaluation, draws: int, rng: np.random.Generator) -> dict[str, Any]:
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


def _component_draws(
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
        return float(value), _resampled_correlation(explained, drops, shared[component], value)
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


def _resampled_correlation(
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


def _usable(evaluation: Evaluation, component: str) -> bool:
    """Whether any method has a value of the component (gains need random orders and a span)."""
    metric = COMPONENTS[component][0]
    if component == "faithfulness_correlation":
        return any(metric in s and s[metric] is not None for s in evaluation.scores.values())
    return any(d.get("gain") is not None for d in evaluation.details.get(metric, {}).values())


def _read_sanity(evaluation: Evaluation, label: str, candidate: Candidate) -> None:
    detail = evaluation.details.get(SANITY_METRIC, {}).get(label)
    if detail is None or "passed" not in detail:
        return
    candidate.sanity = PASSED if detail["passed"] else FAILED
    candidate.similarity = evaluation.scores.get(label, {}).get(SANITY_METRIC)
    candidate.threshold = detail.get("threshold")


def _is_layer(label: str, names: Mapping[str, str] | None) -> bool:
    from ..methods import REGISTRY

    cls = REGISTRY.get((names or {}).get(label, label))
    return cls is not None and cls.family == "layer"


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), digits)


def words_and(items: list[Any]) -> str:
    """``a``, ``a and b``, ``a, b and c`` ("" for none): names in a sentence."""
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
