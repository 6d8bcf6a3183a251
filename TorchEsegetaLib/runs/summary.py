"""summary.json: the run's recommendation (which map to look at first, the evidence, the caveats).

The recommendation itself is :func:`TorchEsegetaLib.metrics.recommendation.recommend`. Here it is
made complete where the model is at hand: a method that would be recommended (or tie with the
recommended one) but whose model randomisation check was not evaluated gets that check now, one
re-run of the method with every layer randomised at once (``steps=1``: the same final state
as the cascade's last step), until the recommendation no longer depends on an unchecked map.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.atomic import atomic_write
from ..io.paths import regular_file_inside
from ..metrics.evidence import SANITY_METRIC
from ..metrics.recommendation import pending_checks, recommend

if TYPE_CHECKING:
    from ..metrics import Case, Subject
    from ..metrics.results import Evaluation
    from .case import ProgressHandler

SUMMARY_FILE = "summary.json"
#: the randomisation check run for the candidates when the evaluation has none
CANDIDATE_CHECK_PARAMS = {"steps": 1}


def method_names(record: Mapping[str, Any]) -> dict[str, str]:
    """Method label -> registry name, from a run.json record."""
    methods = record.get("methods", [])
    return {m.get("label", m["name"]): m["name"] for m in methods if "name" in m}


def check_candidates(
    case: Case,
    subjects: list[Subject],
    evaluation: Evaluation,
    older: Evaluation | None = None,
    names: Mapping[str, str] | None = None,
    progress: ProgressHandler | None = None,
) -> Evaluation:
    """``evaluation`` with the randomisation check of every method the recommendation needs it
    for (see the module docstring); methods checked before (in ``older``) are not re-run."""
    from ..metrics import MetricSpec
    from .evaluation import evaluate_case

    by_label = {s.label: s for s in subjects}
    tried: set[str] = set()
    while True:
        merged = evaluation.over(older) if older is not None else evaluation
        pending = [
            label
            for label in pending_checks(recommend(merged, names))
            if label in by_label and label not in tried
        ]
        if not pending:
            return evaluation
        tried.update(pending)
        params = merged.metrics.get(SANITY_METRIC, {}).get("params") or CANDIDATE_CHECK_PARAMS
        spec = MetricSpec(SANITY_METRIC, dict(params))
        checked = evaluate_case(case, [by_label[label] for label in pending], [spec], progress)
        evaluation = checked.over(evaluation)


def summary_of(folder: Path, record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The folder's summary.json, or (a run evaluated before summaries existed) one computed
    from run.json's evaluation; None when the run was not evaluated."""
    # only the folder's own regular file: a link out of the folder or a FIFO is not read
    path = regular_file_inside(folder, SUMMARY_FILE)
    if path is not None:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            pass  # damaged: recompute it from the scores the run keeps
    if "scores" not in (record.get("metrics") or {}):
        return None  # not evaluated (or by a version before evaluations had their scores)
    from ..metrics.results import Evaluation

    return recommend(Evaluation.from_json(record["metrics"]), method_names(record))


def write_summary(
    folder: Path, evaluation: Evaluation, record: Mapping[str, Any]
) -> dict[str, Any]:
    """Write summary.json for the folder's (merged) evaluation; returns it."""
    summary = recommend(evaluation, method_names(record))
    atomic_write(Path(folder) / SUMMARY_FILE, json.dumps(summary, indent=2))
    return summary
