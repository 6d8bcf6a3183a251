"""An evaluation as a plain-text table for a terminal or a log: what ``torchesegeta evaluate``
and ``--evaluate`` print.

Methods are columns (most faithful first: the recommendation's order) under their full names,
wrapped over several header lines rather than cut; the first row is the recommendation's
faithfulness score, then the metrics under their titles, each with its direction in words.
When the methods do not fit the width, the table continues in further blocks of columns, each
repeating the row names. Below it: each metric's unit and caveat, and every note once per
metric (a metric that could not run for any method says so in one line).
"""

from __future__ import annotations

import shutil
import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .results import Evaluation

_DIRECTION = {"higher": "higher is better", "lower": "lower is better"}
_GAP = 2
_MIN_COLUMN = 9
_HEADER_WRAP = 12


def format_evaluation(evaluation: Evaluation, width: int | None = None) -> str:
    """The evaluation as text lines fitting ``width`` characters (default: the terminal's)."""
    from .results import format_value

    if width is None:
        width = shutil.get_terminal_size((100, 24)).columns
    width = max(int(width), 80)  # the row names alone take about 50
    summary = evaluation.recommendation()
    rows = evaluation.rows(summary)
    metrics = list(evaluation.metrics)
    intro = (
        f"Scores of {len(rows)} method(s) by {len(metrics)} metric(s); columns: methods, most "
        "faithful first (faithfulness: the mean of deletion and insertion against random "
        "block orders and faithfulness correlation; 0 is no better than chance)."
    )
    if evaluation.score:
        intro += f" score = {evaluation.score}."
    lines = textwrap.wrap(intro, width)
    if not rows or not metrics:
        return "\n".join(lines)

    units = {m: evaluation.unit_and_caveat(m) for m in metrics}
    marks = {m: f" [{i}]" for i, m in enumerate((m for m in metrics if units[m][1]), 1)}
    labels = [("faithfulness (0: chance)", "higher is better")] + [
        (
            _metric_title(evaluation, m) + marks.get(m, ""),
            _DIRECTION[evaluation.metrics[m]["direction"]],
        )
        for m in metrics
    ]
    columns = []
    for row in rows:
        header = textwrap.wrap(
            evaluation.title(row["method"]), _HEADER_WRAP, break_long_words=False
        )
        cells = [format_value(row["faithfulness"])] + [format_value(row[m]) for m in metrics]
        columns.append((header, cells, max(_MIN_COLUMN, *map(len, header), *map(len, cells))))

    left = [
        max(len(title), *(len(label[i]) for label in labels))
        for i, title in enumerate(("metric", "better"))
    ]
    fixed = left[0] + _GAP + left[1]
    for block in _blocks([size for _, _, size in columns], width - fixed):
        lines += [""] + _block_lines([columns[i] for i in block], labels, left)

    lines += ["", "Units, and [n] what to know before comparing methods:"]
    for name in metrics:
        unit, caveat = units[name]
        text = f"{_metric_title(evaluation, name)} ({name}): {unit}"
        if caveat:
            text += f".{marks[name]} {caveat[0].upper()}{caveat[1:]}."
        lines += _indented(text, width)
    notes = evaluation.grouped_notes()
    if notes:
        lines += ["", "Notes:"]
        for name, labels_noted, text in notes:
            every = set(labels_noted) >= set(evaluation.scores)
            who = "every method" if every else ", ".join(map(evaluation.title, labels_noted))
            lines += _indented(f"{name} ({who}): {text}", width)
    lines += ["", "Recommendation (summary.json):"]
    lines += _indented(recommendation_line(summary, evaluation), width)
    seconds = [f"{m} {evaluation.seconds[m]:.2f}s" for m in metrics if m in evaluation.seconds]
    if seconds:
        lines += [""] + textwrap.wrap(f"Evaluation time, all methods: {', '.join(seconds)}", width)
    return "\n".join(lines)


def _block_lines(
    columns: list[tuple[list[str], list[str], int]],
    labels: list[tuple[str, str]],
    left: list[int],
) -> list[str]:
    """One block of method columns: the wrapped headers (bottom-aligned), a rule, the rows."""
    gap = " " * _GAP
    depth = max(len(header) for header, _, _ in columns)
    lines = []
    for level in range(depth):
        last = level == depth - 1
        line = (
            ("metric".ljust(left[0]) + gap + "better".ljust(left[1]))
            if last
            else " " * (left[0] + _GAP + left[1])
        )
        for header, _, size in columns:
            index = level - (depth - len(header))
            line += gap + (header[index] if index >= 0 else "").rjust(size)
        lines.append(line.rstrip())
    lines.append("-" * (left[0] + _GAP + left[1] + sum(_GAP + size for _, _, size in columns)))
    for r, (name, better) in enumerate(labels):
        values = "".join(gap + cells[r].rjust(size) for _, cells, size in columns)
        lines.append(name.ljust(left[0]) + gap + better.ljust(left[1]) + values)
    return lines


def _indented(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width - 2, initial_indent="  ", subsequent_indent="    ")


def _metric_title(evaluation: Evaluation, name: str) -> str:
    return evaluation.metrics[name].get("title") or name


def _blocks(sizes: list[int], room: int) -> list[list[int]]:
    """Consecutive column indices per block: as few blocks as fit ``room``, of even length."""
    for count in range(1, len(sizes) + 1):
        per = -(-len(sizes) // count)
        blocks = [list(range(i, min(i + per, len(sizes)))) for i in range(0, len(sizes), per)]
        if all(sum(_GAP + sizes[i] for i in block) <= room for block in blocks):
            return blocks
    return [[i] for i in range(len(sizes))]


def recommendation_line(summary: dict, evaluation: Evaluation) -> str:
    """The recommendation in one sentence, with the first caveat that matters."""
    from .recommendation import TIED

    entries = {e["method"]: e for e in summary["ranking"]}
    if summary["recommended"]:
        entry = entries[summary["recommended"]]
        text = (
            f"look first at {entry['title']}: faithfulness {format_score(entry)}, "
            f"randomisation check {entry['sanity']['status']}."
        )
    elif summary["verdict"] == TIED:
        names = ", ".join(entries[label]["title"] for label in summary["tied"])
        text = f"no clear winner between {names}; look at them side by side."
    else:
        text = "no map is recommended."
    return text + " " + summary["caveats"][0] if summary["caveats"] else text


def format_score(entry: dict) -> str:
    """A ranking entry's score with its interval: ``0.31 (0.28 to 0.33)``."""
    from .results import format_value

    text = format_value(entry.get("score"))
    if entry.get("interval"):
        low, high = entry["interval"]
        text += f" ({format_value(low)} to {format_value(high)})"
    return text
