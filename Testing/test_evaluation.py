"""Evaluation end to end: a run folder written by the CLI gains metrics.csv, scores in run.json
and figures; the report is one self-contained HTML file; bad metric input exits with status 2."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from helpers import TINY_UNET_KWARGS, tiny_unet

from TorchEsegetaLib.cli import main
from TorchEsegetaLib.engine.context import CancelToken
from TorchEsegetaLib.errors import CancelledError, UserInputError
from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry, Volume
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.loading import LoadedModel
from TorchEsegetaLib.runs.evaluation import evaluate_result, rows_and_curves
from TorchEsegetaLib.runs.job import Job, MethodSpec
from TorchEsegetaLib.runs.runner import explain_volume
from TorchEsegetaLib.targets.spec import TargetSpec


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    torch.save(tiny_unet().state_dict(), root / "unet.pt")
    image = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32) * 100
    write_volume(image, Geometry((16, 16, 16), (1.0, 1.0, 1.2)), root / "image.nii.gz")
    out = root / "run"
    status = main(
        [
            "explain",
            "--image",
            str(root / "image.nii.gz"),
            "--model",
            str(root / "unet.pt"),
            "--network",
            "UNet",
            "--network-kwargs",
            json.dumps(TINY_UNET_KWARGS),
            "--target",
            "roi:4,4,4:11,11,11",
            "--method",
            "saliency,gradcam",
            "--evaluate",
            "deletion,mass_in_target",
            "--param",
            "deletion.steps=5",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0
    return out


def test_explain_with_evaluate_records_scores_and_peak_memory(run_folder):
    record = json.loads((run_folder / "run.json").read_text())
    scores = record["metrics"]["scores"]
    assert {"deletion", "mass_in_target"} <= set(scores["saliency"])
    # The recommendation's randomisation check ran (one re-run, all layers at once) only for
    # the methods it needed: those better than random block orders.
    checked = set(record["metrics"]["details"].get("model_randomisation", {}))
    summary = json.loads((run_folder / "summary.json").read_text())
    faithful = {
        e["method"] for e in summary["ranking"] if e["verdict"] != "no better than a random order"
    }
    assert checked <= faithful
    if checked:
        assert record["metrics"]["metrics"]["model_randomisation"]["params"]["steps"] == 1
    assert summary["evidence"]["components"] == {
        "deletion_gain": "deletion against random block orders"
    }
    # as the metric reads it, as method parameters are: "5" from the command line becomes 5
    assert record["job"]["metrics"][0] == {"name": "deletion", "params": {"steps": 5}}
    assert len(record["metrics"]["curves"]["deletion"]["gradcam"]["x"]) == 6
    for method in record["methods"]:
        assert "peak_memory_mb" in method and "memory_kind" in method
    assert (run_folder / "figures" / "deletion_insertion.png").stat().st_size > 1000


def test_evaluate_command_adds_metrics_csv_scores_and_figures(run_folder, capsys):
    status = main(
        [
            "evaluate",
            str(run_folder),
            "--metric",
            "infidelity,model_randomisation,sparseness",
            "--param",
            "model_randomisation.steps=2",
            "--param",
            "infidelity.samples=3",
            "--quiet",
        ]
    )
    assert status == 0
    assert "model_randomisation" in capsys.readouterr().out
    with open(run_folder / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["method"] for row in rows) == ["gradcam", "saliency"]
    for name in ("deletion", "mass_in_target", "infidelity", "model_randomisation", "sparseness"):
        assert all(row[name] != "" for row in rows), name  # earlier metrics are kept
    record = json.loads((run_folder / "run.json").read_text())
    metrics = record["metrics"]
    assert metrics["metrics"]["deletion"]["direction"] == "lower"
    assert len(metrics["curves"]["model_randomisation"]["saliency"]["y"]) == 3
    assert "passed" in metrics["details"]["model_randomisation"]["saliency"]
    assert set(metrics["ranking"]) == {"gradcam", "saliency"}
    for name in ("deletion_insertion.png", "randomisation.png", "ranking.png"):
        assert f"figures/{name}" in record["figures"]
        assert (run_folder / "figures" / name).stat().st_size > 1000
    assert not [p for p in run_folder.rglob(".*")], "no temporary file left behind"


def test_evaluating_some_methods_again_keeps_the_other_scores(run_folder):
    command = [
        "evaluate",
        str(run_folder),
        "--metric",
        "sparseness,entropy",
        "--method",
        "saliency",
    ]
    assert main([*command, "--quiet"]) == 0
    with open(run_folder / "metrics.csv", newline="") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert rows["saliency"]["entropy"] != "" and rows["gradcam"]["entropy"] == ""
    assert rows["gradcam"]["sparseness"] != "" and rows["gradcam"]["deletion"] != ""
    record = json.loads((run_folder / "run.json").read_text())
    assert set(record["metrics"]["curves"]["deletion"]) == {"saliency", "gradcam"}


def test_report_is_one_self_contained_html_file(run_folder):
    assert main(["report", str(run_folder)]) == 0
    text = (run_folder / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and "</html>" in text
    sources = re.findall(r"""\bsrc\s*=\s*['"]([^'"]*)""", text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"\bhref\s*=|<link\b|@import|url\(", text)
    for expected in ("Model card", "Saliency", "Grad-CAM", "faithfulness", "torch", "peak memory"):
        assert expected in text
    # the first screen is the summary; provenance (sha256, sliding-window settings) at the end
    assert text.index("<h2>Summary</h2>") < text.index("<h2>Evaluation</h2>")
    assert text.index("<h2>Evaluation</h2>") < text.index("<h2>Provenance</h2>")
    assert text.index("model sha256") > text.index("<h2>Provenance</h2>")
    assert text.index("sw_batch_size") > text.index("<h2>Provenance</h2>")
    assert "segmented the image into background and" in text


def test_report_reads_as_prose_not_json(run_folder):
    assert main(["report", str(run_folder)]) == 0
    text = (run_folder / "report.html").read_text()
    model = re.search(r"<th>model source</th><td>(.*?)</td>", text).group(1)
    assert model.startswith("MONAI UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=[")
    assert f"weights {run_folder.parent / 'unet.pt'}" in model
    assert "{" not in model and "&quot;" not in model
    # The image was written with spacing 1.2, which float32 stores as 1.2000000476837158.
    record = json.loads((run_folder / "run.json").read_text())
    assert record["geometry"]["spacing"][2] != 1.2
    assert "<th>spacing</th><td>1 x 1 x 1.2 mm</td>" in text
    assert "<th>image size (voxels)</th><td>16 x 16 x 16</td>" in text
    assert "1.2000000" not in text
    assert "class='missing'" not in text


def test_report_flags_a_map_deleted_since_the_run(run_folder, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_folder, copy)
    (copy / "gradcam.nii.gz").unlink()
    assert main(["report", str(copy)]) == 0
    out = capsys.readouterr().out.splitlines()
    warnings = [line for line in out if line.startswith("warning:")]
    assert warnings == [
        "warning: gradcam.nii.gz is listed in run.json but missing from the run folder; "
        "the report flags it"
    ]
    text = (copy / "report.html").read_text()
    flagged = re.search(r"<div class='missing'>(.*?)</div>", text).group(1)
    assert "<code>gradcam.nii.gz</code>" in flagged and "saliency.nii.gz" not in flagged
    assert "map file gradcam.nii.gz missing" in text


def test_a_metric_that_cannot_run_says_so_once(run_folder, capsys):
    assert (
        main(["evaluate", str(run_folder), "--metric", "relevance_rank_accuracy", "--quiet"]) == 0
    )
    out = capsys.readouterr().out
    assert out.count("no reference mask") == 1
    assert "relevance_rank_accuracy (every method): skipped: no reference mask" in " ".join(
        out.split()
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metric", "deletoin"], "did you mean deletion"),
        (["--metric", "deletion", "--param", "deletion.steps=0"], "at least 1"),
        (["--metric", "deletion", "--param", "entropy.bins=3"], "not among --metric"),
        (["--metric", "entropy", "--param", "entropy.bins=3"], "unknown parameter"),
        (["--method", "occlusion"], "have no map"),
    ],
)
def test_bad_metric_input_exits_2_with_one_clear_line(run_folder, capsys, args, message):
    before = (run_folder / "run.json").read_bytes()
    assert main(["evaluate", str(run_folder), "--quiet", *args]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert (run_folder / "run.json").read_bytes() == before


def test_evaluate_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_metrics_command_lists_the_registry(capsys):
    assert main(["metrics", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["insertion"]["direction"] == "higher"
    assert listed["model_randomisation"]["default"] is False
    assert main(["metrics"]) == 0
    assert "--param deletion.steps=<int>" in capsys.readouterr().out


def test_job_validates_its_metrics():
    with pytest.raises(UserInputError, match="unknown metric"):
        Job(images=["x.nii.gz"], metrics=["nope"])
    job = Job(images=["x.nii.gz"], metrics=[{"name": "entropy"}])
    assert job.to_dict()["metrics"] == [{"name": "entropy", "params": {}}]


@pytest.fixture(scope="module")
def explained():
    card = ModelCard(in_channels=1, out_channels=2, class_names=["bg", "fg"], size_divisible=2)
    model = LoadedModel(tiny_unet(), card, {"kind": "test"}, None)
    image = np.random.default_rng(1).random((1, 16, 16, 16)).astype(np.float32) * 100
    volume = Volume(image, Geometry((16, 16, 16)))
    target = TargetSpec(kind="roi", start=(4, 4, 4), end=(11, 11, 11))
    methods = [MethodSpec("saliency"), MethodSpec("input_x_gradient")]
    return explain_volume(volume, model, target, methods, device="cpu")


def test_in_memory_evaluation_gives_rows_and_curves_for_tables_and_plots(explained):
    region = np.zeros((16, 16, 16), bool)
    region[4:12, 4:12, 4:12] = True
    evaluation = evaluate_result(
        explained,
        ["insertion", {"name": "relevance_rank_accuracy"}],
        reference_mask=region,
    )
    rows, curves = rows_and_curves(evaluation)
    assert [set(row) >= {"method", "faithfulness", "seconds", "insertion"} for row in rows] == [
        True,
        True,
    ]
    assert all(0 <= row["relevance_rank_accuracy"] <= 1 for row in rows)
    x, y = curves["insertion/saliency"]
    assert len(x) == len(y) == 21


def test_evaluation_can_be_cancelled(explained):
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        evaluate_result(explained, ["deletion"], cancel=token)


def test_evaluation_figures_name_methods_by_their_titles(tmp_path):
    """The curves' legends and the ranking table say "Integrated Gradients", not the method id."""
    import matplotlib.image

    from TorchEsegetaLib.figures import metric_figures
    from TorchEsegetaLib.metrics.results import Evaluation

    labels = {"saliency": "Saliency", "ig64": "Integrated Gradients (ig64)"}
    evaluation = Evaluation(
        metrics={"deletion": {"direction": "lower"}, "sparseness": {"direction": "higher"}},
        scores={
            "saliency": {"deletion": 0.4, "sparseness": 0.2},
            "ig64": {"deletion": 0.3, "sparseness": 0.5},
        },
        curves={"deletion": {k: ([0.0, 0.5, 1.0], [1.0, 0.6, 0.2]) for k in labels}},
        method_info={k: {"title": title} for k, title in labels.items()},
    )
    figure = metric_figures._curves_figure(evaluation, metric_figures._colours(evaluation.methods))
    legend = [t.get_text() for ax in figure.axes for t in ax.get_legend().get_texts()]
    assert legend == ["Saliency (AUC 0.4)", "Integrated Gradients (ig64) (AUC 0.3)"]
    path = metric_figures._ranking(evaluation, tmp_path / "ranking.png")
    assert matplotlib.image.imread(path).shape[0] > 0
    figure = metric_figures._ranking_figure(evaluation)
    cells = {
        c.get_text().get_text()
        for ax in figure.axes
        for t in ax.tables
        for c in t.get_celld().values()
    }
    assert set(labels.values()) <= cells and not {"saliency", "ig64"} & cells
