"""The Python API: ``TorchEsegetaLib.explain(...)`` returns arrays plus geometry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .case import ExplainResult, ProgressHandler
from .errors import UserInputError
from .job import Job, MethodSpec
from .targets import TargetSpec
from .volume import Geometry, Volume


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
) -> ExplainResult:
    """Explain a segmentation model on one case.

    Args:
        images: image file(s) (one per model input channel), a :class:`Volume`, or an array
            (C, I, J, K) / (I, J, K) with ``geometry`` (identity geometry when omitted).
        model: "demo", a path (TorchScript file or MONAI bundle folder), a model reference
            dict (see the README) or a :class:`~TorchEsegetaLib.models.LoadedModel`.
        target: "class", "class:NAME", "mask:FILE", "roi:i0,j0,k0:i1,j1,k1", "voxel:i,j,k",
            a dict of :class:`TargetSpec` fields, or a TargetSpec.
        methods: method names, ``{"name", "params", "label"}`` dicts or MethodSpecs.
        out: when given, also write a run folder there (as ``torchesegeta run`` does).
        precision: "float32", or "bfloat16" / "float16" autocast of the network.
        crop_margin: whole-volume models: explain on the target's box grown by this many
            voxels, an approximation measured in ``result.target["crop"]``.

    Returns:
        An :class:`~TorchEsegetaLib.case.ExplainResult`: ``result.maps`` (label -> (I, J, K)
        float32 array), ``result.geometry``, ``result.labelmap``, ``result.probabilities``,
        per-method status and timings.
    """
    from .destination import check_output_folder, save_run
    from .io import read_channels
    from .models import LoadedModel, load_model, model_ref_from_string
    from .run_folder import write_run_folder
    from .runner import explain_volume

    volume = _as_volume(images, geometry, read_channels)
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        reference = model_ref_from_string(model) if isinstance(model, (str, Path)) else model
        loaded = load_model(reference, card)
    if isinstance(target, str):
        target = TargetSpec.parse(target)
    elif isinstance(target, dict):
        target = TargetSpec.from_dict(target)
    specs = [MethodSpec.from_any(m) for m in methods]
    claim = None if out is None else check_output_folder(Path(out), overwrite)
    result = explain_volume(
        volume,
        loaded,
        target,
        specs,
        device=device,
        seed=seed,
        max_batch=max_batch,
        method_budget_s=method_budget_s,
        progress=progress,
        precision=precision,
        crop_margin=crop_margin,
    )
    if claim is not None:
        if isinstance(images, (Volume, np.ndarray)):
            images_field = ["<array in memory>"]
        elif isinstance(images, (list, tuple)):
            images_field = [str(p) for p in images]
        else:
            images_field = [str(images)]
        job = Job(
            images=images_field,
            model=loaded.source,
            card=card,
            target=target,
            methods=specs,
            output=str(claim.path),
            device=device,
            seed=seed,
            precision=precision,
            crop_margin=crop_margin,
        )
        record = {"job": job.to_dict(), "model": loaded.record()}
        save_run(claim, lambda folder: write_run_folder(result, folder, record))
    return result


def _as_volume(images: Any, geometry: Geometry | None, read_channels: Any) -> Volume:
    if isinstance(images, Volume):
        return images
    if isinstance(images, np.ndarray):
        array = images[None] if images.ndim == 3 else images
        if array.ndim != 4:
            raise UserInputError(
                f"an image array must be (I, J, K) or (C, I, J, K); got shape {images.shape}"
            )
        return Volume(np.asarray(array, dtype=np.float32), geometry or Geometry(array.shape[1:]))
    paths = [images] if isinstance(images, (str, Path)) else list(images)
    return read_channels(paths)
