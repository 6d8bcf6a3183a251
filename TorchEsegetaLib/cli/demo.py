"""``torchesegeta demo``: the built-in vessel model explained on the built-in MRA-like volume."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import (
    EXIT_OK,
    common_run_options,
    evaluation_options,
    methods_from_args,
    metrics_from_args,
    uncertainty_from_args,
    uncertainty_option,
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
    uncertainty_option(demo)
    common_run_options(demo)
    demo.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io.images import write_volume
    from ..models.demo import demo_volume
    from ..runs.job import Job, MethodSpec
    from ..targets.spec import TargetSpec

    out = Path(args.out).absolute()
    data = out.with_name(out.name + "-input")
    volume, truth = demo_volume()
    image = write_volume(volume.array[0], volume.geometry, data / "mra.nii.gz")
    reference = write_volume(truth, volume.geometry, data / "vessels_truth.nii.gz", dtype=np.uint8)
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
        overwrite=True,
        metrics=metrics,
        uncertainty=uncertainty_from_args(args),
    )
    apply_overrides(job, args)
    job.output = str(out)
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
