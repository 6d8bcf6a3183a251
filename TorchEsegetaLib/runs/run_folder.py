"""Writing a run folder: maps, segmentation, figures and run.json (published by :mod:`.destination`).

A run folder is written into a hidden temporary sibling and renamed into place only when it is
complete, so a failed or cancelled run leaves nothing half-written, and inputs are only read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .case import ExplainResult

RUN_FORMAT_VERSION = 1


def library_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("torchesegeta", "torch", "monai", "captum", "numpy", "SimpleITK"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _suffix(fmt: str) -> str:
    return "." + fmt


def write_run_folder(
    result: ExplainResult,
    out: Path,
    record: dict[str, Any],
    fmt: str = "nii.gz",
    figures: bool = True,
) -> dict[str, Any]:
    """Write maps, segmentation, figures and run.json into the (empty, temporary) folder ``out``."""
    from ..io.images import write_volume

    out.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(fmt)
    write_volume(result.labelmap, result.geometry, out / f"segmentation{suffix}", dtype=np.uint8)
    method_records = []
    for m in result.methods:
        method = m.spec.create()
        entry: dict[str, Any] = {
            "label": m.spec.label,
            "name": m.spec.name,
            "title": method.title,
            "params": method.config,
            "status": m.status,
            "seconds": round(m.seconds, 4),
            "estimate": m.estimate,
            **m.memory,
            "signed": m.signed,
            "quantity": method.quantity,
            "notes": m.notes,
            **m.details,
        }
        if m.message:
            entry["message"] = m.message
        if m.attribution is not None and m.map is not None:
            entry["file"] = f"{m.spec.label}{suffix}"
            write_volume(m.map, result.geometry, out / entry["file"], dtype=np.float32)
            if m.attribution.shape[0] > 1 and not m.shared_channels:
                entry["channel_files"] = []
                for channel, channel_map in enumerate(m.attribution):
                    name = f"{m.spec.label}.channel{channel}{suffix}"
                    write_volume(channel_map, result.geometry, out / name, dtype=np.float32)
                    entry["channel_files"].append(name)
        method_records.append(entry)
    figure_files: list[str] = []
    if figures and result.maps:
        from ..figures.overview import MapInfo, write_overview_figures
        from ..targets.spec import score_phrase

        info = {
            e["label"]: MapInfo(row_title(e), e["quantity"], e["signed"]) for e in method_records
        }
        paths = write_overview_figures(
            result.image,
            result.maps,
            result.geometry,
            result.centre(),
            out,
            info=info,
            segmentation=result.labelmap,
            region=result.region,
            title=record.get("title", ""),
            score=score_phrase(result.target),
        )
        figure_files = [str(Path(p).relative_to(out)) for p in paths]
    statuses = {m.status for m in result.methods}
    document = {
        "format_version": RUN_FORMAT_VERSION,
        "status": "complete" if statuses == {"ok"} else "partial",
        **record,
        "device": result.device,
        "seed": result.seed,
        "target": result.target,
        "segmentation": {
            "file": f"segmentation{suffix}",
            **({"label_names": result.model.card.label_names} if result.model else {}),
            "voxels_per_label": {
                str(int(v)): int(c) for v, c in zip(*np.unique(result.labelmap, return_counts=True))
            },
        },
        "methods": method_records,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "figures": figure_files,
        "warnings": result.warnings,
        "versions": library_versions(),
        "geometry": {
            "size": list(result.geometry.size),
            "spacing": list(result.geometry.spacing),
            "origin_lps": list(result.geometry.origin),
            "direction_lps": list(result.geometry.direction),
        },
    }
    (out / "run.json").write_text(
        json.dumps(document, indent=2, default=json_default), encoding="utf-8"
    )
    return document


def row_title(entry: dict[str, Any]) -> str:
    """A method's name for people, from its run.json entry: its title, and its label when
    the user gave one ("Integrated Gradients (ig64)"), so two runs of a method stay apart."""
    title = entry.get("title") or entry["label"]
    return (
        title
        if entry["label"] == entry.get("name", entry["label"])
        else f"{title} ({entry['label']})"
    )


def json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
