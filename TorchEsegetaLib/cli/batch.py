"""``torchesegeta batch``: a job template over every case of a cohort (see :mod:`..cohort`).

Exit status: 0 every case has a run folder, 3 some case failed (the others ran; see
``failures.csv``), 2 bad input (nothing ran), 130 interrupted (what finished is kept and
summarised; the same command finishes the rest).
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import EXIT_INTERRUPTED


def add_parsers(sub: Any) -> None:
    batch = sub.add_parser(
        "batch",
        help="explain every case of a cohort (CSV file or folder) with one job template; resumable",
    )
    inputs = batch.add_argument_group("inputs")
    inputs.add_argument(
        "cohort",
        help="cohort CSV (case_id, image..., [reference], [target]) or a folder of images named "
        "CASE_0000.nii.gz, CASE_0001.nii.gz, ... (nnU-Net naming; labels/CASE.nii.gz as references)",
    )
    inputs.add_argument(
        "--job",
        required=True,
        help="job template (JSON or YAML): a job file without images and output",
    )
    inputs.add_argument("--out", required=True, help="output folder: one run folder per case")
    inputs.add_argument(
        "--device", default=None, help="replaces the template's device: auto, cpu, cuda or cuda:N"
    )
    inputs.add_argument(
        "--rerun-changed",
        action="store_true",
        help="recompute cases whose run folder holds a different job (otherwise refused)",
    )
    engine = batch.add_argument_group("engine")
    engine.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local worker processes (default) or one Ray task per case",
    )
    engine.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local engine: worker processes (default one per visible GPU, or one on the CPU)",
    )
    ray = batch.add_argument_group("Ray engine", "what each case's task declares, where it runs")
    ray.add_argument(
        "--address",
        default=None,
        help="auto (default; or RAY_ADDRESS), HOST:PORT, ray://HOST:PORT, or local (a new Ray "
        "instance on this machine)",
    )
    ray.add_argument("--cpus-per-case", type=float, default=1.0, help="CPUs (default 1)")
    ray.add_argument(
        "--gpus-per-case",
        type=float,
        default=None,
        help="GPUs (default 1 when the cluster has GPUs and the device is not cpu, else 0)",
    )
    ray.add_argument(
        "--memory-per-case", type=float, default=2.0, metavar="GB", help="memory in GiB (default 2)"
    )
    batch.set_defaults(handler=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    from ..cohort import CohortInterrupted, run_cohort

    try:
        result = run_cohort(
            args.cohort,
            args.job,
            args.out,
            engine=args.engine,
            workers=args.workers,
            address=args.address,
            device=args.device,
            rerun_changed=args.rerun_changed,
            progress=not args.quiet,
            cpus_per_case=args.cpus_per_case,
            gpus_per_case=args.gpus_per_case,
            memory_per_case_gb=args.memory_per_case,
        )
    except CohortInterrupted as interrupted:
        result = interrupted.result
        _print_result(result)
        missing = result.counts["not_run"] + result.counts["failed"]
        print(
            f"torchesegeta: interrupted; {missing} case(s) have no run folder: run the same "
            "command again to finish them"
        )
        return EXIT_INTERRUPTED
    _print_result(result)
    return result.exit_status


def _print_result(result: Any) -> None:
    from ..figures.metric_figures import format_value

    c = result.counts
    print(
        f"cohort: {c['cases']} case(s) in {result.out}: {c['ok']} ok, {c['partial']} partial, "
        f"{c['failed']} failed, {c['not_run']} not run ({c['resumed']} done before, skipped)"
    )
    for case in result.cases:
        if case["status"] == "failed":
            print(f"  failed: {case['case']}: {case.get('error', '')}")
    metrics = list(dict.fromkeys(s["metric"] for s in result.stats))
    methods = list(dict.fromkeys(s["method"] for s in result.stats))
    if result.stats:
        print("mean (sd) over the cases:")
        print(f"  {'':<26}" + "".join(f"{m[:17]:>18}" for m in methods))
        by_key = {(s["method"], s["metric"]): s for s in result.stats}
        for metric in metrics:
            cells = []
            for method in methods:
                s = by_key.get((method, metric))
                text = "" if s is None else f"{format_value(s['mean'])} ({format_value(s['sd'])})"
                cells.append(f"{text:>18}")
            print(f"  {metric[:26]:<26}" + "".join(cells))
    print(
        f"summary: {result.out / 'summary.csv'}, summary_stats.csv, failures.csv, "
        "cohort.json, cohort_report.html"
    )
