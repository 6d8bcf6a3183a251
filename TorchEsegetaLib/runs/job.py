"""The Job: everything one run needs, validated and serialisable (JSON or YAML).

The Slicer panel, the CLI, batch scripts and the Python API all build a Job; one runner
executes it (:func:`TorchEsegetaLib.runs.runner.run_job`). The published schema is
``TorchEsegetaLib/schema/job.schema.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserInputError, parser_error_line
from ..io.paths import refuse_special
from ..schema.registry import Registry, Spec
from ..schema.validation import check_job, job_schema, plain, schema_path
from ..targets.spec import TargetSpec

#: The job's fields, in the schema's order (the schema is the one list of them).
JOB_FIELDS = tuple(job_schema()["properties"])
#: The model reference's keys that name files, and what each is called in messages.
_MODEL_FILES = (("path", "model"), ("checkpoint", "checkpoint"))

__all__ = ["JOB_FIELDS", "Job", "MethodSpec", "schema_path"]


@dataclass
class MethodSpec(Spec):
    """One method of a run: its registry name, parameters, and the label its outputs are filed under."""

    #: names the method's output files; empty: the method's name
    label: str = ""
    job_field = "methods"

    @classmethod
    def registry(cls) -> Registry:
        from ..methods import REGISTRY

        return REGISTRY

    def __post_init__(self) -> None:
        super().__post_init__()
        self.label = self.label or self.name

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "label": self.label or None}


@dataclass
class Job:
    """A validated run description. See the README's "Job files" section for every field."""

    images: list[str]
    #: the model reference; None: a network given in memory (Python API, Slicer console)
    model: dict[str, Any] | None = field(default_factory=lambda: {"kind": "demo"})
    card: dict[str, Any] | None = None
    target: TargetSpec = field(default_factory=TargetSpec)
    methods: list[MethodSpec] = field(default_factory=lambda: [MethodSpec("saliency")])
    output: str | None = None
    device: str = "auto"
    seed: int = 0
    format: str = "nii.gz"
    figures: bool = True
    overwrite: bool = False
    max_batch: int | None = None
    method_budget_s: float | None = None
    #: evaluation metrics run after the methods (names or {name, params}; see `torchesegeta metrics`)
    metrics: list[Any] = field(default_factory=list)
    #: "float32", or autocast "bfloat16" / "float16" (a non-finite map is recomputed in float32)
    precision: str = "float32"
    #: whole-volume models: explain on the target's box grown by this many voxels (a measured,
    #: recorded approximation; None: the whole volume, exact)
    crop_margin: int | None = None
    #: warn before the run about a method estimated to take longer than this (seconds; None:
    #: 10 minutes)
    warn_after_s: float | None = None
    #: on the CPU, compute with denormal floats flushed to zero (checked on the first pass)
    flush_denormals: bool = True

    def __post_init__(self) -> None:
        # Every field against the shipped schema first, whichever front end built the job.
        check_job({name: plain(getattr(self, name)) for name in JOB_FIELDS})
        self.images = list(self.images)
        self.target = TargetSpec.from_any(self.target)
        self.methods = [MethodSpec.from_any(m) for m in self.methods]
        labels = [m.label for m in self.methods]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise UserInputError(
                f'method(s) {duplicates} appear twice; give each a distinct label ("label": "..." in the job)'
            )
        if self.metrics:
            from ..metrics import metric_specs

            self.metrics = metric_specs(list(self.metrics))

    def model_to_load(self) -> dict[str, Any]:
        """The model reference to load; a job whose network was given in memory has none."""
        if self.model is None:
            raise UserInputError(
                "the job's model is null (a network that was given in memory); name the model "
                'to load, e.g. "model": {"kind": "torchscript", "path": "model.ts"}'
            )
        return self.model

    def input_paths(self) -> list[tuple[str, str]]:
        """(what, path) of everything the job reads from disk: images, the model's files, the
        target mask, files named by method and metric parameters. The output folder keeps apart
        from all of them (:func:`~TorchEsegetaLib.runs.destination.check_output_folder`)."""
        from ..io.images import split_channel_selector

        found = [("image", str(split_channel_selector(image)[0])) for image in self.images]
        model = self.model or {}
        if model.get("kind") == "demo":
            from ..models.demo import demo_weights_path

            found.append(("demo model", str(demo_weights_path())))
        found += [(what, str(model[key])) for key, what in _MODEL_FILES if model.get(key)]
        if self.target.kind == "mask" and self.target.mask:
            found.append(("target mask", str(self.target.mask)))
        for spec in [*self.methods, *self.metrics]:
            found += spec.input_files()
        # "<array in memory>", "<array>": what was given in memory has no file
        return [(what, path) for what, path in found if not path.startswith("<")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": list(self.images),
            "model": None if self.model is None else dict(self.model),
            "card": self.card,
            "target": self.target.to_dict(),
            "methods": [m.to_dict() for m in self.methods],
            "output": self.output,
            "device": self.device,
            "seed": self.seed,
            "format": self.format,
            "figures": self.figures,
            "overwrite": self.overwrite,
            "max_batch": self.max_batch,
            "method_budget_s": self.method_budget_s,
            "metrics": [m.to_dict() for m in self.metrics],
            "precision": self.precision,
            "crop_margin": self.crop_margin,
            "warn_after_s": self.warn_after_s,
            "flush_denormals": self.flush_denormals,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> Job:
        """Build a Job from its dictionary form; relative paths resolve against ``base``."""
        check_job(plain(data))  # before the paths are touched
        data = dict(data)
        if base is not None:
            data["images"] = [_resolve(p, base) for p in data["images"]]
            if data.get("output"):
                data["output"] = _resolve(data["output"], base)
            if data.get("model"):
                model = dict(data["model"])
                for key in ("path", "checkpoint"):
                    if model.get(key):
                        model[key] = _resolve(model[key], base)
                data["model"] = model
            target = data.get("target")
            if isinstance(target, dict) and target.get("mask"):
                data["target"] = {**target, "mask": _resolve(target["mask"], base)}
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> Job:
        """Read a job from a .json, .yaml or .yml file."""
        path = Path(path)
        return cls.from_dict(read_job_file(path), base=path.parent)


def read_job_file(path: str | Path) -> Any:
    """The contents of a .json, .yaml or .yml job (or job template) file, unvalidated."""
    path = Path(path)
    refuse_special(path, "job file")
    if not path.is_file():
        raise UserInputError(f"job file {path} does not exist; check the path")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as e:
        raise UserInputError(
            f"job file {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: "
            f"{parser_error_line(e, 'a job file')}"
        ) from e


def _resolve(value: Any, base: Path) -> str:
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else base / path)
