"""One validator for every front end: job files, CLI flags, the Python API and the Slicer console
are checked against the shipped job schema (and the methods' declared parameters) before
anything runs; a wrong type is one line naming the field and what it must be."""

from __future__ import annotations

import copy
import json
from dataclasses import fields

import numpy as np
import pytest

from TorchEsegetaLib.cli import main
from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.methods import REGISTRY as METHODS
from TorchEsegetaLib.metrics import REGISTRY as METRICS
from TorchEsegetaLib.runs.api import explain
from TorchEsegetaLib.runs.job import JOB_FIELDS, Job
from TorchEsegetaLib.schema.validation import KEYWORDS, check, job_schema

VALID = {
    "images": ["t1.nii.gz", "t2.nii.gz"],
    "model": {"kind": "monai", "network": "UNet", "checkpoint": "unet.pt", "kwargs": {}},
    "card": {"class_names": ["background", "tumour"], "roi_size": [32, 32, 32]},
    "target": {"kind": "roi", "start": [1, 2, 3], "end": [4, 5, 6], "class": "tumour"},
    "methods": ["saliency", {"name": "occlusion", "params": {"window": 8}, "label": "occ-8"}],
    "metrics": ["deletion", {"name": "entropy", "params": {}}],
    "output": "run",
    "device": "cuda:1",
    "seed": 3,
    "format": "nrrd",
    "figures": False,
    "overwrite": True,
    "max_batch": None,
    "method_budget_s": 12.5,
    "crop_margin": 0,
    "precision": "bfloat16",
}

#: job field -> (wrong value, what the one line must say)
WRONG_TYPES = {
    "methods": ("saliency", 'job field "methods" must be a list of method names'),
    "images": ("t1.nii.gz", 'job field "images" must be a list of image files'),
    "seed": ("zero", "job field \"seed\" must be an integer, got the text 'zero'"),
    "figures": ("yes", 'job field "figures" must be true or false'),
    "overwrite": (1, 'job field "overwrite" must be true or false, got the number 1'),
    "max_batch": (2.5, 'job field "max_batch" must be an integer or null, got the number 2.5'),
    "model": ("demo", 'job field "model" must be an object with a "kind"'),
    "target": (3, 'job field "target" must be text in the CLI form'),
    "metrics": ("deletion", 'job field "metrics" must be a list of metric names'),
    "device": ("gpu", 'job field "device" must be auto, cpu, cuda or cuda:N'),
    "precision": ("double", 'job field "precision" must be one of float32, bfloat16, float16'),
    "format": ("png", 'job field "format" must be one of nii.gz, nrrd, mha'),
    "crop_margin": (-1, 'job field "crop_margin" must be at least 0'),
    "method_budget_s": (0, 'job field "method_budget_s" must be more than 0'),
    "card": ({"roi_size": [32, 32]}, 'job field "card.roi_size" needs 3 values; got 2'),
    "output": (["run"], 'job field "output" must be text or null, got a list'),
}

#: (a change to the valid job, what the one line must say) for nested fields
WRONG_NESTED = [
    (("methods", [{"name": "saliency", "params": [1]}]), '"methods[0].params" must be an object'),
    (("methods", [{"name": "saliency", "label": "a b"}]), '"methods[0].label" must be letters'),
    (("methods", [{"nme": "saliency"}]), "\"methods[0]\" has unknown field(s) ['nme']"),
    (("methods", []), 'job field "methods" is empty; give at least one'),
    (("images", [3]), 'job field "images[0]" must be text, got the number 3'),
    (("target", {"kind": "box"}), '"target.kind" must be one of class, mask, roi, voxel'),
    (("target", {"kind": "roi", "start": [1, 2]}), 'job field "target.start" needs 3 values'),
    (("model", {"kind": "keras"}), 'job field "model.kind" must be one of demo'),
    (("model", {"path": "x.ts"}), 'job field "model" needs the field "kind"'),
    (("seed", True), 'job field "seed" must be an integer, got true'),
    (("surprise", 1), "unknown job field(s) ['surprise']"),
]


def job_with(name, value):
    job = copy.deepcopy(VALID)
    job[name] = value
    return job


def one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("name", sorted(WRONG_TYPES))
def test_a_job_file_with_a_wrong_type_is_one_line_naming_the_field_exit_2(name, tmp_path, capsys):
    value, expected = WRONG_TYPES[name]
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job_with(name, value)))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    assert expected in one_line(capsys)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize(
    ("change", "expected"), WRONG_NESTED, ids=[c[1][:40] for c in WRONG_NESTED]
)
def test_nested_fields_are_named_by_their_path(change, expected, tmp_path, capsys):
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job_with(*change)))
    assert main(["run", str(path), "--quiet"]) == 2
    assert expected in one_line(capsys)


def test_methods_as_text_is_not_read_letter_by_letter(tmp_path, capsys):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"images": ["a.nii.gz"], "methods": "saliency"}))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = one_line(capsys)
    assert 'write ["saliency"]' in err and "'s'" not in err


def test_a_yaml_job_with_a_python_tag_is_refused_in_one_line_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "job.yaml"
    path.write_text(
        f"images: [a.nii.gz]\nmethods: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    assert main(["run", str(path), "--quiet"]) == 2
    err = one_line(capsys)
    assert "python/object/apply:os.system" in err and "line 2" in err
    assert "plain data only" in err
    assert not marker.exists()


def test_a_broken_yaml_job_is_one_line_with_its_position(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("images: [a.nii.gz\nmethods: x\n")
    assert main(["run", str(path), "--quiet"]) == 2
    assert "line 2" in one_line(capsys)


def test_the_python_api_and_the_job_share_the_validator():
    volume = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(UserInputError, match='job field "seed" must be an integer'):
        explain(volume, seed="zero")
    with pytest.raises(UserInputError, match='job field "methods" must be a list'):
        explain(volume, methods="saliency")
    with pytest.raises(UserInputError, match='"methods\\[0\\]" has unknown field'):
        explain(volume, methods=[{"name": "saliency", "steps": 3}])
    with pytest.raises(UserInputError, match="parameter 'n_steps' of method integrated_gradients"):
        explain(volume, methods=[{"name": "integrated_gradients", "params": {"n_steps": "x"}}])


def test_a_valid_job_passes_and_numpy_values_count_as_numbers():
    job = Job.from_dict(VALID)
    assert [m.label for m in job.methods] == ["saliency", "occ-8"]
    assert Job(images=["a.nii.gz"], seed=np.int64(4), target="voxel:1,2,3").seed == 4


# --- the validator against the reference implementation ---------------------------------------


def every_case():
    yield VALID, True
    for name, (value, _) in WRONG_TYPES.items():
        yield job_with(name, value), False
    for change, _ in WRONG_NESTED:
        yield job_with(*change), False
    minimal = {"images": ["a.nii.gz"]}
    yield minimal, True
    yield {**minimal, "target": "class:tumour", "methods": [{"name": "x", "label": None}]}, True
    yield {**minimal, "card": None, "output": None, "method_budget_s": None}, True
    yield {**minimal, "max_batch": 0}, False
    yield {**minimal, "card": {"overlap": 1.0}}, False
    yield {**minimal, "target": {"kind": "voxel", "voxel": [1, 2, 3], "label": 2.5}}, False
    yield [minimal], False


def test_the_validator_agrees_with_jsonschema_on_the_shipped_schema():
    jsonschema = pytest.importorskip("jsonschema")
    reference = jsonschema.Draft202012Validator(job_schema())
    for document, valid in every_case():
        assert reference.is_valid(document) is valid, document
        try:
            check(document, job_schema(), "job field", root="the job")
            ours = True
        except UserInputError:
            ours = False
        assert ours is valid, document


def test_declared_parameters_check_as_their_schema_says():
    jsonschema = pytest.importorskip("jsonschema")
    for registry in (METHODS, METRICS):
        for cls in registry.values():
            for param in cls.params:
                reference = jsonschema.Draft202012Validator(param.schema())
                assert reference.is_valid(param.default), (cls.name, param.name)
                assert param.coerce(param.default, cls.name) == param.default
                for wrong in ([1], {"a": 1}, None):
                    assert not reference.is_valid(wrong) or param.kind == "str"
                    if param.kind not in ("str", "choice"):
                        with pytest.raises(UserInputError, match=param.name):
                            param.coerce(wrong, cls.name)


def test_the_schema_uses_only_keywords_the_validator_knows():
    def walk(node):
        if isinstance(node, dict):
            if "properties" in node:
                yield from (k for k in node if k != "properties")
                for child in node["properties"].values():
                    yield from walk(child)
                return
            yield from node
            for child in node.values():
                yield from walk(child)
        elif isinstance(node, list):
            for child in node:
                yield from walk(child)

    unknown = set(walk(job_schema())) - KEYWORDS
    assert not unknown


def test_the_schema_and_the_job_have_the_same_fields_and_defaults():
    schema = job_schema()["properties"]
    assert set(JOB_FIELDS) == set(schema) == {f.name for f in fields(Job)}
    job = Job(images=["a.nii.gz"])
    for name, fragment in schema.items():
        if "default" in fragment:
            assert getattr(job, name) == fragment["default"], name


def test_a_network_given_in_memory_is_recorded_as_a_null_model_that_a_job_file_cannot_run(
    tmp_path, capsys
):
    import torch

    from TorchEsegetaLib.models.card import ModelCard
    from TorchEsegetaLib.models.loading import LoadedModel

    network = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    out = tmp_path / "run"
    image = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    explain(image, LoadedModel(network, ModelCard(), {}, None), "voxel:3,3,3", out=out)
    job = json.loads((out / "run.json").read_text())["job"]
    assert job["model"] is None
    (tmp_path / "job.json").write_text(json.dumps({**job, "images": ["a.nii.gz"]}))
    assert main(["run", str(tmp_path / "job.json"), "--out", str(tmp_path / "again")]) == 2
    assert "the job's model is null" in capsys.readouterr().err
