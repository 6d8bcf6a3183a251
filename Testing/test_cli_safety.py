"""Nothing of the user's is deleted: an output folder that is, holds or lies inside an input is
refused before any work, ``--overwrite`` replaces only a folder torchesegeta wrote (its record
names the tool), the demo follows the same rules, a report embeds only files of its run folder,
and a refused cohort leaves nothing behind. Every case runs the command line on real folders and
compares every input byte for byte afterwards."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from cohort_cases import write_cases, write_cohort, write_template
from helpers import TINY_UNET_KWARGS, tiny_unet

from TorchEsegetaLib.cli import main
from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry

GEOMETRY = Geometry((16, 16, 16), (1.0, 1.0, 1.2))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A user's folder: an image and a mask, a checkpoint, a card file, a reference mask, a
    feature label map and a MONAI bundle, each in its own subfolder."""
    from TorchEsegetaLib.models.demo.export import write_bundle

    root = tmp_path_factory.mktemp("user")
    for name in ("data", "models", "cards", "refs", "labels"):
        (root / name).mkdir()
    image = np.random.default_rng(0).random(GEOMETRY.size).astype(np.float32) * 100
    write_volume(image, GEOMETRY, root / "data" / "image.nii.gz")
    box = np.zeros(GEOMETRY.size, np.uint8)
    box[4:12, 4:12, 4:12] = 1
    write_volume(box, GEOMETRY, root / "data" / "mask.nii.gz", dtype=np.uint8)
    write_volume(box, GEOMETRY, root / "refs" / "reference.nii.gz", dtype=np.uint8)
    write_volume(box, GEOMETRY, root / "labels" / "features.nii.gz", dtype=np.uint8)
    torch.save(tiny_unet().state_dict(), root / "models" / "unet.pt")
    (root / "cards" / "card.json").write_text(json.dumps({"class_names": ["bg", "fg"]}))
    write_bundle(root / "bundle", form="pt")
    return root


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def explain_args(root, out, *extra, model=None, method="saliency"):
    model_args = model or [
        "--model",
        str(root / "models" / "unet.pt"),
        "--network",
        "UNet",
        "--network-kwargs",
        json.dumps(TINY_UNET_KWARGS),
    ]
    return [
        "explain",
        "--image",
        str(root / "data" / "image.nii.gz"),
        *model_args,
        "--method",
        method,
        "--target",
        "roi:4,4,4:11,11,11",
        "--out",
        str(out),
        "--quiet",
        "--no-figures",
        *extra,
    ]


def refused(capfd, code, *expected):
    err = capfd.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err, err
    for text in expected:
        assert text in err, err
    return err


# -- an output folder keeps apart from the inputs ---------------------------------------------


def _scenarios(root):
    """name -> (arguments, words of the refusal): every kind of input, met every way."""
    bundle = ["--model", str(root / "bundle")]
    reference = "relevance_rank_accuracy.reference=" + str(root / "refs" / "reference.nii.gz")
    features = f"feature_ablation:features=labels,feature_labels={root / 'labels/features.nii.gz'}"
    return {
        "the image's folder": (explain_args(root, "data", "--overwrite"), "holds the image"),
        "an ancestor of the image": (explain_args(root, root.parent, "--overwrite"), "holds"),
        "the current folder": (explain_args(root, ".", "--overwrite"), "holds the image"),
        "the image itself": (
            explain_args(root, "data/image.nii.gz", "--overwrite"),
            "is the image",
        ),
        "the checkpoint's folder": (
            explain_args(root, "models", "--overwrite"),
            "holds the checkpoint",
        ),
        "the model folder": (
            explain_args(root, "bundle", "--overwrite", model=bundle),
            "is the model",
        ),
        "inside the model folder": (
            explain_args(root, "bundle/run", model=bundle),
            "lies inside the model",
        ),
        "the target mask's folder": (
            [*explain_args(root, "data", "--overwrite")[:-2], "--target", "mask:data/mask.nii.gz"],
            "holds the image",
        ),
        "the card file's folder": (
            explain_args(root, "cards", "--overwrite", "--card", "cards/card.json"),
            "holds the card file",
        ),
        "a metric's reference file": (
            explain_args(root, "refs", "--overwrite", "--evaluate", "relevance_rank_accuracy")
            + ["--param", reference],
            "holds the reference file of metric relevance_rank_accuracy",
        ),
        "a method's label file": (
            explain_args(root, "labels", "--overwrite", method=features),
            "holds the feature_labels file of method feature_ablation",
        ),
        "a link to the image's folder": (
            explain_args(root, "link-to-data", "--overwrite"),
            "holds the image",
        ),
    }


@pytest.mark.parametrize(
    "scenario",
    [
        "the image's folder",
        "an ancestor of the image",
        "the current folder",
        "the image itself",
        "the checkpoint's folder",
        "the model folder",
        "inside the model folder",
        "the target mask's folder",
        "the card file's folder",
        "a metric's reference file",
        "a method's label file",
        "a link to the image's folder",
    ],
)
def test_an_output_folder_meeting_an_input_is_refused_and_nothing_is_deleted(
    root, scenario, capfd, monkeypatch
):
    from TorchEsegetaLib.models import inference

    monkeypatch.chdir(root)
    link = root / "link-to-data"
    if not link.exists():
        link.symlink_to(root / "data", target_is_directory=True)
    arguments, expected = _scenarios(root)[scenario]
    before = snapshot(root)
    monkeypatch.setattr(inference, "segment", lambda *a, **k: pytest.fail("the work started"))
    refused(capfd, main(arguments), expected, "choose an --out apart from the inputs")
    assert snapshot(root) == before
    assert not (root / "bundle" / "run").exists()


def test_a_job_file_and_the_worker_keep_the_run_folder_apart_from_their_inputs(root, tmp_path):
    """`torchesegeta run` and the Slicer module's worker (a real process): the folder of the
    job file is no output folder either."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    job = {
        "images": [str(root / "data" / "image.nii.gz")],
        "model": {
            "kind": "monai",
            "network": "UNet",
            "kwargs": TINY_UNET_KWARGS,
            "checkpoint": str(root / "models" / "unet.pt"),
        },
        "target": "voxel:8,8,8",
        "output": ".",
        "overwrite": True,
    }
    (jobs / "job.json").write_text(json.dumps(job))
    before = snapshot(jobs)
    command = [sys.executable, "-m", "TorchEsegetaLib.cli", "run", str(jobs / "job.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"output folder {jobs} holds the job file {jobs / 'job.json'}" in done.stderr
    worker = [sys.executable, "-m", "TorchEsegetaLib.runs.worker", str(jobs / "job.json")]
    done = subprocess.run(worker, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    (event,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert event["event"] == "error" and event["kind"] == "input"
    assert "holds the job file" in event["message"]
    assert snapshot(jobs) == before


def test_the_python_api_refuses_an_output_folder_holding_its_input(root):
    import TorchEsegetaLib as te
    from TorchEsegetaLib.errors import UserInputError

    before = snapshot(root)
    with pytest.raises(UserInputError, match="holds the image"):
        te.explain(root / "data" / "image.nii.gz", out=root / "data", overwrite=True)
    assert snapshot(root) == before


# -- --overwrite replaces only a folder torchesegeta wrote --------------------------------------


def test_overwrite_replaces_a_run_folder_and_never_another_folder(root, tmp_path, capfd):
    run = tmp_path / "run"
    assert main(explain_args(root, run)) == 0
    assert json.loads((run / "run.json").read_text())["tool"] == "torchesegeta"
    assert main(explain_args(root, run, "--overwrite")) == 0
    capfd.readouterr()
    folders = {
        "empty": {},
        "notes": {"notes.txt": "mine"},
        "foreign run.json": {"run.json": json.dumps({"status": "complete", "methods": []})},
        "not JSON": {"run.json": "run notes"},
    }
    for name, files in folders.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        for file, text in files.items():
            (folder / file).write_text(text)
        before = snapshot(folder)
        code = main(explain_args(root, folder, "--overwrite"))
        refused(capfd, code, "was not written by torchesegeta", "replaces only a run folder")
        assert folder.is_dir() and snapshot(folder) == before, name
    # a run.json of ours reached by a link does not make a folder ours
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "run.json").symlink_to(run / "run.json")
    refused(capfd, main(explain_args(root, linked, "--overwrite")), "was not written by")
    assert (linked / "run.json").is_symlink()


def test_a_run_folder_written_before_the_tool_field_is_still_recognised(root, tmp_path):
    from TorchEsegetaLib.runs.destination import made_by_this_tool

    run = tmp_path / "run"
    assert main(explain_args(root, run)) == 0
    record = json.loads((run / "run.json").read_text())
    del record["tool"]  # as the versions before this field wrote it
    (run / "run.json").write_text(json.dumps(record))
    assert made_by_this_tool(run) and "torchesegeta" in record["versions"]
    assert main(explain_args(root, run, "--overwrite")) == 0


def test_save_job_never_replaces_an_input_or_another_file(root, tmp_path, capfd):
    image = root / "data" / "image.nii.gz"
    before = snapshot(root)
    code = main(explain_args(root, tmp_path / "a", "--save-job", str(image)))
    refused(capfd, code, f"--save-job {image} is the image")
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}')
    code = main(explain_args(root, tmp_path / "b", "--save-job", str(notes)))
    refused(capfd, code, "exists and is not a job file")
    code = main(explain_args(root, tmp_path / "c", "--save-job", str(tmp_path / "c" / "job.json")))
    refused(capfd, code, "lies inside the run folder")
    assert snapshot(root) == before and notes.read_text() == '{"my": "notes"}'
    assert not any((tmp_path / name).exists() for name in "abc")
    job = tmp_path / "job.json"
    assert main(explain_args(root, tmp_path / "d", "--save-job", str(job))) == 0
    assert main(explain_args(root, tmp_path / "e", "--save-job", str(job))) == 0  # a job file


# -- the demo -----------------------------------------------------------------------------------


def test_demo_follows_the_rules_of_explain_for_its_run_and_input_folders(tmp_path, capfd):
    demo = ["demo", "--method", "saliency", "--quiet"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for extra in ([], ["--overwrite"]):
        code = main([*demo, "--out", str(mine), *extra])
        refused(capfd, code, str(mine))
        assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
        assert not (tmp_path / "mine-input").exists()
    out = tmp_path / "demo"
    assert main([*demo, "--out", str(out)]) == 0
    capfd.readouterr()
    refused(capfd, main([*demo, "--out", str(out)]), "already exists", "--overwrite")
    assert main([*demo, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((tmp_path / "demo-input" / "demo.json").read_text())["tool"] == "torchesegeta"
    # the input folder beside the run folder is the demo's to replace only when it wrote it
    other = tmp_path / "other"
    (tmp_path / "other-input").mkdir()
    (tmp_path / "other-input" / "mra.nii.gz").write_text("a scan of mine")
    capfd.readouterr()
    code = main([*demo, "--out", str(other), "--overwrite"])
    refused(capfd, code, f"{tmp_path / 'other-input'} was not written by torchesegeta")
    assert (tmp_path / "other-input" / "mra.nii.gz").read_text() == "a scan of mine"
    assert not other.exists()


# -- evaluate and report ------------------------------------------------------------------------


def test_report_embeds_only_regular_files_inside_the_run_folder(root, tmp_path, capfd):
    run = tmp_path / "run"
    assert main(explain_args(root, run)) == 0
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG secret bytes of another file")
    (run / "figures").mkdir(exist_ok=True)
    (run / "figures" / "link-out.png").symlink_to(secret)
    if hasattr(os, "mkfifo"):
        os.mkfifo(run / "figures" / "fifo.png")  # reading it would block the report
    record = json.loads((run / "run.json").read_text())
    names = [
        "../secret.png",
        "../../../../../../../../etc/passwd",
        str(secret),
        "figures/link-out.png",
        "figures/fifo.png",
    ]
    record["figures"] = names
    (run / "run.json").write_text(json.dumps(record))
    capfd.readouterr()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert base64.b64encode(secret.read_bytes()).decode() not in page
    assert "root:" not in page and "data:image/png;base64" not in page
    out = capfd.readouterr().out
    for name in names:  # each flagged as not in the run folder
        assert f"warning: {name} is listed in run.json but missing" in out


def test_evaluate_and_report_write_only_into_run_folders_of_ours(root, tmp_path, capfd):
    folder = tmp_path / "looks-like-a-run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"job": {"images": []}, "methods": []}))
    before = snapshot(folder)
    for command in (["evaluate", str(folder), "--quiet"], ["report", str(folder)]):
        refused(capfd, main(command), "is not a run folder written by torchesegeta")
        assert snapshot(folder) == before


# -- cohorts ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    ids = write_cases(folder / "cases", 1)
    return {
        "folder": folder,
        "cases": folder / "cases",
        "csv": write_cohort(folder / "cases", ids),
        "template": write_template(folder),
    }


@pytest.mark.parametrize(
    "case_id",
    [
        "summary.csv",
        "summary_stats.csv",
        "failures.csv",
        "cohort.json",
        "cohort_report.html",
        "Summary.CSV",
    ],
)
def test_a_case_named_like_a_cohort_file_is_refused_up_front(cohort, tmp_path, capfd, case_id):
    from TorchEsegetaLib.cohort.summary import COHORT_FILES

    table = tmp_path / "cohort.csv"
    table.write_text(f"case_id,image\n{case_id},{cohort['cases'] / 'c000.nii.gz'}\n")
    out = tmp_path / "out"
    code = main(["batch", str(table), "--job", str(cohort["template"]), "--out", str(out)])
    refused(capfd, code, f"case id(s) ['{case_id}']", "the names of the cohort's own files")
    assert not out.exists() and case_id.lower() in COHORT_FILES


def test_a_refused_cohort_leaves_nothing_behind(cohort, tmp_path, capfd):
    from TorchEsegetaLib.cohort.summary import COHORT_FILES

    batch = ["batch", str(cohort["csv"]), "--job", str(cohort["template"]), "--quiet"]
    by_folder = ["batch", str(cohort["cases"]), "--job", str(cohort["template"]), "--quiet"]
    before = snapshot(cohort["folder"])
    # the cohort's own input folder, or a folder inside it: refused before anything is made
    for command, out, words in (
        (batch, cohort["cases"], "holds the cohort file"),
        (by_folder, cohort["cases"], "is the cohort folder"),
        (by_folder, cohort["cases"] / "results", "lies inside the cohort folder"),
        (batch, cohort["cases"] / "c000.nii.gz", "is the image of case c000"),
    ):
        code = main([*command, "--out", str(out)])
        refused(capfd, code, "choose an --out apart from the inputs", words)
        assert not (cohort["cases"] / ".cohort").exists() and not (out / ".cohort").exists()
    assert snapshot(cohort["folder"]) == before
    # a folder of the user's: its files are never replaced by summaries
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.csv").write_text("my own summary")
    refused(capfd, main([*batch, "--out", str(mine)]), "no torchesegeta cohort wrote")
    assert [p.name for p in mine.iterdir()] == ["summary.csv"]
    # refused once the folder is locked (another job in the way): only what was there stays
    out = tmp_path / "results"
    assert main([*batch, "--out", str(out)]) == 0
    # what a cohort writes beside its run folders is what no case may be named
    assert {p.name for p in out.iterdir()} == {*COHORT_FILES, "c000", ".cohort"}
    assert json.loads((out / "cohort.json").read_text())["tool"] == "torchesegeta"
    previous = snapshot(out)
    changed = write_template(tmp_path, methods=["input_x_gradient"])
    code = main(["batch", str(cohort["csv"]), "--job", str(changed), "--out", str(out)])
    capfd.readouterr()
    assert code == 2 and snapshot(out) == previous
