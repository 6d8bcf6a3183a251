"""Uncertainty: the statistics' known answers, test-time augmentation's exact inversion, seeded
Monte-Carlo dropout, ensembles of checkpoints, the uncertainty target (complete integrated
gradients), the cost estimate, the run folder, the report and the cohort summary.

nnU-Net's ensemble members against nnUNetPredictor are in test_nnunet.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from extras import require_extra
from helpers import TINY_UNET_KWARGS, LinearVoxelModel, tiny_unet

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.volume import Geometry, Volume
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.loading import LoadedModel
from TorchEsegetaLib.models.uncertainty import UncertaintySpec, parse_uncertainty
from TorchEsegetaLib.models.uncertainty.statistics import (
    MemberStatistics,
    entropy,
    predictive_entropy,
)

SHAPE = (14, 12, 10)


def oblique_volume(seed: int = 0) -> Volume:
    """An anisotropic, obliquely oriented image without symmetry (a flip that is not undone
    shows)."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.0, 1.0, SHAPE).astype(np.float32)
    image += np.linspace(0.0, 2.0, SHAPE[0], dtype=np.float32)[:, None, None]
    c, s = np.cos(0.4), np.sin(0.4)
    direction = (c, 0, s, 0, 1, 0, -s, 0, c)
    return Volume(image[None], Geometry(SHAPE, (2.5, 0.8, 1.3), (4.0, -7.0, 11.0), direction))


def loaded(network: torch.nn.Module, **card: object) -> LoadedModel:
    return LoadedModel(network.eval(), ModelCard(**card), {"kind": "memory"}, None)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=0))
    return shifted / shifted.sum(axis=0)


# --- the statistics ---------------------------------------------------------------------


def test_identical_members_give_exactly_zero_mutual_information_and_std():
    probabilities = softmax(np.random.default_rng(1).normal(size=(3, 5, 6, 7)).astype(np.float32))
    statistics = MemberStatistics(exclusive=True, class_index=1)
    for _ in range(5):
        statistics.add(probabilities)
    maps = statistics.maps()
    assert maps["entropy"].max() > 0.1
    np.testing.assert_array_equal(maps["entropy"], entropy(probabilities, True))
    assert (maps["mutual_information"] == 0).all() and (maps["std"] == 0).all()
    assert statistics.class_flip_share() == 0.0
    assert len(set(statistics.class_voxels)) == 1


def test_two_members_give_the_entropy_and_mutual_information_of_the_formula():
    # one voxel, two classes: member logits (0, 2) and (1, -1)
    first, second = np.array([0.0, 2.0]), np.array([1.0, -1.0])
    p, q = softmax(first[:, None]), softmax(second[:, None])
    statistics = MemberStatistics(exclusive=True, class_index=1)
    for member in (p, q):
        statistics.add(member.astype(np.float32).reshape(2, 1, 1, 1))
    mean = (p + q) / 2
    h = float(-(mean * np.log(mean)).sum())
    expected_entropy = [float(-(m * np.log(m)).sum()) for m in (p, q)]
    mutual_information = h - sum(expected_entropy) / 2
    assert statistics.entropy().item() == pytest.approx(h, rel=1e-6)
    assert statistics.mutual_information().item() == pytest.approx(mutual_information, rel=1e-5)
    assert statistics.std().item() == pytest.approx(abs(p[1, 0] - q[1, 0]) / 2, rel=1e-6)
    # member 1 says class 1, member 2 class 0: the voxel flips
    assert statistics.class_flip_share() == 1.0 and statistics.class_voxels == [1, 0]


def test_independent_labels_use_binary_entropies():
    p = np.array([0.9, 0.2], dtype=np.float32).reshape(2, 1, 1, 1)
    binary = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    assert entropy(p, exclusive=False).item() == pytest.approx(float(binary.sum()), rel=1e-6)


@pytest.mark.parametrize(("activation", "exclusive"), [("softmax", True), ("sigmoid", False)])
def test_differentiable_entropy_equals_the_maps_and_stays_finite(activation, exclusive):
    logits = torch.randn(1, 4, 3, 5, 6, 7, dtype=torch.float64)
    logits[0, :, 1, 0, 0, 0] = 200.0  # probabilities that underflow to zero elsewhere
    values = predictive_entropy(logits.float(), activation, exclusive)
    probabilities = torch.softmax(logits, 2) if exclusive else torch.sigmoid(logits)
    mean = probabilities.mean(1)[0].numpy().astype(np.float32)
    np.testing.assert_allclose(values[0].numpy(), entropy(mean, exclusive), atol=2e-6)
    x = logits.float().requires_grad_(True)
    predictive_entropy(x, activation, exclusive).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_specs_are_checked_and_parsed_from_the_command_line():
    assert parse_uncertainty("ensemble, tta:members=16;noise=0;flip_axes=ik") == [
        "ensemble",
        {"kind": "tta", "members": 16, "noise": 0.0, "flip_axes": [0, 2]},
    ]
    spec = UncertaintySpec.from_any({"kind": "tta", "members": 16, "flip_axes": [2, 0]})
    assert spec.flip_axes == [0, 2] and spec.to_dict() == {
        "kind": "tta",
        "members": 16,
        "flip_axes": [0, 2],
    }
    for bad, message in (
        ("bayes", "must be one of ensemble, tta, dropout"),
        ({"kind": "tta", "members": 1}, "at least 2"),
        ({"kind": "ensemble", "members": 4}, "the ensemble's members are the model's own"),
        ({"kind": "dropout", "noise": 0.1}, "takes no noise"),
    ):
        with pytest.raises(UserInputError, match=message):
            UncertaintySpec.from_any(bad)
    with pytest.raises(UserInputError, match="flip_axes"):
        parse_uncertainty("tta:flip_axes=x")


# --- test-time augmentation ---------------------------------------------------------------


def _member_probabilities(model: LoadedModel, volume: Volume, spec: UncertaintySpec):
    from TorchEsegetaLib.models.postprocessing import restored_probabilities
    from TorchEsegetaLib.models.uncertainty.members import build_members
    from TorchEsegetaLib.runs.case import prepare_case
    from TorchEsegetaLib.targets.spec import TargetSpec

    case = prepare_case(
        volume, model, TargetSpec(kind="roi", start=(2, 2, 2), end=(5, 5, 5)), "cpu"
    )
    members = build_members(spec, model, case.whole_volume_forward(), case.x, seed=3)
    with torch.no_grad():
        found = [
            restored_probabilities(members.member(m, case.x), model.card, case.info)
            for m in range(len(members))
        ]
    reference = restored_probabilities(case.segmentation.logits, model.card, case.info)
    return members, found, reference, case.x


GRIDS = {
    "input grid": {},
    "card spacing": {"spacing": (1.0, 1.1, 0.9)},
    "bundle transforms": {
        "preprocessing": [
            {"kind": "orientation", "axcodes": "RAS"},
            {"kind": "spacing", "pixdim": [1.0, 1.1, 0.9]},
        ]
    },
}


@pytest.mark.parametrize("grid", list(GRIDS))
def test_tta_inversion_restores_every_member_to_the_input_grid_exactly(grid):
    """A voxelwise model is flip-equivariant: every flip, once undone, gives the prediction
    itself, bit for bit, through every way onto the model's grid (an image without symmetry:
    a flip not undone, or undone along the wrong axis, would show)."""
    model = loaded(LinearVoxelModel(), **GRIDS[grid])
    spec = UncertaintySpec("tta", members=8, intensity_scale=0.0, noise=0.0)
    members, found, reference, x = _member_probabilities(model, oblique_volume(), spec)
    flips = {flip for flip, _, _ in members.plan}
    assert len(flips) == 8  # every combination of the three axes
    for probabilities in found:
        np.testing.assert_array_equal(probabilities, reference)
    with torch.no_grad():  # what the test would see of a flip left in place
        left_flipped = members.base(torch.flip(x, [2]))
        assert not torch.equal(left_flipped, members.member(1, x))


def test_flip_equivariant_network_gives_identical_tta_members():
    network = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1)
    with torch.no_grad():  # a kernel symmetric under every flip
        kernel = torch.rand(2, 1, 3, 3, 3)
        for dims in ([2], [3], [4]):
            kernel = kernel + torch.flip(kernel, dims)
        network.weight.copy_(kernel)
    model = loaded(network)
    spec = UncertaintySpec("tta", members=8, intensity_scale=0.0, noise=0.0)
    _, found, reference, _ = _member_probabilities(model, oblique_volume(), spec)
    for probabilities in found:
        np.testing.assert_allclose(probabilities, reference, atol=1e-6)


def test_tta_draws_are_seeded_and_scale_and_noise_change_the_members():
    import TorchEsegetaLib as te

    model = loaded(tiny_unet(), in_channels=1, out_channels=2, size_divisible=2)
    volume = oblique_volume()
    options = {"uncertainty": [{"kind": "tta", "members": 4}], "methods": ["saliency"]}
    runs = [
        te.explain(volume, model=model, device="cpu", seed=seed, **options) for seed in (0, 0, 1)
    ]
    first, again, other = (r.uncertainty[0] for r in runs)
    assert first.members == again.members and first.members != other.members
    np.testing.assert_array_equal(first.maps["entropy"], again.maps["entropy"])
    assert not np.array_equal(first.maps["entropy"], other.maps["entropy"])
    assert first.maps["mutual_information"].max() > 0


# --- Monte-Carlo dropout ---------------------------------------------------------------


def dropout_unet() -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(**{**TINY_UNET_KWARGS, "dropout": 0.3}).eval()


def test_dropout_samples_differ_and_the_seed_reproduces_them():
    from TorchEsegetaLib.models.inference import SegmentationForward
    from TorchEsegetaLib.models.uncertainty.members import DropoutMembers

    network = dropout_unet()
    card = ModelCard(size_divisible=2)
    x = torch.rand(1, 1, 16, 16, 16)

    def samples(seed: int) -> list[torch.Tensor]:
        members = DropoutMembers(SegmentationForward(network, card), 3, seed)
        with torch.no_grad():
            return [members.member(m, x) for m in range(3)]

    first, again, other = samples(0), samples(0), samples(5)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])
    with torch.no_grad():  # the hooks are gone: the network is deterministic again
        assert torch.equal(network(x), network(x))
        # one member is one network: the same mask for every example of a batch
        members = DropoutMembers(SegmentationForward(network, card), 3, 0)
        batch = members.member(1, torch.cat([x, x]))
    torch.testing.assert_close(batch[1:], first[1])


def test_models_without_dropout_or_ensemble_are_refused_in_one_line(tmp_path):
    import TorchEsegetaLib as te

    volume = oblique_volume()
    model = loaded(tiny_unet(), size_divisible=2)
    with pytest.raises(UserInputError, match="no dropout layers"):
        te.explain(volume, model=model, device="cpu", uncertainty=["dropout"])
    with pytest.raises(UserInputError, match="no ensemble of its own"):
        te.explain(volume, model=model, device="cpu", uncertainty=["ensemble"])
    scripted = loaded(torch.jit.script(dropout_unet()), size_divisible=2)
    with pytest.raises(UserInputError, match="TorchScript model"):
        te.explain(volume, model=scripted, device="cpu", uncertainty=["dropout"])
    with pytest.raises(UserInputError, match="lists none; add --uncertainty"):
        te.explain(volume, model=model, device="cpu", target="uncertainty:class")


# --- an ensemble of checkpoints ----------------------------------------------------------


def test_extra_checkpoints_are_the_ensemble(tmp_path):
    import TorchEsegetaLib as te

    paths = []
    for seed in (0, 0, 1):
        paths.append(tmp_path / f"net{len(paths)}.pt")
        torch.save(tiny_unet(seed=seed).state_dict(), paths[-1])
    reference = {"kind": "monai", "network": "UNet", "kwargs": TINY_UNET_KWARGS}
    volume = oblique_volume()
    same = te.explain(
        volume,
        model={**reference, "checkpoint": str(paths[0]), "ensemble": [str(paths[1])]},
        device="cpu",
        uncertainty=["ensemble"],
    ).uncertainty[0]
    assert same.members == ["checkpoint 0 (the model's)", "checkpoint 1"]
    assert (same.maps["mutual_information"] == 0).all() and (same.maps["std"] == 0).all()
    different = te.explain(
        volume,
        model={**reference, "checkpoint": str(paths[0]), "ensemble": [str(p) for p in paths[1:]]},
        device="cpu",
        uncertainty=["ensemble"],
    )
    assert different.uncertainty[0].summary["members"] == 3
    assert different.uncertainty[0].maps["mutual_information"].max() > 1e-4
    assert len(different.model.source["ensemble_sha256"]) == 2


def test_an_output_folder_holding_an_ensemble_checkpoint_is_refused(tmp_path):
    """The extra checkpoints are inputs like the model's own: no run writes beside them."""
    import TorchEsegetaLib as te

    models = tmp_path / "models"
    models.mkdir()
    paths = [models / "net0.pt", tmp_path / "net1.pt"]
    for path in paths:
        torch.save(tiny_unet().state_dict(), path)
    reference = {"kind": "monai", "network": "UNet", "kwargs": TINY_UNET_KWARGS}
    model = {**reference, "checkpoint": str(paths[1]), "ensemble": [str(paths[0])]}
    with pytest.raises(UserInputError, match="ensemble checkpoint"):
        te.explain(
            oblique_volume(), model=model, device="cpu", out=models, uncertainty=["ensemble"]
        )
    assert sorted(p.name for p in models.iterdir()) == ["net0.pt"]


# --- the uncertainty target ----------------------------------------------------------------


def test_integrated_gradients_is_complete_for_the_uncertainty_target():
    from TorchEsegetaLib.methods import ScoreModel
    from TorchEsegetaLib.runs.case import prepare_case
    from TorchEsegetaLib.runs.job import MethodSpec
    from TorchEsegetaLib.runs.runner import explain_volume
    from TorchEsegetaLib.targets.spec import TargetSpec
    from TorchEsegetaLib.targets.uncertainty import resolve_members

    model = loaded(tiny_unet(seed=2), size_divisible=2, intensity={"kind": "zscore"})
    volume = oblique_volume()
    specs = [UncertaintySpec("tta", members=3)]
    target = resolve_members(TargetSpec.parse("uncertainty:roi:3,3,2:9,8,6"), specs)
    method = MethodSpec.from_any({"name": "integrated_gradients", "params": {"n_steps": 128}})
    result = explain_volume(volume, model, target, [method], device="cpu", uncertainty=specs)
    case = prepare_case(volume, model, target, torch.device("cpu"), seed=0)
    score = ScoreModel(case.forward, case.bound)
    with torch.no_grad():
        delta = float(score(case.x) - score(torch.zeros_like(case.x)))
    total = float(result.maps["integrated_gradients"].sum())
    assert abs(delta) > 1e-3
    assert abs(total - delta) <= 0.01 * abs(delta)
    # the score is the mean of the entropy map over the region (same members, same grid)
    entropy_map = result.uncertainty[0].maps["entropy"]
    with torch.no_grad():
        assert float(score(case.x)) == pytest.approx(
            float(entropy_map[result.region].mean()), rel=1e-5
        )
    assert result.target["uncertainty"] == "tta" and result.target["members"] == 3


def test_gradient_methods_explain_the_uncertainty_of_a_region():
    import TorchEsegetaLib as te

    model = loaded(tiny_unet(seed=2), size_divisible=2)
    result = te.explain(
        oblique_volume(),
        model=model,
        target="uncertainty:roi:3,3,2:9,8,6",
        methods=["saliency", "input_x_gradient", "occlusion"],
        uncertainty=[{"kind": "tta", "members": 3}],
        device="cpu",
    )
    for label, values in result.maps.items():
        assert np.isfinite(values).all() and np.abs(values).max() > 0, label
    for method, message in (
        ("gradcam", "members run the network's layers on flipped"),
        ("lrp", "predictive entropy of several members is no logit"),
    ):
        with pytest.raises(UserInputError, match=f"{method} cannot explain this .*{message}"):
            te.explain(
                oblique_volume(),
                model=model,
                target="uncertainty:class",
                methods=[method],
                uncertainty=["tta"],
                device="cpu",
            )


# --- a run: cost, files, report, cohort ---------------------------------------------------


def test_run_folder_holds_the_maps_their_record_and_summaries(tmp_path):
    import TorchEsegetaLib as te
    from TorchEsegetaLib.io.images import read_volume
    from TorchEsegetaLib.runs.report import write_report

    events = []
    volume = oblique_volume()
    te.explain(
        volume,
        model=loaded(tiny_unet(), size_divisible=2, class_names=["background", "vessel"]),
        methods=["saliency"],
        device="cpu",
        out=tmp_path / "run",
        progress=events.append,
        uncertainty=[{"kind": "tta", "members": 4, "noise": 0.05}],
    )
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    entries = record["uncertainty"]
    assert [(e["kind"], e["quantity"], e["members"]) for e in entries] == [
        ("tta", "entropy", 4),
        ("tta", "mutual_information", 4),
        ("tta", "std", 4),
    ]
    for entry in entries:
        written = read_volume(tmp_path / "run" / entry["file"])
        assert written.geometry.mismatch(volume.geometry) is None
        assert written.array.min() >= 0
    (summary,) = record["uncertainty_summary"]
    assert summary["class"] == "vessel" and summary["members"] == 4
    assert 0 <= summary["class_flip_share"] <= 1 and summary["mean_entropy_in_target"] > 0
    volumes = summary["class_volume_ml"]
    assert len(volumes["members"]) == 4 and volumes["min"] <= volumes["max"]
    millilitres = np.prod(volume.geometry.spacing) / 1000
    assert volumes["max"] <= volume.array.size * millilitres
    # the cost estimate covers the passes beyond the segmentation (member 0 is it)
    assert summary["estimate"]["forward_passes"] == 3
    assert any("uncertainty tta: 3 forward passes" in e["message"] for e in events)
    assert "figures/uncertainty.png" in record["figures"]
    html = write_report(tmp_path / "run").read_text()
    assert "<h2>Uncertainty</h2>" in html and "uncertainty_tta_entropy" in html


def test_cohort_summary_csv_has_each_cases_uncertainty_to_sort_by(tmp_path):
    """A cohort run with uncertainty: summary.csv has, per case, the rows of method
    ``uncertainty tta`` with the values of that case's run.json summary; summary_stats.csv
    has their statistics over the cases."""
    import csv

    from cohort_cases import write_cases, write_cohort

    from TorchEsegetaLib.cohort import run_cohort
    from TorchEsegetaLib.cohort.summary import UNCERTAINTY_METRICS

    ids = write_cases(tmp_path / "data", 2)
    template = {
        "model": {"kind": "demo"},
        "target": {"kind": "class", "class": "vessel"},
        "methods": ["saliency"],
        "device": "cpu",
        "figures": False,
        "uncertainty": [{"kind": "tta", "members": 3}],
    }
    out = tmp_path / "results"
    result = run_cohort(
        write_cohort(tmp_path / "data", ids), template, out, workers=1, progress=False
    )
    assert result.exit_status == 0
    with open(out / "summary.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["method"] == "uncertainty tta"]
    by_case: dict[str, dict[str, float]] = {}
    for row in rows:
        by_case.setdefault(row["case"], {})[row["metric"]] = float(row["value"])
    assert sorted(by_case) == ids
    for case, values in by_case.items():
        assert list(values) == list(UNCERTAINTY_METRICS)
        (summary,) = json.loads((out / case / "run.json").read_text())["uncertainty_summary"]
        assert values["mean_entropy_in_target"] == pytest.approx(summary["mean_entropy_in_target"])
        assert values["class_flip_share"] == pytest.approx(summary["class_flip_share"])
        volume = summary["class_volume_ml"]
        assert values["class_volume_range_ml"] == pytest.approx(volume["max"] - volume["min"])
    entropies = [values["mean_entropy_in_target"] for values in by_case.values()]
    assert entropies[0] != entropies[1]  # two cases, two different uncertainties to sort by
    with open(out / "summary_stats.csv", newline="") as handle:
        stats = {(r["method"], r["metric"]): r for r in csv.DictReader(handle)}
    assert stats[("uncertainty tta", "mean_entropy_in_target")]["n"] == "2"


def test_command_line_writes_uncertainty_and_refuses_bad_kinds_in_one_line(tmp_path, capsys):
    from helpers import tiny_unet_cli_args

    from TorchEsegetaLib.cli import main
    from TorchEsegetaLib.io.images import write_volume

    volume = oblique_volume()
    image = write_volume(volume.array[0], volume.geometry, tmp_path / "image.nii.gz")
    torch.save(tiny_unet().state_dict(), tmp_path / "unet.pt")
    common = ["explain", "--image", str(image), *tiny_unet_cli_args(tmp_path / "unet.pt")]
    common += ["--method", "saliency", "--no-figures", "--quiet", "--device", "cpu"]
    out = tmp_path / "run"
    assert main([*common, "--uncertainty", "tta:members=3;noise=0", "--out", str(out)]) == 0
    assert "uncertainty tta" in capsys.readouterr().out
    record = json.loads((out / "run.json").read_text())
    assert record["job"]["uncertainty"] == [{"kind": "tta", "members": 3, "noise": 0.0}]
    assert [e["quantity"] for e in record["uncertainty"]] == [
        "entropy",
        "mutual_information",
        "std",
    ]
    bad = {
        "no dropout": (["--uncertainty", "dropout"], "no dropout layers"),
        "unknown kind": (["--uncertainty", "bayes"], "must be one of ensemble, tta, dropout"),
        "one member": (["--uncertainty", "tta:members=1"], "at least 2"),
        "no value": (["--uncertainty", "tta:members"], "KIND:key=value"),
        "target without kind": (["--target", "uncertainty:class"], "lists none"),
        "crop": (
            [
                "--target",
                "uncertainty:roi:2,2,2:6,6,6",
                "--uncertainty",
                "tta",
                "--crop-margin",
                "2",
            ],
            "crop_margin does not apply",
        ),
    }
    for what, (args, expected) in bad.items():
        wrong = tmp_path / what.replace(" ", "_")
        assert main([*common, *args, "--out", str(wrong)]) == 2, what
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, (what, err)
        assert "Traceback" not in err and not wrong.exists(), what


@pytest.mark.slow
def test_the_benchmark_runs_in_its_quick_configuration(capsys):
    import importlib.util
    from pathlib import Path

    require_extra("nnunet")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "uncertainty.py"
    spec = importlib.util.spec_from_file_location("uncertainty_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.main(["--quick"]) == 0
    printed = capsys.readouterr().out
    assert "ensemble, nnU-Net (16 members: 2 folds x 8 mirrorings)" in printed
    assert "network passes beyond the segmentation's: 0" in printed
    assert printed.count("tta, 8 members") == 2
