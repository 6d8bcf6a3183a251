"""An evaluation as a plain-text table for a terminal or a log: what ``torchesegeta evaluate``
and ``--evaluate`` print.

Methods are columns (best mean rank first) under their full names, wrapped over several header
lines rather than cut; metrics are rows under their titles, each with its direction in words.
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
    rows = evaluation.rows()
    metrics = list(evaluation.metrics)
    intro = (
        f"Scores of {len(rows)} method(s) by {len(metrics)} metric(s); columns: methods, "
        "best mean rank first."
    )
    if evaluation.score:
        intro += f" score = {evaluation.score}."
    lines = textwrap.wrap(intro, width)
    if not rows or not metrics:
        return "\n".join(lines)

    units = {m: evaluation.unit_and_caveat(m) for m in metrics}
    marks = {m: f" [{i}]" for i, m in enumerate((m for m in metrics if units[m][1]), 1)}
    labels = [("mean rank (over the metrics)", "lower is better")] + [
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
        cells = [format_value(row["mean_rank"])] + [format_value(row[m]) for m in metrics]
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
