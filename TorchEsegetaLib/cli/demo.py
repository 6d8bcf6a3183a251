"""``torchesegeta demo``: the built-in vessel model explained on the built-in MRA-like volume."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import (
    EXIT_OK,
    common_run_options,
    evaluation_options,
    methods_from_args,
    metrics_from_args,
)
from .explain import apply_overrides, run_and_summarise

#: One or two methods of each family, chosen so the demo stays well under a minute on 2 cores.
DEFAULT_DEMO_METHODS = (
    "saliency,integrated_gradients,smoothgrad,guided_backprop,deeplift,lrp,gradcam,occlusion,"
    "feature_ablation"
)
#: Demo settings that keep `torchesegeta demo` well under a minute on two CPU cores.
DEMO_PARAMS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 32},
    "smoothgrad": {"samples": 16, "noise_level": 0.1},
    "occlusion": {"window": 8, "stride": 8},
}


def add_parsers(sub: Any) -> None:
    demo = sub.add_parser(
        "demo", help="explain the built-in vessel model on the built-in MRA-like volume"
    )
    demo.add_argument(
        "--out",
        default="torchesegeta-demo",
        help="run folder to create (default ./torchesegeta-demo)",
    )
    demo.add_argument(
        "--method",
        default=DEFAULT_DEMO_METHODS,
        help=f"comma-separated methods (default {DEFAULT_DEMO_METHODS})",
    )
    evaluation_options(demo)
    common_run_options(demo)
    demo.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import UserInputError
    from ..io.images import write_volume
    from ..models.demo import demo_volume
    from ..runs.destination import TOOL, check_output_folder, save_run
    from ..runs.job import Job, MethodSpec
    from ..runs.runner import claim_output
    from ..targets.spec import TargetSpec

    out = Path(args.out).absolute()
    if not out.name:
        raise UserInputError(f"--out {out} names no folder; give a folder path, e.g. --out demo")
    data = out.with_name(out.name + "-input")
    image, reference = data / "mra.nii.gz", data / "vessels_truth.nii.gz"
    methods = methods_from_args([args.method], [])
    for entry in methods:
        entry["params"].update(DEMO_PARAMS.get(entry["name"], {}))
    # The demo knows its ground truth: metrics that compare with a reference mask use it.
    metrics = metrics_from_args([args.evaluate], []) if args.evaluate else []
    for spec in metrics:
        if spec.name in _reference_metrics():
            spec.params["reference"] = str(reference)
    job = Job(
        images=[str(image)],
        model={"kind": "demo"},
        target=TargetSpec.parse("class:vessel"),
        methods=[MethodSpec.from_any(m) for m in methods],
        output=str(out),
        metrics=metrics,
    )
    apply_overrides(job, args)
    job.output = str(out)
    # The run folder and the demo's input folder follow explain's rules, both checked before
    # anything is written: each is new, or (with --overwrite) one that the demo wrote.
    claim_output(job)
    inputs_destination = check_output_folder(
        data, job.overwrite, [("demo run folder", out)], "demo input folder"
    )
    volume, truth = demo_volume()

    def write_inputs(folder: Path) -> None:
        write_volume(volume.array[0], volume.geometry, folder / image.name)
        write_volume(truth, volume.geometry, folder / reference.name, dtype=np.uint8)
        record = {"tool": TOOL, "contents": "the input of `torchesegeta demo`", "run": str(out)}
        (folder / "demo.json").write_text(json.dumps(record, indent=2), encoding="utf-8")

    save_run(inputs_destination, write_inputs)
    run_and_summarise(job, args.quiet)
    print(f"demo input: {image}; ground truth: {reference}")
    if not args.evaluate:
        params = " ".join(f"--param {m}.reference={reference}" for m in _reference_metrics())
        print(f"evaluate the maps: torchesegeta evaluate {out} {params}")
    return EXIT_OK


def _reference_metrics() -> list[str]:
    """The metrics that take a reference mask (a "reference" parameter)."""
    from ..metrics import ordered

    return [cls.name for cls in ordered() if any(p.name == "reference" for p in cls.params)]
