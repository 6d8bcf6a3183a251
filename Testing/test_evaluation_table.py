"""The evaluation table that `torchesegeta evaluate` and `--evaluate` print: full names, a header
on every column, directions in words, units and caveats, each note once."""

from __future__ import annotations

import re
import textwrap

import pytest

from TorchEsegetaLib.metrics import get_metric, metric_specs
from TorchEsegetaLib.metrics.results import Evaluation
from TorchEsegetaLib.metrics.table import format_evaluation

TITLES = {
    "lrp": "Layer-wise Relevance Propagation",
    "guided_backprop": "Guided Backpropagation",
    "ig_64": "Integrated Gradients (ig_64)",
    "saliency": "Saliency",
    "gradcam": "Grad-CAM",
    "feature_ablation": "Feature Ablation",
}
NO_REFERENCE = "skipped: no reference mask (give --param relevance_rank_accuracy.reference=FILE)"


def _evaluation() -> Evaluation:
    metrics = [spec.name for spec in metric_specs(["default"])]
    evaluation = Evaluation(
        metrics={name: get_metric(name).describe() for name in metrics},
        score="mean vessel logit over the predicted vessel mask (8358 voxels)",
    )
    for index, (label, title) in enumerate(TITLES.items()):
        evaluation.method_info[label] = {"seconds": 1.0, "title": title}
        evaluation.scores[label] = {
            name: (
                None if name == "relevance_rank_accuracy" else (index + 1) * 1.2345e-6 * (-1) ** k
            )
            for k, name in enumerate(metrics)
        }
        evaluation.notes[label] = {"relevance_rank_accuracy": NO_REFERENCE}
    evaluation.notes["saliency"]["entropy"] = "the map is zero everywhere"
    evaluation.seconds = dict.fromkeys(metrics, 0.5)
    return evaluation


def _blocks(text: str) -> list[list[str]]:
    """The table's blocks of columns: the paragraphs that hold a rule line."""
    paragraphs = [part.splitlines() for part in text.split("\n\n")]
    return [lines for lines in paragraphs if any(line.startswith("---") for line in lines)]


def _columns(block: list[str]) -> list[tuple[str, list[str]]]:
    """(header, values) of each method column of a block, read back from character positions."""
    rule = next(i for i, line in enumerate(block) if line.startswith("---"))
    header, rows = block[:rule], block[rule + 1 :]
    fixed = header[-1].index("better") + len("higher is better")
    edges = [m.end() + fixed for m in re.finditer(r"\S+", rows[0][fixed:])]
    starts = [fixed, *edges[:-1]]
    columns = []
    for start, end in zip(starts, edges):
        pieces = [line[start:end].strip() for line in header]
        values = [row[start:end].strip() for row in rows]
        columns.append((" ".join(p for p in pieces if p), values))
    return columns


@pytest.mark.parametrize("width", [80, 120, 240])
def test_every_method_column_has_its_full_name_as_header_and_every_line_fits(width):
    evaluation = _evaluation()
    text = format_evaluation(evaluation, width=width)
    assert all(len(line) <= width for line in text.splitlines()), text
    blocks = _blocks(text)
    assert len(blocks) == 1 if width == 240 else len(blocks) > 1
    columns = [column for block in blocks for column in _columns(block)]
    ranked = [row["method"] for row in evaluation.rows()]
    assert [header for header, _ in columns] == [TITLES[label] for label in ranked]
    for block in blocks:  # the two label columns have headers too
        rule = next(i for i, line in enumerate(block) if line.startswith("---"))
        assert block[rule - 1].split()[:2] == ["metric", "better"]
    for _, values in columns:
        assert len(values) == 1 + len(evaluation.metrics)  # faithfulness + one per metric
        assert all(re.fullmatch(r"-?[0-9.]+(e[-+][0-9]+)?|n/a", v) for v in values), values


def test_each_row_names_its_metric_in_full_with_its_direction_in_words():
    evaluation = _evaluation()
    text = format_evaluation(evaluation, width=120)
    rows = [line for block in _blocks(text) for line in block if not line.startswith("---")]
    for name, info in evaluation.metrics.items():
        direction = f"{info['direction']} is better"
        mine = [
            line
            for line in rows
            if line.startswith(info["title"] + " ") or line.startswith(info["title"] + " [")
        ]
        assert mine, (name, text)
        assert all(direction in line for line in mine)
        assert f"{info['title']} ({name}): {info['unit']}" in " ".join(text.split())
    # the recommendation's score leads, not a mean rank over incomparable metrics
    assert any(
        line.startswith("faithfulness (0: chance)") and "higher is better" in line for line in rows
    )
    assert not any(line.startswith("mean rank") for line in rows)
    assert f"score = {evaluation.score}." in " ".join(text.split())


def test_normalised_infidelity_comes_first_and_says_why():
    text = format_evaluation(_evaluation(), width=120)
    lines = text.splitlines()
    normalised = next(
        i for i, line in enumerate(lines) if line.startswith("Infidelity (scale-normalised)")
    )
    raw = next(i for i, line in enumerate(lines) if re.match(r"Infidelity \[\d\]", line))
    assert normalised < raw
    flat = " ".join(text.split())
    mark = re.search(r"Infidelity \(scale-normalised\) (\[\d\])", lines[normalised]).group(1)
    assert (
        f"{mark} The infidelity to rank methods by: the raw one depends on each map's scale" in flat
    )
    assert "Grows with the square of the map's scale" in flat
    assert "on logits the area can be negative" in flat  # deletion and insertion's unit


def test_a_note_shared_by_every_method_is_printed_once():
    text = format_evaluation(_evaluation(), width=100)
    flat = " ".join(text.split())
    assert flat.count(NO_REFERENCE) == 1
    assert f"relevance_rank_accuracy (every method): {NO_REFERENCE}" in flat
    assert "entropy (Saliency): the map is zero everywhere" in flat


def test_evaluations_saved_before_units_get_them_from_the_registry():
    evaluation = _evaluation()
    for info in evaluation.metrics.values():
        info.pop("unit"), info.pop("caveat")
    text = " ".join(format_evaluation(evaluation, width=100).split())
    assert f"Sparseness (Gini) (sparseness): {get_metric('sparseness').unit}" in text


def test_wrapped_headers_keep_every_word():
    for title in TITLES.values():
        assert " ".join(textwrap.wrap(title, 12, break_long_words=False)) == title
