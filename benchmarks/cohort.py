"""Cohort throughput: the same synthetic cohort through the local engine and a local Ray instance.

    python benchmarks/cohort.py                 # 100 cases, both engines, all cores
    python benchmarks/cohort.py --cases 200 --workers 2 --engines local

Each case is a 24^3 MRA-like volume (the demo model, saliency and input x gradient, two
metrics of the map, no figures), so the numbers measure the engines' overhead per case as much
as the work. Both engines get the same number of parallel slots: ``--workers`` local worker
processes, and a Ray instance started here with that many CPUs (one per case). Printed per
engine: the wall time of the whole call (worker start-up included; the Ray instance's own
start is shown apart), cases per minute over that wall time, and the steady rate once every
slot has finished its first case (start-up excluded).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))

from cohort_cases import write_cases, write_cohort, write_template  # noqa: E402

from TorchEsegetaLib.cohort import run_cohort  # noqa: E402


def measure(engine: str, cohort: Path, template: Path, out: Path, workers: int) -> dict:
    finished: list[float] = []

    def on_event(event: dict) -> None:
        if event["event"] == "done":
            finished.append(time.perf_counter())

    started = time.perf_counter()
    result = run_cohort(
        cohort,
        template,
        out,
        engine=engine,
        workers=workers if engine == "local" else None,
        progress=False,
        on_event=on_event,
    )
    wall = time.perf_counter() - started
    if result.counts["ok"] != result.counts["cases"]:
        raise SystemExit(f"{engine}: not every case succeeded: {result.counts}")
    steady = finished[workers - 1 :]  # after every slot has finished its first case
    rate = 60.0 * (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else float("nan")
    return {"engine": engine, "wall": wall, "per_min": 60.0 * len(finished) / wall, "steady": rate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--keep", default=None, help="folder to keep the cohort and results in")
    args = parser.parse_args(argv)
    root = Path(args.keep or tempfile.mkdtemp(prefix="te-cohort-bench-"))
    data = root / "data"
    ids = write_cases(data, args.cases)
    cohort, template = write_cohort(data, ids), write_template(data)
    rows, ray_start = [], None
    for engine in args.engines.split(","):
        if engine == "ray":
            import ray

            began = time.perf_counter()
            ray_temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths stay short
            ray.init(
                address="local",
                num_cpus=args.workers,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
                _temp_dir=ray_temp,
            )
            ray_start = time.perf_counter() - began
        rows.append(measure(engine, cohort, template, root / f"results-{engine}", args.workers))
        if engine == "ray":
            ray.shutdown()
            shutil.rmtree(ray_temp, ignore_errors=True)
    print(f"{args.cases} cases of 24^3, {args.workers} parallel slots, {os.cpu_count()} cores")
    print("| engine | wall s | cases/min (wall) | cases/min (steady) |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['engine']} | {row['wall']:.1f} | {row['per_min']:.0f} | {row['steady']:.0f} |"
        )
    if ray_start is not None:
        print(f"Ray instance start (not in the wall times): {ray_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
