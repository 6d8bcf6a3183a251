"""Cohorts without engines: cohort files and folders, per-case jobs, resume planning, summaries,
and the batch command's up-front checks (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from cohort_cases import TEMPLATE, write_cases, write_cohort, write_template

from TorchEsegetaLib.cli import main
from TorchEsegetaLib.cohort.cases import Case, discover_cases, read_cohort
from TorchEsegetaLib.cohort.plan import CHANGED, DONE, TODO, Template, plan_cases
from TorchEsegetaLib.cohort.summary import statistics, summarise
from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.runs.runner import run_job


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort-data")
    write_cases(folder, 2)
    return folder


def test_cohort_file_lists_channels_references_and_targets(data, tmp_path):
    cohort = tmp_path / "cohort.csv"
    cohort.write_text(
        "case_id,image_t1,image_t2,reference,target\n"
        f"a,{data}/c000.nii.gz,{data}/c001.nii.gz,{data}/c000_label.nii.gz,\n"
        f'b,{data}/c001.nii.gz,{data}/c000.nii.gz,,"roi:1,2,3:4,5,6"\n',
        encoding="utf-8",
    )
    a, b = read_cohort(cohort)
    assert a == Case(
        "a", (f"{data}/c000.nii.gz", f"{data}/c001.nii.gz"), f"{data}/c000_label.nii.gz", None
    )
    assert b.images == (f"{data}/c001.nii.gz", f"{data}/c000.nii.gz")
    assert b.reference is None and b.target == "roi:1,2,3:4,5,6"


def test_relative_paths_resolve_against_the_cohort_file(data):
    cases = read_cohort(write_cohort(data, ["c000", "c001"]))
    assert [c.images for c in cases] == [(str(data / "c000.nii.gz"),), (str(data / "c001.nii.gz"),)]
    assert cases[1].reference == str(data / "c001_label.nii.gz")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("image\nc000.nii.gz\n", "no a case_id column"),
        ("case_id,reference\nx,c000.nii.gz\n", "no an image column"),
        ("case_id,image,refrence\nx,c000.nii.gz,\n", "unknown column(s) ['refrence']"),
        ("case_id,image\nx,c000.nii.gz\nx,c001.nii.gz\n", "['x'] appear twice"),
        ("case_id,image\nx,missing.nii.gz\n", "missing.nii.gz does not exist"),
        ("case_id,image\nx,\n", "line 2: no value in column(s) ['image']"),
        ("case_id,image\n../up,c000.nii.gz\n", "cannot name a folder"),
        ("case_id,image\n", "lists no case"),
        ("", "is empty"),
    ],
)
def test_bad_cohort_files_are_one_clear_error(data, text, expected):
    cohort = data / "bad.csv"
    cohort.write_text(text, encoding="utf-8")
    with pytest.raises(UserInputError) as error:
        read_cohort(cohort)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_folder_cases_follow_nnunet_naming(tmp_path, data):
    for name in ("p1_0000.nii.gz", "p1_0001.nii.gz", "single.nii.gz", "labels/p1.nii.gz"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes((data / "c000.nii.gz").read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    p1, single = discover_cases(tmp_path)
    assert p1.case_id == "p1" and [p.split("/")[-1] for p in p1.images] == [
        "p1_0000.nii.gz",
        "p1_0001.nii.gz",
    ]
    assert p1.reference == str(tmp_path / "labels" / "p1.nii.gz")
    assert single.case_id == "single" and single.reference is None
    (tmp_path / "p1_0001.nii.gz").rename(tmp_path / "p1_0002.nii.gz")
    with pytest.raises(UserInputError, match="without gaps"):
        discover_cases(tmp_path)


def test_a_case_job_is_the_template_with_the_case(data, tmp_path):
    template = Template.load(write_template(tmp_path))
    case = Case("a", (str(data / "c000.nii.gz"),), str(data / "c000_label.nii.gz"), "voxel:3,4,5")
    job = template.case_job(case, tmp_path / "out", device="cpu")
    assert job.images == [str(data / "c000.nii.gz")] and job.output == str(tmp_path / "out" / "a")
    assert job.target.kind == "voxel" and job.target.voxel == (3.0, 4.0, 5.0)
    reference = {m.name: m.params.get("reference") for m in job.metrics}
    assert reference == {"mass_in_target": None, "relevance_rank_accuracy": case.reference}
    assert template.case_job(Case("b", case.images), tmp_path).target.kind == "class"
    with pytest.raises(UserInputError, match="has an 'images' field"):
        Template.load({**TEMPLATE, "images": ["x.nii.gz"]})
    with pytest.raises(UserInputError, match="unknown method"):
        Template.load({**TEMPLATE, "methods": ["salience"]})


def test_plan_skips_done_cases_and_refuses_changed_ones(data, tmp_path):
    out = tmp_path / "out"
    cases = read_cohort(write_cohort(data, ["c000", "c001"]))
    template = Template.load(write_template(tmp_path, metrics=[]))
    run_job(template.case_job(cases[0], out))  # c000 done, c001 missing
    sha = json.loads((out / "c000" / "run.json").read_text())["model"]["sha256"]
    states = [p.state for p in plan_cases(cases, template, out, sha)]
    assert states == [DONE, TODO]
    assert [p.state for p in plan_cases(cases, template, out, sha, device="cuda")] == [DONE, TODO]
    exact = Template.load(write_template(tmp_path, "exact.json", metrics=[], flush_denormals=False))
    assert [p.state for p in plan_cases(cases, exact, out, sha)] == [DONE, TODO], "how, not what"

    changed = Template.load(write_template(tmp_path, "t2.json", metrics=[], seed=5))
    with pytest.raises(
        UserInputError, match=r"1 case\(s\) .* \(c000: seed differ\); pass --rerun-changed"
    ):
        plan_cases(cases, changed, out, sha)
    with pytest.raises(UserInputError, match="model weights differ"):
        plan_cases(cases, template, out, "0" * 64)
    rerun = plan_cases(cases, changed, out, sha, rerun_changed=True)
    assert [(p.state, p.job.overwrite) for p in rerun] == [(CHANGED, True), (TODO, False)]

    (out / "c001").mkdir()  # a folder nobody's run wrote: never replaced
    with pytest.raises(UserInputError, match="c001 exists but is not a run folder"):
        plan_cases(cases, template, out, sha)


def test_statistics_over_cases():
    stats = statistics([1.0, 2.0, 4.0])
    assert stats["mean"] == pytest.approx(7 / 3) and stats["median"] == 2.0
    assert stats["sd"] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert statistics([3.0])["sd"] is None
    rows = {
        "a": [{"method": "m", "metric": "x", "value": 1.0}],
        "b": [{"method": "m", "metric": "x", "value": None}],
        "c": [{"method": "m", "metric": "x", "value": math.nan}],
        "d": [{"method": "m", "metric": "x", "value": 3.0}],
    }
    (row,) = summarise(rows, {"x": "higher"})
    assert (row["n"], row["mean"], row["better"]) == (2, 2.0, "higher")


def test_batch_command_checks_before_running(data, tmp_path, capsys):
    cohort = write_cohort(data, ["c000", "c001"])
    template = write_template(tmp_path)
    out = tmp_path / "out"
    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,image\nx,c000.nii.gz\nx,c000.nii.gz\n")
    cases = [
        ([str(bad), "--job", str(template)], "appear twice"),
        ([str(cohort), "--job", str(tmp_path / "none.json")], "does not exist"),
        ([str(cohort), "--job", str(template), "--workers", "0"], "at least 1"),
    ]
    for arguments, expected in cases:
        assert main(["batch", *arguments, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1
        assert not out.exists()


def test_ray_engine_without_ray_says_what_to_install(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    cohort, template = write_cohort(data, ["c000"]), write_template(tmp_path)
    status = main(
        [
            "batch",
            str(cohort),
            "--job",
            str(template),
            "--out",
            str(tmp_path / "o"),
            "--engine",
            "ray",
        ]
    )
    assert status == 2
    assert 'pip install "torchesegeta[ray]"' in capsys.readouterr().err


class FlakyRay:
    """Stands in for the ray module: ``init`` fails the first ``failures`` times with ``error``."""

    def __init__(self, failures: int, error: str):
        self.failures, self.error, self.calls, self.shutdowns = failures, error, 0, 0

    def init(self, address, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionAbortedError(self.error)

    def shutdown(self):
        self.shutdowns += 1


DIED = "Initialization failure from server:\nRuntimeError: Starting Ray client server failed. See x.err"
ZOMBIE = (
    'Initialization failure from server:\n  File "proxier.py", line 396, in start_specific_server\n'
    "psutil.ZombieProcess: PID still exists but it's a zombie (pid=31784)"
)


@pytest.mark.parametrize(
    "scheme, failures, error, connects",
    [
        ("ray://", 2, DIED, True),  # the head's per-client server died at its start: tried again
        ("ray://", 1, ZOMBIE, True),  # ... or while the head's proxy was looking at it
        ("ray://", 9, DIED, False),  # ... but not for ever
        ("", 1, DIED, False),  # a node driver has no client server: a setup problem
        ("ray://", 1, "authentication failed", False),  # a setup problem: said at once
    ],
)
def test_a_ray_client_connection_is_retried_only_when_its_server_died(
    scheme, failures, error, connects
):
    from loopback import SETTINGS_FRAME, loopback_listener

    from TorchEsegetaLib.cohort.ray_engine import CLIENT_ATTEMPTS, RayEngine
    from TorchEsegetaLib.errors import UserInputError

    with loopback_listener(SETTINGS_FRAME) as port:  # something answers there as gRPC does
        address = f"{scheme}127.0.0.1:{port}"
        ray = FlakyRay(failures, error)
        engine = RayEngine(address=address)
        if connects:
            engine._connect(ray)
            assert ray.calls == failures + 1
        else:
            with pytest.raises(UserInputError, match="no Ray cluster answers"):
                engine._connect(ray)
            retried = scheme and error in (DIED, ZOMBIE)
            assert ray.calls == (CLIENT_ATTEMPTS if retried else 1)
        assert ray.shutdowns == min(failures, ray.calls)
