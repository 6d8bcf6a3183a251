"""Anatomy-level summaries: structure names from the files atlases come with (read as Slicer reads
them), the per-structure shares of known maps, the inputs' checks, the CLI end to end, and a
cohort's aggregate."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from TorchEsegetaLib.cli import main
from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.label_names import read_label_names, write_colour_table
from TorchEsegetaLib.io.volume import Geometry
from TorchEsegetaLib.runs.structures import (
    OUTSIDE,
    Structures,
    load_structures,
    parse_structures,
    structure_rows,
)

GEOMETRY = Geometry((8, 8, 8), (1.0, 1.0, 2.0))
NAMES = {0: "Background", 1: "left lung", 2: "liver", 3: "vessel, big"}


def labels() -> np.ndarray:
    array = np.zeros((8, 8, 8), np.int32)
    array[:4] = 1  # half the volume
    array[4:, :2] = 2  # an eighth
    return array


# --- names ----------------------------------------------------------------------------------


def _slicer_colour_node(scene, names):

    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode")
    node.SetTypeToUser()
    node.SetNumberOfColors(max(names) + 1)
    for label, name in names.items():
        node.SetColor(label, name, 0.1 * label, 0.2, 0.3, 1.0)
    return node


@pytest.mark.parametrize("suffix", ["ctbl", "txt", "csv"])
def test_colour_tables_written_by_slicer_are_read_as_slicer_reads_them(tmp_path, suffix):
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("slicer-core is not installed")
    scene = slicer.vtkMRMLScene()
    node = _slicer_colour_node(scene, NAMES)
    storage = slicer.vtkMRMLColorTableStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / f"table.{suffix}"))
    assert storage.WriteData(node)
    assert read_label_names(tmp_path / f"table.{suffix}") == NAMES


def test_our_colour_table_is_read_back_by_slicer(tmp_path):
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("slicer-core is not installed")
    path = write_colour_table(NAMES, tmp_path / "ours.ctbl")
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode")
    storage = slicer.vtkMRMLColorTableStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    assert {label: node.GetColorName(label) for label in NAMES} == NAMES
    assert read_label_names(path) == NAMES


@pytest.mark.parametrize(
    "name, text",
    [
        ("map.json", '{"1": "left lung", "2": "liver"}'),
        ("list.json", '["Background", "left lung", "liver"]'),
        ("objects.json", '[{"label": 1, "name": "left lung"}, {"label": 2, "name": "liver"}]'),
        ("header.csv", "label,name\n1,left lung\n2,liver\n"),
        ("bare.csv", "1,left lung\n2,liver\n"),
    ],
)
def test_names_from_json_and_csv(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    names = read_label_names(tmp_path / name)
    assert names[1] == "left lung" and names[2] == "liver"


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("a.csv", "label,name\none,liver\n", "label 'one' is not an integer"),
        ("b.csv", "label,name\n1,a\n1,b\n", "names label 1 twice"),
        ("c.json", "[1, 2]", "must hold"),
        ("d.xml", "<x/>", "unknown format"),
        ("e.ctbl", "# nothing\n", "names no label"),
    ],
)
def test_bad_names_files_are_one_clear_error(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(UserInputError, match=message):
        read_label_names(tmp_path / name)


def test_the_names_file_is_told_apart_from_a_colon_in_a_path():
    assert parse_structures("atlas.nii.gz:names.ctbl") == {
        "labelmap": "atlas.nii.gz",
        "names": "names.ctbl",
    }
    assert parse_structures(r"C:\data\atlas.nii.gz") == {
        "labelmap": r"C:\data\atlas.nii.gz",
        "names": None,
    }
    assert parse_structures(r"C:\atlas.nii.gz:C:\names.json")["names"] == r"C:\names.json"


# --- shares ---------------------------------------------------------------------------------


def test_shares_and_enrichment_of_known_maps():
    structures = Structures(labels(), {1: "left lung", 2: "liver"}, "atlas.nii.gz")
    uniform = np.ones((8, 8, 8))
    liver_only = np.where(labels() == 2, -3.0, 0.0)
    liver_only[0, 0, 0] = 1.0  # one positive voxel, in the lung
    rows = structure_rows(
        {"uniform": ("Uniform", uniform), "liver": ("Liver", liver_only)}, structures
    )
    by = {(r["method"], r["structure"]): r for r in rows}
    assert [r["structure"] for r in rows[:3]] == [OUTSIDE, "left lung", "liver"]
    for name, share in ((OUTSIDE, 3 / 8), ("left lung", 1 / 2), ("liver", 1 / 8)):
        row = by["uniform", name]
        assert row["volume_share"] == pytest.approx(share)
        assert row["abs_share"] == pytest.approx(share) and row["enrichment"] == pytest.approx(1)
    liver = by["liver", "liver"]
    total = 3.0 * 64 + 1.0
    assert liver["abs_share"] == pytest.approx(192 / total)
    assert liver["enrichment"] == pytest.approx(192 / total / (1 / 8))
    assert by["liver", "left lung"]["positive_share"] == pytest.approx(1.0)
    assert liver["positive_share"] == 0.0
    for method in ("uniform", "liver"):
        shares = [r["abs_share"] for r in rows if r["method"] == method]
        assert sum(shares) == pytest.approx(1.0)
    zero = structure_rows({"zero": ("Zero", np.zeros((8, 8, 8)))}, structures)
    assert all(r["abs_share"] is None and r["enrichment"] is None for r in zero)


# --- inputs -----------------------------------------------------------------------------------


def test_a_label_image_on_another_grid_is_one_clear_error(tmp_path):
    path = write_volume(labels(), Geometry((8, 8, 8)), tmp_path / "atlas.nii.gz", dtype=np.uint8)
    with pytest.raises(UserInputError, match="not on the image grid.*resample it"):
        load_structures({"labelmap": str(path)}, GEOMETRY)


def test_the_structure_files_are_inputs_the_output_folder_keeps_apart_from(tmp_path):
    """Both files are in the job's inputs, so an output folder holding either is refused (the
    command line's cases are in test_cli_safety)."""
    from TorchEsegetaLib.runs.destination import check_apart_from_inputs
    from TorchEsegetaLib.runs.job import Job

    out = tmp_path / "run"
    atlas = write_volume(labels(), GEOMETRY, tmp_path / "atlas.nii.gz", dtype=np.uint8)
    names = write_colour_table(NAMES, out / "sub" / "names.ctbl")
    job = Job(
        images=[str(tmp_path / "image.nii.gz")],
        model={"kind": "demo"},
        target="class:1",
        methods=["saliency"],
        output=str(out),
        structures=f"{atlas}:{names}",
    )
    inputs = job.input_paths()
    assert ("structure label image", str(atlas)) in inputs
    assert ("structure names file", str(names)) in inputs
    with pytest.raises(UserInputError, match="holds the structure names file"):
        check_apart_from_inputs(out, inputs)
    check_apart_from_inputs(out, [i for i in inputs if i[0] != "structure names file"])


def test_a_slicer_segmentation_names_its_own_segments(tmp_path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(labels().transpose(2, 1, 0).astype(np.uint8))
    image.SetSpacing(GEOMETRY.spacing)
    for index, (label, name) in enumerate(((1, "left lung"), (2, "liver"))):
        image.SetMetaData(f"Segment{index}_Name", name)
        image.SetMetaData(f"Segment{index}_LabelValue", str(label))
        image.SetMetaData(f"Segment{index}_Layer", "0")
    sitk.WriteImage(image, str(tmp_path / "organs.seg.nrrd"))
    structures = load_structures({"labelmap": str(tmp_path / "organs.seg.nrrd")}, GEOMETRY)
    assert structures.names == {1: "left lung", 2: "liver"}
    assert np.array_equal(structures.labels, labels())


# --- end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """A small demo-model input (24^3 MRA-like volume) and an atlas of it."""
    from TorchEsegetaLib.models.demo import demo_structures
    from TorchEsegetaLib.models.demo.synthetic import make_vessel_volume

    root = tmp_path_factory.mktemp("structures")
    geometry = Geometry((24, 24, 24), (0.8, 0.8, 0.8))
    image, truth = make_vessel_volume((24, 24, 24), seed=3)
    write_volume(image, geometry, root / "image.nii.gz")
    atlas, names = demo_structures(truth, geometry)
    write_volume(atlas, geometry, root / "atlas.nii.gz", dtype=np.uint8)
    write_colour_table(names, root / "atlas.ctbl")
    return root, atlas, names


def test_explain_with_structures_writes_the_table_the_figure_and_the_report(demo_like, capsys):
    root, atlas, names = demo_like
    out = root / "run"
    arguments = ["explain", "--image", str(root / "image.nii.gz"), "--method", "saliency"]
    arguments += ["--structures", f"{root / 'atlas.nii.gz'}:{root / 'atlas.ctbl'}"]
    assert main([*arguments, "--out", str(out), "--quiet"]) == 0
    with open(out / "structures.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["structure"] for r in rows] == [names[k] for k in sorted(names)]
    assert [int(r["voxels"]) for r in rows] == [int((atlas == k).sum()) for k in sorted(names)]
    assert sum(float(r["abs_share"]) for r in rows) == pytest.approx(1.0, abs=1e-4)
    record = json.loads((out / "run.json").read_text())
    assert record["structures"]["file"] == "structures.csv" and record["structures"]["count"] == 3
    assert record["job"]["structures"]["names"].endswith("atlas.ctbl")
    assert "figures/structures.png" in record["figures"]
    assert main(["report", str(out)]) == 0
    report = (out / "report.html").read_text()
    assert "<h2>By structure</h2>" in report and "vessel surroundings (1.5 mm)" in report
    assert report.index("id='structures'") < report.index("<h2>Provenance</h2>")


def test_bad_structures_on_the_command_line_exit_2_in_one_line(demo_like, capsys, tmp_path):
    root, atlas, _ = demo_like
    other = write_volume(atlas, Geometry((24, 24, 24)), tmp_path / "other.nii.gz", dtype=np.uint8)
    arguments = ["explain", "--image", str(root / "image.nii.gz"), "--out", str(tmp_path / "r")]
    for structures, message in (
        (str(other), "is not on the image grid"),
        (str(tmp_path / "missing.nii.gz"), "does not exist"),
        (f"{root / 'atlas.nii.gz'}:{root / 'nope.json'}", "names file .* does not exist"),
    ):
        assert main([*arguments, "--structures", structures, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and __import__("re").search(message, err), err
    assert not (tmp_path / "r").exists()


def test_a_cohort_aggregates_the_cases_structures_and_recommendations(tmp_path):
    from test_recommendation import _evaluation

    from TorchEsegetaLib.cohort.summary import write_summary
    from TorchEsegetaLib.metrics.recommendation import recommend
    from TorchEsegetaLib.runs.structures import structures_csv

    structures = Structures(labels(), {1: "left lung", 2: "liver"}, "atlas.nii.gz")
    cases = []
    for index in range(3):
        folder = tmp_path / f"case{index}"
        folder.mkdir()
        lung = np.where(labels() == 1, 1.0 + index, 0.1)
        rows = structure_rows({"good": ("Good", lung)}, structures)
        (folder / "structures.csv").write_text(structures_csv(rows))
        evaluation = _evaluation({"good": (0.3, 0.3, 0.9), "fair": (0.1, 0.1, 0.4)},
                                 {"good": True, "fair": True})  # fmt: skip
        (folder / "summary.json").write_text(json.dumps(recommend(evaluation)))
        record = {"status": "complete", "methods": [], "metrics": evaluation.to_json()}
        (folder / "run.json").write_text(json.dumps(record))
        cases.append({"case": folder.name, "status": "ok"})
    record = {"cases": cases, "counts": {"cases": 3, "ok": 3}, "template_job": {}}
    result = write_summary(tmp_path, record)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["recommended"] == "good" and summary["evidence"]["cases"] == 3
    with open(tmp_path / "structures_stats.csv", newline="") as handle:
        stats = {r["structure"]: r for r in csv.DictReader(handle)}
    assert int(stats["left lung"]["n"]) == 3
    expected = [256 * (1 + i) / (256 * (1 + i) + 256 * 0.1) for i in range(3)]
    assert float(stats["left lung"]["abs_share_mean"]) == pytest.approx(np.mean(expected), 1e-4)
    assert float(stats["left lung"]["abs_share_sd"]) == pytest.approx(
        np.std(expected, ddof=1), 1e-3
    )
    assert result["recommendation"]["recommended"] == "good"
    report = (tmp_path / "cohort_report.html").read_text()
    assert "Which map to look at first" in report and "left lung" in report
