"""Cohorts through both engines: the local worker processes and a Ray head on loopback give the
same maps (bitwise: same job, seed and thread count) and metrics; resuming runs only what is
missing; a failed case is recorded and the others go on; a worker killed mid-case and Ctrl-C
leave no partial run folder."""

from __future__ import annotations

import csv
import html
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cohort_cases import (
    hidden_leftovers,
    write_cases,
    write_cohort,
    write_faulty_cases,
    write_template,
)
from extras import require_extra, skip_reason

from TorchEsegetaLib.cohort import CohortInterrupted, run_cohort
from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.images import read_volume

CASES = 5
#: Slow enough (a few seconds a case) that a kill or Ctrl-C lands mid-case.
SLOW = {"methods": [{"name": "integrated_gradients", "params": {"n_steps": 16}}], "metrics": []}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort-engines")
    ids = write_cases(folder, CASES)
    faulty = write_faulty_cases(folder)
    return {
        "folder": folder,
        "ids": ids,
        "cohort": write_cohort(folder, ids, faulty),
        "template": write_template(folder),
        "slow": write_template(folder, "slow.json", **SLOW),
    }


@dataclass(frozen=True)
class RayHead:
    address: str  #: HOST:PORT, what `--address` takes to join as a driver on a node
    client: str | None  #: ray://HOST:PORT (Ray Client), None without the ray[client] packages


def _listens(port: int | None) -> bool:
    """Whether something accepts connections on the loopback ``port`` (None: nothing to wait
    for). The head's Ray Client proxy starts after "Ray runtime started" is printed."""
    if port is None:
        return True
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _ray_client_installed() -> bool:
    """Whether Ray Client's extra packages (`ray[client]`) are here; `ray start` refuses a client
    port without them."""
    from ray._private.utils import get_ray_client_dependency_error

    return get_ray_client_dependency_error() is None


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head on loopback for this module (`ray start --block`; ended by its own pid)."""
    require_extra("ray")
    port = _free_port()
    temp = Path("/tmp") / f"te-ray-{os.getpid()}"  # Ray's socket paths must stay short
    log = tmp_path_factory.mktemp("ray") / "head.log"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    command = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
        "--include-dashboard", "false", "--temp-dir", str(temp), "--disable-usage-stats",
        "--object-store-memory", str(100 * 2**20),  # results are small dicts: keep it light
        # free ports, not Ray's fixed defaults, so that two test sessions can run side by side
        "--dashboard-port", str(_free_port()),
    ]  # fmt: skip
    client_port = _free_port() if _ray_client_installed() else None
    if client_port is not None:  # plain `pip install ray` has no client server to place
        command += ["--ray-client-server-port", str(client_port)]
    with open(log, "w") as handle:
        head = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text() or not _listens(client_port):
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        client = None if client_port is None else f"ray://127.0.0.1:{client_port}"
        yield RayHead(f"127.0.0.1:{port}", client)
    finally:
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)
        if previous is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous


@pytest.fixture(scope="module")
def local_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "results"
    result = run_cohort(data["cohort"], data["template"], out, workers=2, progress=False)
    return out, result


def test_local_engine_runs_every_case_and_records_failures(data, local_run):
    out, result = local_run
    assert result.exit_status == 3
    assert result.counts == {
        "cases": CASES + 2, "ok": CASES, "partial": 0, "failed": 2, "not_run": 0, "resumed": 0,
    }  # fmt: skip
    failures = {c["case"]: c for c in result.cases if c["status"] == "failed"}
    assert set(failures) == {"corrupt", "empty_target"}
    assert (
        failures["corrupt"]["kind"] == "input" and "corrupt.nii.gz" in failures["corrupt"]["error"]
    )
    assert (
        "region" in failures["empty_target"]["error"]
        or "empty" in failures["empty_target"]["error"]
    )
    for case in failures:
        assert not (out / case).exists()
    assert hidden_leftovers(out) == []
    with open(out / "failures.csv") as handle:
        assert {row["case"] for row in csv.DictReader(handle)} == set(failures)
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    # case x method x metric, the method's seconds included
    assert len(rows) == CASES * 2 * 3
    assert {r["metric"] for r in rows} == {"seconds", "mass_in_target", "relevance_rank_accuracy"}
    record = json.loads((out / "c001" / "run.json").read_text())
    score = record["metrics"]["scores"]["saliency"]["relevance_rank_accuracy"]
    assert score is not None  # the cohort's reference mask reached the metric
    row = next(
        r
        for r in rows
        if r["case"] == "c001"
        and r["method"] == "saliency"
        and r["metric"] == "relevance_rank_accuracy"
    )
    assert float(row["value"]) == pytest.approx(score, rel=1e-5)
    with open(out / "summary_stats.csv") as handle:
        stats = {(r["method"], r["metric"]): r for r in csv.DictReader(handle)}
    values = [
        float(r["value"])
        for r in rows
        if r["method"] == "saliency" and r["metric"] == "mass_in_target"
    ]
    entry = stats[("saliency", "mass_in_target")]
    assert int(entry["n"]) == CASES and float(entry["mean"]) == pytest.approx(
        np.mean(values), rel=1e-5
    )
    assert float(entry["median"]) == pytest.approx(np.median(values), rel=1e-5)
    report = (out / "cohort_report.html").read_text()
    assert report.count("data:image/png;base64,") == 3 and "http" not in report.replace(
        "http-equiv", ""
    )
    record = json.loads((out / "cohort.json").read_text())
    assert record["counts"]["failed"] == 2
    assert record["template"] == str(data["template"]) and record["template_job"]["methods"]
    assert html.escape(str(data["template"])) in report  # the report names the job template


def test_resuming_skips_the_cases_with_a_run_folder(data, local_run):
    out, _ = local_run
    before = {case: (out / case / "run.json").stat().st_mtime_ns for case in data["ids"]}
    events = []
    result = run_cohort(
        write_cohort(data["folder"], data["ids"], name="good.csv"), data["template"], out, progress=False,
        on_event=events.append,
    )  # fmt: skip
    assert events == [] and result.exit_status == 0  # nothing left to run: no worker started
    assert result.counts["resumed"] == CASES and result.counts["ok"] == CASES
    assert before == {case: (out / case / "run.json").stat().st_mtime_ns for case in data["ids"]}


def test_ray_engine_gives_the_local_engine_maps_and_metrics(data, local_run, ray_head, tmp_path):
    local_out, local_result = local_run
    out = tmp_path / "results"
    result = run_cohort(
        data["cohort"],
        data["template"],
        out,
        engine="ray",
        address=ray_head.address,
        progress=False,
    )
    assert result.exit_status == 3 and result.counts["ok"] == CASES and result.counts["failed"] == 2
    assert hidden_leftovers(out) == []
    for case in data["ids"]:
        ours, theirs = (json.loads((o / case / "run.json").read_text()) for o in (out, local_out))
        assert ours["metrics"]["scores"] == theirs["metrics"]["scores"]
        for method in ("saliency", "input_x_gradient"):
            a = read_volume(out / case / f"{method}.nii.gz").array
            b = read_volume(local_out / case / f"{method}.nii.gz").array
            np.testing.assert_array_equal(a, b)
    errors = [(c["case"], c.get("error")) for c in result.cases]
    assert errors == [(c["case"], c.get("error")) for c in local_result.cases]


def test_a_ray_client_address_runs_the_cohort_as_a_remote_driver(
    data, local_run, ray_head, tmp_path
):
    """`--address ray://HOST:PORT`: the driver is a Ray Client, not a node of the cluster; the
    cases run on the cluster and give the same maps as the local engine."""
    if ray_head.client is None:
        pytest.skip(skip_reason("ray", "Ray Client's packages (ray[client]) are missing"))
    local_out, _ = local_run
    out = tmp_path / "results"
    cohort = write_cohort(data["folder"], data["ids"][:2], name="two.csv")
    result = run_cohort(
        cohort, data["template"], out, engine="ray", address=ray_head.client, progress=False
    )
    assert result.exit_status == 0 and result.counts["ok"] == 2
    assert json.loads((out / "cohort.json").read_text())["engine"]["address"] == ray_head.client
    for case in data["ids"][:2]:
        a = read_volume(out / case / "saliency.nii.gz").array
        np.testing.assert_array_equal(a, read_volume(local_out / case / "saliency.nii.gz").array)
    assert hidden_leftovers(out) == []


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_where_nothing_listens_is_one_line_at_once(data, ray_head, tmp_path, scheme):
    """A mistyped --address fails in seconds, naming it (ray.init alone retries for minutes),
    and leaves nothing behind: a later run in this process still connects."""
    address = f"{scheme}127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(UserInputError, match="no Ray cluster answers at --address") as refused:
        run_cohort(data["cohort"], data["template"], tmp_path / "out", engine="ray",
                   address=address, progress=False)  # fmt: skip
    assert time.monotonic() - started < 60 and address in str(refused.value)
    assert "nothing accepts connections" in str(refused.value) and "\n" not in str(refused.value)
    cohort = write_cohort(data["folder"], data["ids"][:1], name="one.csv")
    result = run_cohort(cohort, data["template"], tmp_path / "again", engine="ray",
                        address=ray_head.address, progress=False)  # fmt: skip
    assert result.exit_status == 0


def test_interrupting_the_ray_engine_cancels_its_tasks(data, ray_head, tmp_path):
    out = tmp_path / "results"
    cohort = write_cohort(data["folder"], data["ids"], name="good.csv")

    def ctrl_c_after_the_first_case(event):
        raise KeyboardInterrupt  # what Ctrl-C raises in the driver's loop

    with pytest.raises(CohortInterrupted) as stopped:
        run_cohort(
            cohort, data["slow"], out, engine="ray", address=ray_head.address, progress=False,
            on_event=ctrl_c_after_the_first_case,
        )  # fmt: skip
    result = stopped.value.result
    assert result.exit_status == 130 and result.counts["not_run"] >= 1
    finished = {c["case"] for c in result.cases if c["status"] == "ok"}
    assert {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")} == finished
    assert hidden_leftovers(out) == []


def test_a_worker_killed_mid_case_leaves_nothing_and_a_rerun_completes_it(data, tmp_path):
    out = tmp_path / "results"
    cohort = write_cohort(data["folder"], data["ids"][:2], name="two.csv")
    victim, killed, pids = data["ids"][0], [], {}

    def kill_the_victim(event):
        if event["event"] == "start":
            pids[event["case"]] = event["pid"]
        elif event["event"] == "progress" and event["case"] == victim and not killed:
            if event.get("stage") == "method":  # inside the explanation, long before publishing
                killed.append(event)
                os.kill(pids[victim], signal.SIGKILL)

    result = run_cohort(
        cohort, data["slow"], out, workers=1, progress=False, on_event=kill_the_victim
    )
    assert killed, "the victim case never reported progress"
    failed = [c for c in result.cases if c["status"] == "failed"]
    assert [c["case"] for c in failed] == [victim] and "killed by signal 9" in failed[0]["error"]
    assert not (out / victim).exists() and hidden_leftovers(out) == []
    assert result.counts["ok"] == 1  # the next case went on, on a new worker
    assert pids[data["ids"][1]] != pids[victim]

    started = []
    rerun = run_cohort(
        cohort, data["slow"], out, workers=2, progress=False,
        on_event=lambda e: started.append(e["case"]) if e["event"] == "start" else None,
    )  # fmt: skip
    assert started == [victim] and rerun.exit_status == 0 and rerun.counts["resumed"] == 1


def test_ctrl_c_stops_workers_and_keeps_only_complete_run_folders(data, tmp_path):
    out = tmp_path / "results"
    cohort = write_cohort(data["folder"], data["ids"], name="good.csv")
    command = [
        sys.executable, "-m", "TorchEsegetaLib.cli", "batch", str(cohort), "--job", str(data["slow"]),
        "--out", str(out), "--workers", "1",
    ]  # fmt: skip
    # Ctrl-C as at a terminal, however this test was started: a shell's background job (nohup
    # ... &) has SIGINT ignored, which a child inherits, and Python then never raises
    # KeyboardInterrupt. A handler (unlike "ignored") is reset to the default at exec.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert cli.stderr is not None
        seen = []  # up to the first finished case (not a TTY: one line per case)
        while not (seen and seen[-1].startswith("[1/")):
            seen.append(cli.stderr.readline())
            assert seen[-1], "".join(seen)
        workers = _children(cli.pid)
        assert len(workers) == 1
        cli.send_signal(signal.SIGINT)
        stdout, stderr = cli.communicate(timeout=120)
    finally:
        cli.kill()
    assert cli.returncode == 130, stderr
    assert "interrupted" in stdout and "run the same command again" in stdout
    assert not any(Path(f"/proc/{pid}").exists() and _ppid(pid) == cli.pid for pid in workers)
    assert hidden_leftovers(out) == []
    record = json.loads((out / "cohort.json").read_text())
    assert record["interrupted"] and record["counts"]["ok"] >= 1
    finished = {c["case"] for c in record["cases"] if c["status"] == "ok"}
    assert {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")} == finished
    for case in finished:
        assert json.loads((out / case / "run.json").read_text())["status"] == "complete"
    assert record["counts"]["not_run"] >= 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _children(pid: int) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _ppid(int(p.name)) == pid
    ]


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])
