"""``torchesegeta evaluate`` and ``torchesegeta report``: score and present a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import EXIT_OK, metrics_from_args
from .progress import progress_display


def add_parsers(sub: Any) -> None:
    evaluate = sub.add_parser(
        "evaluate", help="score the maps of a run folder (metrics.csv, run.json, figures)"
    )
    evaluate.add_argument("run_folder", help="run folder written by explain, run or demo")
    evaluate.add_argument(
        "--metric",
        action="append",
        default=None,
        help="comma-separated metrics, 'default' (the default) or 'all' (see `torchesegeta metrics`)",
    )
    evaluate.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METRIC.NAME=VALUE",
        help="a metric parameter, e.g. deletion.steps=10",
    )
    evaluate.add_argument(
        "--method", default=None, help="comma-separated method labels to evaluate (default: all)"
    )
    evaluate.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    evaluate.set_defaults(handler=cmd_evaluate)

    report = sub.add_parser("report", help="write a self-contained report.html into a run folder")
    report.add_argument("run_folder", help="run folder written by explain, run or demo")
    report.set_defaults(handler=cmd_report)


def print_evaluation(evaluation: Any) -> None:
    from ..metrics.table import format_evaluation

    print(format_evaluation(evaluation))


def _check_writable(run_folder: str, what: str) -> None:
    """A read-only run folder fails now, before the work, not when the results are written."""
    from ..runs.destination import check_writable

    if Path(run_folder).is_dir():
        check_writable(Path(run_folder), f"{what} into {Path(run_folder).absolute()}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..runs.evaluation import evaluate_run

    _check_writable(args.run_folder, "the evaluation")
    metrics = metrics_from_args(args.metric, args.param)
    labels = [m.strip() for m in args.method.split(",") if m.strip()] if args.method else None
    bar = progress_display(args.quiet, stage="evaluate")
    try:
        evaluation = evaluate_run(
            args.run_folder, metrics, progress=bar, methods=labels, device=args.device
        )
    finally:
        bar.close()
    print(f"run folder: {Path(args.run_folder).absolute()} (metrics.csv, run.json, figures/)")
    print_evaluation(evaluation)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from ..runs.evaluation import read_record
    from ..runs.report import missing_files, write_report

    _check_writable(args.run_folder, "the report")
    path = write_report(args.run_folder)
    print(f"report: {path}")
    for name in missing_files(path.parent, read_record(path.parent)):
        print(
            f"warning: {name} is listed in run.json but missing from the run folder; the report flags it"
        )
    return EXIT_OK
