"""The benchmark's smoke configuration: every comparison runs and ours equals the reference.
No time is asserted (timings belong to benchmarks/bench.py's printed table)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def test_benchmark_smoke_configuration_compares_equal_maps(tmp_path):
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert (
        bench.main(["--config", "smoke", "--repeat", "1", "--device", "cpu", "--json", str(out)])
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    cases = {row["case"].split(",")[0].strip() for row in rows}
    assert {"integrated gradients", "SmoothGrad", "occlusion", "gradient"} <= cases
    # Reduced precision is compared with float32 for its speed and its (reported) difference.
    assert any("autocast" in row["case"] and row["max_rel_diff"] is not None for row in rows)
    compared = [
        row for row in rows if row["max_rel_diff"] is not None and "autocast" not in row["case"]
    ]
    assert len(compared) >= 6
    for row in compared:
        assert row["max_rel_diff"] < 1e-4, row
        assert row["ours_s"] > 0 and row["reference_s"] > 0
