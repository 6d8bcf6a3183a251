"""The body of ``TorchEsegetaLogic().explain(...)``: explain volume nodes in-process, return nodes.

Kept out of TorchEsegeta.py so it runs (and is tested) on the slicer-core wheel, where the
module classes cannot be imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .resultNodes import MapResult, addResultNodes
from .targetNodes import targetFromNode
from .volumeNodes import arrayAndGeometryFromVolumeNode

GEOMETRY_TOLERANCE = 1e-4


def explainNodes(
    scene,
    volumeNodes,
    model: Any = "demo",
    methods: Sequence[str | dict] = ("saliency",),
    target: Any = None,
    metrics: Sequence[str | dict] = (),
    targetClass: str | int | None = None,
    segmentId: str | None = None,
    output: str = "logits",
    card: dict | None = None,
    device: str = "auto",
    seed: int = 0,
    methodBudgetSeconds: float | None = None,
    maxBatch: int | None = None,
    precision: str = "float32",
    cropMargin: int | None = None,
    folderName: str | None = None,
    progress=None,
    flushDenormals: bool = True,
) -> dict:
    """Explain the model's segmentation of ``volumeNodes`` and add the results to ``scene``.

    Args:
        scene: the scene holding the volumes; the results are added to it.
        volumeNodes: one scalar volume node per model input channel (or a single node).
        model: "demo", a TorchScript file, MONAI bundle folder or nnU-Net v2 model folder path, a model reference dict
            (``{"kind": "monai", "network": ..., "kwargs": ..., "checkpoint": ...}``), or a
            loaded model (``TorchEsegetaLib.models.loading.load_model``).
        methods: method names or ``{"name", "params", "label"}`` dicts (``torchesegeta methods``).
        target: what to explain (see :func:`targetNodes.targetFromNode`): None for the
            predicted mask of ``targetClass``, a segmentation node, a markups ROI or point list,
            or an engine target.
        metrics: evaluation metrics to score every map (``torchesegeta metrics`` lists them):
            a table node and plot charts join the results.
        targetClass: the class to explain, by name or output index.
        segmentId: which segment of a segmentation node target.
        output: score "logits" or "probabilities".
        card: model card entries overriding what the model says.
        device, seed, methodBudgetSeconds, maxBatch: as in the engine's Job.
        precision: "float32", or "bfloat16" / "float16" autocast of the network (a map that
            comes out non-finite is recomputed in float32).
        cropMargin: whole-volume models: explain on the target's box grown by this many voxels,
            an approximation measured in ``result.target["crop"]`` (None: the whole volume).
        folderName: subject hierarchy folder of the results (default "TorchEsegeta <input>").
        progress: optional callable receiving the engine's progress events.
        flushDenormals: on the CPU, compute with denormal floats flushed to zero (checked
            against exact arithmetic on the first pass), for this call only: Slicer's threads
            get their own setting back afterwards.

    Returns:
        ``{"maps": {label: volume node}, "segmentation": segmentation node, "table": metrics
        table node or None, "charts": {metric title: plot chart node}, "folderItemId": folder
        item, "skipped": {label: status}, "result": ExplainResult, "evaluation": Evaluation or
        None}``.
    """
    from TorchEsegetaLib.io.volume import Volume
    from TorchEsegetaLib.models.loading import LoadedModel
    from TorchEsegetaLib.runs.api import explain_job_in_memory, job_model
    from TorchEsegetaLib.runs.job import Job

    volumeNodes = _asList(volumeNodes)
    if not volumeNodes:
        raise ValueError("give at least one input volume node")
    reference = volumeNodes[0]
    arrays, geometry = channelsOfNodes(volumeNodes)
    loaded = model if isinstance(model, LoadedModel) else None
    job = Job(  # validates every setting before anything runs
        images=[f"<volume node {node.GetName()!r}>" for node in volumeNodes],
        model=job_model(model),
        card=card,
        target=targetFromNode(target, reference, targetClass, output, segmentId),
        methods=methods,
        metrics=metrics,
        device=device,
        seed=seed,
        method_budget_s=methodBudgetSeconds,
        max_batch=maxBatch,
        precision=precision,
        crop_margin=cropMargin,
        flush_denormals=flushDenormals,
    )
    result = explain_job_in_memory(job, Volume(arrays, geometry), loaded, progress)
    evaluation = result.evaluation
    maps = {
        m.spec.label: MapResult(m.map, _title(m.spec), m.signed)
        for m in result.methods
        if m.attribution is not None
    }
    added = addResultNodes(
        scene,
        geometry,
        maps,
        labelmap=result.labelmap,
        classNames=result.model.card.label_names,
        evaluation=evaluation,
        folderName=folderName or f"TorchEsegeta {reference.GetName()}",
        referenceVolumeNode=reference,
    )
    skipped = {m.spec.label: m.status for m in result.methods if m.attribution is None}
    return {**added, "skipped": skipped, "result": result, "evaluation": evaluation}


def segmentNodes(scene, volumeNodes, loaded, device: str = "auto", flushDenormals: bool = True):
    """Segment ``volumeNodes`` with a loaded model; returns a new segmentation node whose
    segments are named and coloured by class, under the input's transform. ``flushDenormals``:
    as in :func:`explainNodes`."""
    from TorchEsegetaLib.io.volume import Volume
    from TorchEsegetaLib.models.inference import segment

    from .segmentations import segmentationNodeFromLabelmap

    volumeNodes = _asList(volumeNodes)
    arrays, geometry = channelsOfNodes(volumeNodes)
    result = segment(loaded, Volume(arrays, geometry), device, flush_denormals=flushDenormals)
    node = segmentationNodeFromLabelmap(
        scene,
        result.labelmap,
        geometry,
        loaded.card.label_names,
        f"{volumeNodes[0].GetName()} segmentation",
    )
    node.SetAndObserveTransformNodeID(volumeNodes[0].GetTransformNodeID())
    return node


def addDemoVolume(scene, name: str = "TorchEsegeta demo"):
    """Add the demo's synthetic MRA-like volume (the demo model segments its vessels)."""
    from TorchEsegetaLib.models.demo import demo_volume

    from .volumeNodes import volumeNodeFromArray

    volume, _ = demo_volume()
    return volumeNodeFromArray(scene, volume.array[0], volume.geometry, name)


def loadedModel(model: Any, card: dict | None = None):
    """A loaded engine model from any of the forms :func:`explainNodes` accepts."""
    from TorchEsegetaLib.models.loading import LoadedModel, load_model
    from TorchEsegetaLib.runs.api import model_reference

    if isinstance(model, LoadedModel):
        return model
    return load_model(model_reference(model), card)


def channelsOfNodes(volumeNodes) -> tuple[np.ndarray, Any]:
    """The (C, I, J, K) float32 input of the engine and its grid, one channel per node.

    Raises:
        ValueError: a node that is not a scalar volume, or channels on different grids.
    """
    arrays, geometry = [], None
    for index, node in enumerate(volumeNodes):
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
            raise ValueError(f"input {index + 1} is not a scalar volume node")
        array, nodeGeometry = arrayAndGeometryFromVolumeNode(node)
        if geometry is None:
            geometry = nodeGeometry
        else:
            difference = geometry.mismatch(nodeGeometry, GEOMETRY_TOLERANCE)
            if difference is not None:
                raise ValueError(
                    f"input {node.GetName()!r} is not on the grid of {volumeNodes[0].GetName()!r} "
                    f"({difference}); resample it first (Resample Scalar/Vector/DWI Volume)"
                )
        arrays.append(array.astype(np.float32, copy=False))
    return np.stack(arrays), geometry


def _title(spec) -> str:
    title = spec.create().title
    return title if spec.label == spec.name else f"{title} ({spec.label})"


def _asList(volumeNodes) -> list:
    if isinstance(volumeNodes, (list, tuple)):
        return list(volumeNodes)
    return [volumeNodes]
