"""Panel values -> a validated engine Job (as its JSON-ready dict). Pure Python: no slicer, no Qt.

The panel's choices are plain strings and numbers; this file is the one place that knows how
they map onto the engine's Job fields, so the mapping is tested without Slicer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from TorchEsegetaLib.models.trust import FOLDER_KINDS

MODEL_KINDS = ("demo", "torchscript", "monai", *FOLDER_KINDS)
NNUNET_FILES = ("dataset.json", "plans.json")
# What the panel's "Region" combo box offers, and the engine target kind each one becomes.
REGION_KINDS = {
    "predicted mask": "class",
    "segment": "mask",
    "ROI": "roi",
    "point": "voxel",
}
OUTPUTS = ("logits", "probabilities")
PRECISIONS = ("float32", "float16", "bfloat16")
BASE_DEVICES = ("auto", "cpu")


class PanelInputError(ValueError):
    """A panel value that cannot make a Job; the message says which and how to fix it."""


def modelReference(
    kind: str,
    path: str | Path | None = None,
    network: str = "",
    networkKwargs: str = "",
    trust: bool = False,
) -> dict[str, Any]:
    """The engine's model reference for the panel's model kind and pickers.

    Args:
        kind: one of :data:`MODEL_KINDS`.
        path: TorchScript file, state_dict checkpoint (kind "monai"), MONAI bundle folder or
            nnU-Net v2 model folder (``Trainer__Plans__configuration``, kind "nnunet": every
            trained fold, with test-time mirroring, as nnU-Net predicts).
        network: a ``monai.networks.nets`` class name (kind "monai").
        networkKwargs: the network's keyword arguments as a JSON object (kind "monai").
        trust: the panel's "Trust the model folder's code": consent to run the code a bundle or
            nnU-Net folder names (``"trust": true``); other kinds name no code and ignore it.
    """
    if kind not in MODEL_KINDS:
        raise PanelInputError(
            f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}"
        )
    if kind == "demo":
        return {"kind": "demo"}
    path = _pathOrNone(path)
    if path is not None and not path.exists():
        raise PanelInputError(f"the model path {path} does not exist; check the Model section")
    if kind == "monai":
        if not network.strip():
            raise PanelInputError(
                "a MONAI network needs its class name (e.g. UNet, SegResNet) in the Network field"
            )
        try:
            kwargs = json.loads(networkKwargs) if networkKwargs.strip() else {}
        except json.JSONDecodeError as e:
            raise PanelInputError(
                f"the network arguments are not valid JSON ({e.msg}); write an object such as "
                '{"spatial_dims": 3, "in_channels": 1, "out_channels": 2}'
            ) from e
        if not isinstance(kwargs, dict):
            raise PanelInputError("the network arguments must be a JSON object, {...}")
        return {
            "kind": "monai",
            "network": network.strip(),
            "kwargs": kwargs,
            "checkpoint": str(path) if path else None,
        }
    if path is None:
        what = {
            "torchscript": "TorchScript file",
            "bundle": "MONAI bundle folder",
            "nnunet": "nnU-Net model folder",
        }[kind]
        raise PanelInputError(f"choose the {what} in the Model section")
    if kind == "nnunet" and not all((path / name).is_file() for name in NNUNET_FILES):
        raise PanelInputError(
            f"{path} is not an nnU-Net v2 model folder (it needs {' and '.join(NNUNET_FILES)} "
            "and fold_N/ folders); choose the Trainer__Plans__configuration folder"
        )
    reference: dict[str, Any] = {"kind": kind, "path": str(path)}
    if trust and kind in FOLDER_KINDS:
        reference["trust"] = True
    return reference


def targetDict(
    region: str = "predicted mask",
    className: str | int | None = None,
    output: str = "logits",
    maskFile: str | Path | None = None,
    roiStart: Sequence[float] | None = None,
    roiEnd: Sequence[float] | None = None,
    pointRas: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The engine's target for the panel's Target section.

    Args:
        region: one of :data:`REGION_KINDS`.
        className: the class to explain (name or output index); empty means the model's
            first foreground class.
        output: "logits" or "probabilities".
        maskFile: label file of the segment on the input grid (region "segment").
        roiStart, roiEnd: the ROI's box in voxel indices of the input (region "ROI").
        pointRas: the point in the input volume's RAS coordinates (region "point").
    """
    if region not in REGION_KINDS:
        raise PanelInputError(
            f"unknown target region {region!r}; choose one of {', '.join(REGION_KINDS)}"
        )
    if output not in OUTPUTS:
        raise PanelInputError(f"unknown score {output!r}; choose one of {', '.join(OUTPUTS)}")
    target: dict[str, Any] = {
        "kind": REGION_KINDS[region],
        "class": className if className not in ("", None) else None,
        "output": output,
    }
    if region == "segment":
        if not maskFile:
            raise PanelInputError("choose the segmentation and segment to explain")
        target["mask"] = str(maskFile)
    elif region == "ROI":
        if roiStart is None or roiEnd is None:
            raise PanelInputError("choose a markups ROI for the target region")
        target.update(start=_triple(roiStart), end=_triple(roiEnd), coordinates="voxel")
    elif region == "point":
        if pointRas is None:
            raise PanelInputError("choose a markups point list with at least one point")
        target.update(voxel=_triple(pointRas), coordinates="ras")
    return target


def methodEntries(
    selected: Sequence[str], parameters: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """``[{"name", "params"}]`` for the checked methods, keeping only declared parameters.

    Values saved in an older scene for a parameter the method no longer declares are dropped
    rather than failing the run; values equal to the default are left out to keep jobs short.
    """
    from TorchEsegetaLib.methods import get_method

    return _entries(selected, parameters, lambda name: get_method(name).params)


def metricEntries(
    selected: Sequence[str], parameters: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """``[{"name", "params"}]`` for the checked metrics, as :func:`methodEntries`."""
    from TorchEsegetaLib.metrics import REGISTRY

    def declared(name: str):
        if name not in REGISTRY:
            raise PanelInputError(f"unknown metric {name!r}; uncheck it in the Evaluation section")
        return REGISTRY[name].params

    return _entries(selected, parameters, declared)


def _entries(selected, parameters, declaredParams) -> list[dict[str, Any]]:
    parameters = parameters or {}
    entries = []
    for name in selected:
        defaults = {p.name: p.default for p in declaredParams(name)}
        given = parameters.get(name, {})
        params = {k: v for k, v in given.items() if k in defaults and v != defaults[k]}
        entries.append({"name": name, "params": params})
    return entries


def buildJob(
    images: Sequence[str | Path],
    model: dict[str, Any],
    target: dict[str, Any],
    methods: Sequence[dict[str, Any] | str],
    output: str | Path,
    device: str = "auto",
    precision: str = "float32",
    budgetSeconds: float = 0.0,
    metrics: Sequence[dict[str, Any] | str] = (),
    figures: bool = True,
    seed: int = 0,
    maxBatch: int | None = None,
    cropMargin: int | None = None,
    flushDenormals: bool = True,
) -> dict[str, Any]:
    """A validated Job, as the dict the worker reads from job.json.

    Raises:
        PanelInputError: a panel value the engine cannot run (the message says which).
        UserInputError: the engine's own validation (unknown method, bad parameter...).
    """
    from TorchEsegetaLib.runs.job import Job

    if not images:
        raise PanelInputError("choose the input volume(s) in the Inputs section")
    if not methods:
        raise PanelInputError("check at least one method in the Methods section")
    data: dict[str, Any] = {
        "images": [str(p) for p in images],
        "model": model,
        "target": target,
        "methods": list(methods),
        "output": str(output),
        "device": device,
        "seed": int(seed),
        "figures": bool(figures),
        "flush_denormals": bool(flushDenormals),
    }
    if budgetSeconds and budgetSeconds > 0:
        data["method_budget_s"] = float(budgetSeconds)
    if maxBatch is not None:
        data["max_batch"] = int(maxBatch)
    if cropMargin is not None:
        data["crop_margin"] = int(cropMargin)
    if metrics:
        data["metrics"] = list(metrics)
    if precision not in PRECISIONS:
        raise PanelInputError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    data["precision"] = precision
    return Job.from_dict(data).to_dict()


def writeJob(job: dict[str, Any], path: str | Path) -> Path:
    """Write a job dict as the worker's job.json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(job, indent=2), encoding="utf-8")
    return path


def deviceChoices(cudaDeviceCount: int) -> list[str]:
    """The Run section's device list: auto, cpu, then each CUDA device."""
    return [*BASE_DEVICES, *(f"cuda:{index}" for index in range(max(0, cudaDeviceCount)))]


def installedCudaDeviceCount() -> int:
    """CUDA devices torch sees, or 0 when torch is not installed yet (never installs it)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _pathOrNone(path: str | Path | None) -> Path | None:
    # An empty path picker reads back as "" or Path("."), which is never a model.
    if path is None or str(path).strip() in ("", "."):
        return None
    return Path(path).expanduser()


def _triple(values: Sequence[float]) -> list[float]:
    values = [float(v) for v in values]
    if len(values) != 3:
        raise PanelInputError(f"a position needs three coordinates, got {values}")
    return values
