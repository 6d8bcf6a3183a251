"""A panel run: scene nodes -> files and a Job -> the worker process -> nodes from its run folder.

The inputs are copied into a private work folder (the scene and the user's files are only
read), the worker writes the run folder, and only a finished run folder is loaded into the
scene: a cancelled or failed run leaves the scene as it was.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from TorchEsegetaLib.io.images import write_volume

from . import enginePath
from .jobBuilder import PanelInputError, buildJob, targetDict, writeJob
from .process import CANCELLED, DONE, WorkerProcess
from .runFolder import loadRunFolder
from .targetNodes import pointVolumeRas, roiVoxelBox, segmentMask
from .volumeNodes import arrayAndGeometryFromVolumeNode


@dataclass
class RunRequest:
    """Everything the panel's sections say about a run (nodes, not files)."""

    volumeNodes: list
    model: dict[str, Any]
    methods: list[dict[str, Any]]
    outputFolder: str | Path
    region: str = "predicted mask"
    className: str | int | None = None
    output: str = "logits"
    segmentationNode: Any = None
    segmentId: str | None = None
    roiNode: Any = None
    pointNode: Any = None
    device: str = "auto"
    precision: str = "float32"
    budgetSeconds: float = 0.0
    metrics: list[str] = field(default_factory=list)
    maxBatch: int | None = None
    cropMargin: int | None = None
    flushDenormals: bool = True


class PanelRun:
    """One worker run started from the panel; poll it from a timer, then :meth:`load` it."""

    def __init__(self, worker: WorkerProcess, workFolder: Path, runFolder: Path, reference):
        self.worker = worker
        self.workFolder = workFolder
        self.runFolder = runFolder
        self.referenceVolumeNode = reference

    @property
    def protocol(self):
        return self.worker.protocol

    @property
    def finished(self) -> bool:
        return self.worker.finished

    def poll(self) -> list[dict[str, Any]]:
        events = self.worker.poll()
        if self.worker.finished:
            self.removeWorkFolder()
        return events

    def cancel(self) -> None:
        self.worker.cancel()

    def load(self, scene) -> dict:
        """Add the finished run's nodes to ``scene`` (see :func:`runFolder.loadRunFolder`)."""
        if self.protocol.state != DONE:
            raise RuntimeError(f"the run has not finished ({self.protocol.state}); nothing to load")
        return loadRunFolder(scene, self.protocol.runFolder, self.referenceVolumeNode)

    def removeWorkFolder(self) -> None:
        shutil.rmtree(self.workFolder, ignore_errors=True)


def inputVolumes(p, card) -> list:
    """The panel's input volume nodes, one per channel of the model (``card``; 1 if unknown).

    Raises:
        ValueError: more channels than the panel offers, or a channel with no volume chosen.
    """
    from .panelView import MAX_INPUT_CHANNELS

    channels = card.in_channels if card else 1
    if channels > MAX_INPUT_CHANNELS:
        raise ValueError(
            f"the model takes {channels} channels; the panel offers {MAX_INPUT_CHANNELS}: "
            "use TorchEsegetaLogic().explain or batch mode"
        )
    nodes = [getattr(p, f"inputVolume{index}") for index in range(channels)]
    if not all(nodes):
        raise ValueError(f"the model takes {channels} input volume(s); choose each of them")
    return nodes


def requestFromPanel(p, volumeNodes, model, defaultOutputFolder) -> RunRequest:
    """The run the panel's parameter node ``p`` describes (its values, read once).

    Args:
        p: the parameter node (any object with its fields).
        volumeNodes: the input volume nodes, one per model channel.
        model: the engine's model reference for the panel's Model section.
        defaultOutputFolder: where run folders go when the panel names no folder.
    """
    from . import methodForms
    from .jobBuilder import methodEntries, metricEntries

    custom = str(p.outputFolder or "") not in ("", ".")
    metrics = list(p.metrics) if methodForms.evaluationAvailable() else []
    return RunRequest(
        volumeNodes=list(volumeNodes),
        model=model,
        methods=methodEntries(p.methods, json.loads(p.methodParameters or "{}")),
        metrics=metricEntries(metrics, json.loads(p.metricParameters or "{}")),
        outputFolder=p.outputFolder if custom else defaultOutputFolder,
        region=p.targetRegion,
        className=p.targetClass,
        output=p.targetOutput,
        segmentationNode=p.segmentation,
        segmentId=p.targetSegmentId,
        roiNode=p.targetRoi,
        pointNode=p.targetPoint,
        device=p.device,
        precision=p.precision,
        budgetSeconds=p.timeBudget,
        cropMargin=p.cropMargin if p.cropMargin >= 0 else None,
        flushDenormals=p.flushDenormals,
    )


def startRun(request: RunRequest, python: str | None = None) -> PanelRun:
    """Write the inputs and the Job, and start the worker.

    Raises:
        PanelInputError: a missing or unusable choice in the panel (the message says which).
        UserInputError: the engine refused the Job.
    """
    volumeNodes = [node for node in request.volumeNodes if node is not None]
    if not volumeNodes:
        raise PanelInputError("choose the input volume in the Inputs section")
    reference = volumeNodes[0]
    workFolder = Path(tempfile.mkdtemp(prefix="TorchEsegeta-job-"))
    try:
        images, geometry = [], None
        for index, node in enumerate(volumeNodes):
            array, nodeGeometry = arrayAndGeometryFromVolumeNode(node)
            geometry = geometry or nodeGeometry
            # Uncompressed: these copies live only as long as the run.
            images.append(write_volume(array, nodeGeometry, workFolder / f"input{index}.mha"))
        runFolder = newRunFolder(request.outputFolder, reference.GetName())
        job = buildJob(
            images,
            request.model,
            _target(request, reference, geometry, workFolder),
            request.methods,
            runFolder,
            device=request.device,
            precision=request.precision,
            budgetSeconds=request.budgetSeconds,
            metrics=request.metrics,
            maxBatch=request.maxBatch,
            cropMargin=request.cropMargin,
            flushDenormals=request.flushDenormals,
        )
        jobFile = writeJob(job, workFolder / "job.json")
        worker = WorkerProcess(jobFile, python, engineFolder=enginePath.engineParentFolder())
        worker.start()
    except BaseException:
        shutil.rmtree(workFolder, ignore_errors=True)
        raise
    return PanelRun(worker, workFolder, runFolder, reference)


def loadFinishedRun(scene, run: PanelRun, p) -> dict | None:
    """Add a finished run's nodes to ``scene`` and note its folder in the parameter node ``p``.

    Returns:
        The new nodes (see :func:`runFolder.loadRunFolder`), or None for a cancelled run.

    Raises:
        RuntimeError: the run failed (the engine's message).
    """
    if run.protocol.state == CANCELLED:
        return None
    if run.protocol.state != DONE:
        raise RuntimeError(run.protocol.errorMessage)
    nodes = run.load(scene)
    p.lastRunFolder = str(run.runFolder)
    return nodes


def newRunFolder(outputFolder: str | Path, inputName: str) -> Path:
    """A run folder path that does not exist yet: ``<output>/<input name>-<date-time>``."""
    safeName = re.sub(r"[^A-Za-z0-9_-]+", "_", inputName).strip("_") or "run"
    base = Path(outputFolder).expanduser() / f"{safeName}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, suffix = base, 1
    while candidate.exists():
        suffix += 1
        candidate = base.with_name(f"{base.name}-{suffix}")
    return candidate


def _target(request: RunRequest, reference, geometry, workFolder: Path) -> dict[str, Any]:
    common = {"region": request.region, "className": request.className, "output": request.output}
    if request.region == "segment":
        if request.segmentationNode is None:
            raise PanelInputError("choose the segmentation whose segment is the target")
        mask = segmentMask(request.segmentationNode, reference, request.segmentId or None)
        maskFile = write_volume(mask, geometry, workFolder / "target-mask.mha", dtype=np.uint8)
        return targetDict(**common, maskFile=maskFile)
    if request.region == "ROI":
        if request.roiNode is None:
            raise PanelInputError("choose the markups ROI that is the target")
        start, end = roiVoxelBox(request.roiNode, reference)
        return targetDict(**common, roiStart=start, roiEnd=end)
    if request.region == "point":
        if request.pointNode is None:
            raise PanelInputError("choose the markups point list whose first point is the target")
        return targetDict(**common, pointRas=pointVolumeRas(request.pointNode, reference))
    return targetDict(**common)
