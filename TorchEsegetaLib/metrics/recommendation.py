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
from typing import TYPE_CHECKING, Any

import numpy as np

from .evidence import (
    DRAWS,
    FAILED,
    FAITHFUL_QUANTILE,
    NOT_CHECKED,
    PASSED,
    Candidate,
    case_candidates,
    cohort_candidates,
)

if TYPE_CHECKING:
    from .results import Evaluation

FORMAT_VERSION = 1
#: the share of draws in which the recommended method must beat each other candidate
CONFIDENCE = 0.95
#: the recommended map may fall short of a perfect order (score 1) by at most this many times
#: the shortfall of the most faithful map of all
SHORTFALL_TOLERANCE = 1.5

RECOMMENDED = "recommended"
TIED = "no clear winner"
ELIGIBLE = "faithful, passed the check"
NOT_FAITHFUL = "no better than a random order"
FAILED_CHECK = "failed the randomisation check"
UNCHECKED = "faithful, randomisation check not run"
NOT_COMPARABLE = "not scored by every faithfulness metric"


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
    return decide(*case_candidates(evaluation, method_names, draws, seed))


def recommend_cohort(
    case_summaries: Mapping[str, Mapping[str, Any]], draws: int = DRAWS, seed: int = 0
) -> dict[str, Any]:
    """The recommendation over a cohort's cases, from each case's summary.json.

    A method's score is its mean over the cases; its spread, bootstrap resamples of the cases
    (paired: every method sees the same resample). A method that failed the randomisation check
    on any case is never recommended; one is eligible when it passed where it was checked.
    """
    return decide(*cohort_candidates(case_summaries, draws, seed))


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
