"""The Job: everything one run needs, validated and serialisable (JSON or YAML).

The Slicer panel, the CLI, batch scripts and the Python API all build a Job; one runner
executes it (:func:`TorchEsegetaLib.runner.run_job`). The published schema is
``TorchEsegetaLib/schema/job.schema.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserInputError
from .registry import entry_fields
from .targets import TargetSpec

MAP_FORMATS = ("nii.gz", "nrrd", "mha")
JOB_FIELDS = (
    "images",
    "model",
    "card",
    "target",
    "methods",
    "output",
    "device",
    "seed",
    "format",
    "figures",
    "overwrite",
    "max_batch",
    "method_budget_s",
    "metrics",
    "precision",
    "crop_margin",
)
PRECISION_CHOICES = ("float32", "bfloat16", "float16")


@dataclass
class MethodSpec:
    """One method of a run: its registry name, parameters, and the label its outputs are filed under."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    def __post_init__(self) -> None:
        from .methods import get_method

        self.name = get_method(self.name).name
        self.label = self.label or self.name
        if not self.label.replace("_", "").replace("-", "").isalnum():
            raise UserInputError(
                f"method label {self.label!r} must use only letters, digits, '-' and '_' (it names output files)"
            )

    def create(self):
        from .methods import create_method

        return create_method(self.name, self.params)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params), "label": self.label}

    @classmethod
    def from_any(cls, value: str | dict[str, Any] | MethodSpec) -> MethodSpec:
        if isinstance(value, MethodSpec):
            return value
        if isinstance(value, str):
            return cls(value)
        entry = entry_fields(value, "method", "saliency", ("name", "params", "label"))
        return cls(entry["name"], dict(entry.get("params") or {}), entry.get("label"))


@dataclass
class Job:
    """A validated run description. See the README's "Job files" section for every field."""

    images: list[str]
    model: dict[str, Any] = field(default_factory=lambda: {"kind": "demo"})
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

    def __post_init__(self) -> None:
        if isinstance(self.images, (str, Path)):
            self.images = [str(self.images)]
        self.images = [str(p) for p in self.images]
        if not self.images:
            raise UserInputError("the job has no input image; give at least one (--image FILE)")
        if isinstance(self.target, dict):
            self.target = TargetSpec.from_dict(self.target)
        elif isinstance(self.target, str):
            self.target = TargetSpec.parse(self.target)
        self.methods = [MethodSpec.from_any(m) for m in self.methods]
        if not self.methods:
            raise UserInputError("the job has no method; give at least one (--method saliency)")
        labels = [m.label for m in self.methods]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise UserInputError(
                f'method(s) {duplicates} appear twice; give each a distinct label ("label": "..." in the job)'
            )
        for method in self.methods:
            created = method.create()  # validates the parameters now, before any work
            # keep them as the method reads them ("3" from a command line becomes 3)
            method.params = {k: created.config.get(k, v) for k, v in method.params.items()}
        if self.metrics:
            from .metrics import metric_specs

            self.metrics = metric_specs(list(self.metrics))
        if self.format not in MAP_FORMATS:
            raise UserInputError(
                f"unknown map format {self.format!r}; use one of {', '.join(MAP_FORMATS)}"
            )
        if self.precision not in PRECISION_CHOICES:
            raise UserInputError(
                f"unknown precision {self.precision!r}; use one of {', '.join(PRECISION_CHOICES)}"
            )
        if self.crop_margin is not None and int(self.crop_margin) < 0:
            raise UserInputError(f"crop_margin must be 0 or more voxels, got {self.crop_margin}")
        if self.max_batch is not None and int(self.max_batch) < 1:
            raise UserInputError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.method_budget_s is not None and float(self.method_budget_s) <= 0:
            raise UserInputError(f"method_budget_s must be positive, got {self.method_budget_s}")
        if not isinstance(self.model, dict) or "kind" not in self.model:
            raise UserInputError(
                'the job\'s model must be an object with a "kind" (demo, monai, torchscript or bundle)'
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": list(self.images),
            "model": dict(self.model),
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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> Job:
        """Build a Job from its dictionary form; relative paths resolve against ``base``."""
        if not isinstance(data, dict):
            raise UserInputError(
                "a job file must hold one object (a mapping of field names to values)"
            )
        unknown = sorted(set(data) - set(JOB_FIELDS))
        if unknown:
            raise UserInputError(
                f"unknown job field(s) {unknown}; known fields are {', '.join(JOB_FIELDS)}"
            )
        if "images" not in data:
            raise UserInputError('the job has no "images" field: list the input image files')
        data = dict(data)
        if base is not None:
            data["images"] = [_resolve(p, base) for p in _as_list(data["images"])]
            if data.get("output"):
                data["output"] = _resolve(data["output"], base)
            model = dict(data.get("model") or {"kind": "demo"})
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
            f"job file {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {e}"
        ) from e


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _resolve(value: Any, base: Path) -> str:
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else base / path)


def schema_path() -> Path:
    return Path(__file__).parent / "schema" / "job.schema.json"
