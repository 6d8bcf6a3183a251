"""The benchmark's smoke configuration: every comparison runs and ours equals the reference.
No time is asserted (timings belong to benchmarks/bench.py's printed table)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_smoke_configuration_compares_equal_maps(tmp_path):
    bench = load_bench()
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
    # Adaptive occlusion against exhaustive occlusion: both first passes, each network.
    adaptive = json.loads(out.read_text())["adaptive_rows"]
    assert len(adaptive) == 4  # the demo network and a random UNet
    assert sorted((row["case"], row["first_pass"]) for row in adaptive) == sorted(
        (case, first)
        for case in {row["case"] for row in adaptive}
        for first in ("coarse", "gradient")
    )
    for row in adaptive:
        assert (row["backward_passes"] > 0) == (row["first_pass"] == "gradient"), row
        assert row["pass_equivalents"] >= row["passes"] and -1 <= row["spearman"] <= 1


def test_nnunet_window_reuse_rows_compare_equal_maps(tmp_path, capsys):
    from extras import require_extra

    require_extra("nnunet")
    out = tmp_path / "bench.json"
    arguments = ["--config", "smoke", "--cases", "nnunet-reuse", "--device", "cpu"]
    assert load_bench().main([*arguments, "--json", str(out)]) == 0
    (row, memory) = json.loads(out.read_text())["rows"]
    assert row["case"].startswith("occlusion 8/8, nnU-Net 2 folds x 8 mirrorings, reuse")
    assert row["max_rel_diff"] < 1e-5 and row["ours_s"] > 0 and row["reference_s"] > 0
    printed = capsys.readouterr().out
    assert "network inputs" in printed and "20x40x40" in printed
