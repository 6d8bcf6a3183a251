"""``torchesegeta view`` without a browser: what it refuses (one line, exit 2) and the pure parts
of the viewer (run folder checks, the metrics table, path containment)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from extras import require_extra
from viewer_browser import REPOSITORY
from viewer_runs import SCORES, makeViewerRun

from TorchEsegetaLib.cli import main


@pytest.fixture
def run(tmp_path):
    return makeViewerRun(tmp_path / "run")


def view(capsys, *args):
    """``torchesegeta view ARGS``: (exit code, stderr). The command looks for the viewer's
    packages before it looks at its arguments, so these tests need the [view] extra."""
    require_extra("view")
    code = main(["view", *args])
    return code, capsys.readouterr().err


def rewrite(run, change):
    record = json.loads((run / "run.json").read_text())
    change(record)
    (run / "run.json").write_text(json.dumps(record))


@pytest.mark.parametrize(
    "breakIt, message",
    [
        (lambda run: (run / "run.json").unlink(), "is not a TorchEsegeta run folder (no run.json)"),
        (lambda run: (run / "run.json").write_text("{"), "cannot be read"),
        (
            lambda run: (run / "signed.nii.gz").unlink(),
            "the map of 'signed' (signed.nii.gz) is missing",
        ),
        (
            lambda run: rewrite(run, lambda r: r.update(status="failed")),
            "has status 'failed'; only a complete run can be viewed",
        ),
        (
            lambda run: rewrite(
                run, lambda r: r["methods"][0].update(file="../../elsewhere.nii.gz")
            ),
            "the map of 'blocks' (../../elsewhere.nii.gz) is missing",
        ),
        (
            lambda run: rewrite(run, lambda r: r.update(inputs=[str(run.parent / "gone.nii.gz")])),
            'gone.nii.gz (the run\'s input (run.json "inputs")) does not exist; pass the image',
        ),
    ],
    ids=["no-run-json", "damaged", "missing-map", "failed-run", "map-outside", "missing-image"],
)
def test_a_bad_run_folder_is_one_line_and_exit_2(run, capsys, breakIt, message):
    breakIt(run)
    code, err = view(capsys, str(run), "--port", "0")
    assert code == 2
    assert err.count("\n") == 1 and message in err, err


def test_a_folder_that_does_not_exist(tmp_path, capsys):
    code, err = view(capsys, str(tmp_path / "nope"))
    assert code == 2 and "is not a folder; give a run folder" in err


def test_a_missing_image_given_with_image_is_named(run, capsys):
    code, err = view(capsys, str(run), "--image", str(run / "no.nii.gz"), "--port", "0")
    assert code == 2 and "no.nii.gz (given with --image) does not exist" in err


def test_a_port_in_use_is_refused_before_anything_starts(run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = view(capsys, str(run), "--port", str(port))
    assert code == 2
    assert (
        f"port {port} on 127.0.0.1 is in use (another viewer?); choose another with --port" in err
    )


def test_an_address_that_is_not_this_machines(run, capsys):
    code, err = view(capsys, str(run), "--host", "192.0.2.1", "--port", "0")
    assert code == 2 and "cannot listen on 192.0.2.1" in err


def test_run_and_cohort_are_exclusive(run, capsys):
    code, err = view(capsys, str(run), "--cohort", str(run.parent))
    assert code == 2 and "give a run folder, or --cohort RESULTS" in err


def test_an_empty_cohort_folder(tmp_path, capsys):
    (tmp_path / "case1").mkdir()
    code, err = view(capsys, "--cohort", str(tmp_path))
    assert code == 2 and "holds no finished run folder" in err


def test_without_the_view_extra_the_command_says_what_to_install(run, capsys, monkeypatch):
    # None in sys.modules makes `import trame_slicer` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "trame_slicer", None)
    code, err = main(["view", str(run)]), capsys.readouterr().err
    assert code == 2
    # (where the extra is absent altogether, its other packages are named too)
    assert err.startswith("torchesegeta: error: the web viewer needs ") and "trame-slicer" in err
    assert 'pip install "torchesegeta[view]"' in err


def test_the_engine_does_not_import_the_viewer_or_vtk():
    code = (
        "import sys, TorchEsegetaLib.cli\n"
        "bad = [m for m in ('vtk', 'vtkmodules', 'slicer', 'trame', 'TorchEsegetaWeb') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPOSITORY)


# --- pure parts ---------------------------------------------------------------------------------


def test_metrics_table_rows_are_formatted_like_the_report(run):
    sys.path.insert(0, str(REPOSITORY / "TorchEsegeta"))
    from TorchEsegetaWeb.metricsView import curvesDataUrl, metricsTable

    record = json.loads((run / "run.json").read_text())
    table = metricsTable(record["metrics"])
    titles = [h["title"] for h in table["headers"]]
    assert titles[:2] == ["method", "mean rank"]
    assert "Deletion AUC \u2193" in titles and "Insertion AUC \u2191" in titles
    byMethod = {row["method"]: dict(zip(titles, row["cells"])) for row in table["rows"]}
    for label, scores in SCORES.items():
        assert byMethod[label]["Deletion AUC \u2193"] == f"{scores['deletion']:.3g}"
    assert [row["method"] for row in table["rows"]] == ["blocks", "signed"]  # best first
    assert metricsTable(None) == {"headers": [], "rows": []}
    assert curvesDataUrl(record["metrics"]).startswith("data:image/png;base64,")
    assert curvesDataUrl(None) == ""


def test_paths_are_contained_in_the_folder(tmp_path):
    sys.path.insert(0, str(REPOSITORY / "TorchEsegeta"))
    from TorchEsegetaWeb.runSource import insideFolder

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "out").symlink_to(tmp_path)
    assert insideFolder(tmp_path / "a", "x/y.png") == (tmp_path / "a" / "x" / "y.png").resolve()
    for escape in ("..", "../b", "/etc/passwd", "x/../../b", "out/secret"):
        assert insideFolder(tmp_path / "a", escape) is None, escape


def test_cohort_cases_are_the_finished_run_folders(tmp_path):
    sys.path.insert(0, str(REPOSITORY / "TorchEsegeta"))
    from TorchEsegetaWeb.runSource import cohortCases

    results = tmp_path / "results"
    makeViewerRun(results / "case2", tmp_path / "in2")
    makeViewerRun(results / "case1", tmp_path / "in1")
    failed = makeViewerRun(results / "case3", tmp_path / "in3")
    rewrite(failed, lambda r: r.update(status="failed"))
    (results / ".case4.tmp").mkdir()
    assert list(cohortCases(results)) == ["case1", "case2"]


def test_run_files_route_answers_404_for_names_no_file_can_have(tmp_path):
    """The run folder's file route on a real loopback server: a NUL byte, a name too long or a
    way out of the folder is 404 (never 500, never the file); a file of the folder is served."""
    aiohttp = pytest.importorskip("aiohttp")
    import asyncio

    sys.path.insert(0, str(REPOSITORY / "TorchEsegeta"))
    from aiohttp import web
    from TorchEsegetaWeb.httpFiles import addFileRoute

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("not for the browser")

    async def statuses():
        app = web.Application()
        addFileRoute(app, run)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        found = {}
        try:
            async with aiohttp.ClientSession() as session:
                for path in (
                    "run.json",
                    "run.json%00",
                    "%00",
                    "a%00b",
                    "x" * 5000,
                    "..%2fsecret.txt",
                ):
                    url = f"http://127.0.0.1:{port}/run-files/{path}"
                    async with session.get(url) as response:
                        found[path] = (response.status, await response.text())
        finally:
            await runner.cleanup()
        return found

    found = asyncio.run(statuses())
    assert found.pop("run.json") == (200, "{}")
    for path, (status, body) in found.items():
        assert status == 404 and "not for the browser" not in body, (path[:20], status)
