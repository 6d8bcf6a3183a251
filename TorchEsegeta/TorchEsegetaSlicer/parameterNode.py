"""The panel's state, saved with the scene: one typed field per setting, bound to the .ui's
widgets through their ``SlicerParameterName`` property."""

import pathlib
from typing import Annotated

from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from TorchEsegetaLib.figures.display import MAP_OPACITY

from .jobBuilder import MODEL_KINDS, OUTPUTS, PRECISIONS, REGION_KINDS


@parameterNodeWrapper
class TorchEsegetaParameterNode:
    """Everything the panel shows, saved with the scene."""

    inputVolume0: vtkMRMLScalarVolumeNode
    inputVolume1: vtkMRMLScalarVolumeNode
    inputVolume2: vtkMRMLScalarVolumeNode
    inputVolume3: vtkMRMLScalarVolumeNode
    modelKind: Annotated[str, Choice(list(MODEL_KINDS))] = "demo"
    modelPath: pathlib.Path
    networkName: str = "UNet"
    networkKwargs: str = ""
    #: consent to run the code a bundle or nnU-Net folder names (docs/safety.md)
    trustModel: bool = False
    segmentation: vtkMRMLSegmentationNode
    targetClass: str = ""
    targetRegion: Annotated[str, Choice(list(REGION_KINDS))] = "predicted mask"
    targetSegmentId: str = ""
    targetRoi: vtkMRMLMarkupsROINode
    targetPoint: vtkMRMLMarkupsFiducialNode
    targetOutput: Annotated[str, Choice(list(OUTPUTS))] = "logits"
    methods: list[str]
    methodParameters: str = "{}"
    metrics: list[str]
    metricParameters: str = "{}"
    device: str = "auto"
    precision: Annotated[str, Choice(list(PRECISIONS))] = "float32"
    #: on the CPU, flush denormal floats to zero during runs (checked on the first pass)
    flushDenormals: bool = True
    timeBudget: Annotated[float, WithinRange(0.0, 86400.0)] = 0.0
    #: whole-volume models: explain on the target's box grown by this many voxels; -1: off
    cropMargin: Annotated[int, WithinRange(-1, 1000)] = -1
    outputFolder: pathlib.Path
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = MAP_OPACITY
    showCompare: bool = True
    lastRunFolder: str = ""
