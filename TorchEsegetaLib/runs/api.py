"""The Python API: ``TorchEsegetaLib.explain(...)`` returns arrays plus geometry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserInputError
from ..io.volume import Geometry, Volume
from ..schema.validation import check, job_field_schema
from ..targets.spec import TargetSpec
from .case import ExplainResult, ProgressHandler
from .job import Job, MethodSpec

if TYPE_CHECKING:
    from ..engine.context import CancelToken


def explain(
    images: str | Path | Sequence[str | Path] | Volume | np.ndarray,
    model: str | dict[str, Any] | Any = "demo",
    target: str | dict[str, Any] | TargetSpec = "class",
    methods: Sequence[str | dict[str, Any] | MethodSpec] = ("saliency",),
    geometry: Geometry | None = None,
    card: dict[str, Any] | None = None,
    device: str = "auto",
    seed: int = 0,
    max_batch: int | None = None,
    method_budget_s: float | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: ProgressHandler | None = None,
    precision: str = "float32",
    crop_margin: int | None = None,
    metrics: Sequence[str | dict[str, Any]] = (),
    cancel: CancelToken | None = None,
    warn_after_s: float | None = None,
    flush_denormals: bool = True,
) -> ExplainResult:
    """Explain a segmentation model on one case.

    Args:
        images: image file(s) (one per model input channel), a :class:`Volume`, or an array
            (C, I, J, K) / (I, J, K) with ``geometry`` (identity geometry when omitted).
        model: "demo", a path (TorchScript file or MONAI bundle folder), a model reference
            dict (see the README) or a :class:`~TorchEsegetaLib.models.loading.LoadedModel`.
        target: "class", "class:NAME", "mask:FILE", "roi:i0,j0,k0:i1,j1,k1", "voxel:i,j,k",
            a dict of :class:`TargetSpec` fields, or a TargetSpec.
        methods: method names, ``{"name", "params", "label"}`` dicts or MethodSpecs.
        out: when given, also write a run folder there (as ``torchesegeta run`` does).
        precision: "float32", or "bfloat16" / "float16" autocast of the network.
        crop_margin: whole-volume models: explain on the target's box grown by this many
            voxels, an approximation measured in ``result.target["crop"]``.
        metrics: evaluation metrics to score the maps with (``result.evaluation``).
        cancel: a :class:`~TorchEsegetaLib.engine.context.CancelToken` that stops the run.
        warn_after_s: warn (progress event and ``result.warnings``) about a method estimated
            to take longer (default 10 minutes); each method's estimate is in run.json.
        flush_denormals: on the CPU, compute with denormal floats flushed to zero (checked
            against exact arithmetic on the first pass; ``result.denormals``), restoring every
            thread's own setting afterwards; False: exact, slower with denormal weights.

    The settings are checked as a :class:`Job`'s fields are, before anything runs.

    Returns:
        An :class:`~TorchEsegetaLib.runs.case.ExplainResult`: ``result.maps`` (label -> (I, J, K)
        float32 array), ``result.geometry``, ``result.labelmap``, ``result.probabilities``,
        per-method status and timings, and ``result.evaluation`` when metrics were asked for.
    """
    from ..io.images import read_channels
    from ..models.loading import LoadedModel

    loaded = model if isinstance(model, LoadedModel) else None
    job = Job.from_dict(  # every setting checked here, as a job file's are
        {
            "images": _image_names(images),
            "model": job_model(model),
            "card": card,
            "target": target,
            "methods": methods,
            "metrics": metrics,
            "output": None if out is None else str(Path(out).expanduser().absolute()),
            "overwrite": overwrite,
            "device": device,
            "seed": seed,
            "max_batch": max_batch,
            "method_budget_s": method_budget_s,
            "precision": precision,
            "crop_margin": crop_margin,
            "warn_after_s": warn_after_s,
            "flush_denormals": flush_denormals,
        }
    )
    volume = _as_volume(images, geometry, read_channels)
    return explain_job_in_memory(job, volume, loaded, progress, cancel)


def explain_job_in_memory(
    job: Job,
    volume: Volume,
    model: Any = None,
    progress: ProgressHandler | None = None,
    cancel: CancelToken | None = None,
) -> ExplainResult:
    """Run ``job`` on an image in memory (the job's ``images`` only describe it), with the
    :class:`~TorchEsegetaLib.models.loading.LoadedModel` ``model`` or, when None, the job's model;
    write the job's run folder when it names one."""
    from ..models.loading import load_model
    from .runner import claim_output, explain_job, save_result

    # an existing folder fails now, before any work
    destination = claim_output(job) if job.output else None
    if model is None:
        model = load_model(job.model_to_load(), job.card)
    result = explain_job(job, volume, model, progress, cancel)
    if destination is not None:
        save_result(job, result, destination, {}, progress)
    return result


def model_reference(model: str | Path | dict[str, Any]) -> dict[str, Any]:
    """The model reference for "demo", a model path, or a reference dict."""
    from ..models.loading import model_ref_from_string

    return model_ref_from_string(str(model)) if isinstance(model, (str, Path)) else model


def job_model(model: Any) -> dict[str, Any] | None:
    """The job's ``model``: the reference of the model to load or of a model given loaded, or
    None for a network given in memory that no model reference describes."""
    from ..models.loading import LoadedModel

    if not isinstance(model, LoadedModel):
        return model_reference(model)
    try:
        check(model.source, job_field_schema("model"), "model")
    except UserInputError:
        return None
    return model.source


def _image_names(images: Any) -> list[str]:
    """The job's ``images``: the files, or what stands for an image given in memory."""
    if isinstance(images, (Volume, np.ndarray)):
        return ["<array in memory>"]
    if isinstance(images, (list, tuple)):
        return [str(p) for p in images]
    return [str(images)]


def _as_volume(images: Any, geometry: Geometry | None, read_channels: Any) -> Volume:
    if isinstance(images, Volume):
        return images
    if isinstance(images, np.ndarray):
        array = images[None] if images.ndim == 3 else images
        if array.ndim != 4:
            raise UserInputError(
                f"an image array must be (I, J, K) or (C, I, J, K); got shape {images.shape}"
            )
        i, j, k = (int(n) for n in array.shape[1:])
        return Volume(np.asarray(array, dtype=np.float32), geometry or Geometry((i, j, k)))
    paths = [images] if isinstance(images, (str, Path)) else list(images)
    return read_channels(paths)
