"""``torchesegeta explain | run``: build or read a Job and run it into a run folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from ..models.nnunet import CHECKPOINTS as NNUNET_CHECKPOINTS
from ..schema.validation import job_field_schema
from .common import (
    EXIT_OK,
    common_run_options,
    evaluation_options,
    json_option,
    methods_from_args,
    metrics_from_args,
    model_from_args,
    trust_option,
)
from .progress import progress_display

#: What `explain` runs without --method.
DEFAULT_METHOD = "saliency"


def add_parsers(sub: Any) -> None:
    explain = sub.add_parser("explain", help="explain a model on one case and write a run folder")
    inputs = explain.add_argument_group("inputs")
    inputs.add_argument(
        "--image",
        action="append",
        required=True,
        help="input image file or DICOM folder; repeat once per model input channel",
    )
    model = explain.add_argument_group("model")
    model.add_argument(
        "--model",
        default=None,
        help="'demo' (default), a TorchScript file, a MONAI bundle folder, an nnU-Net v2 model "
        "folder, or a checkpoint with --network",
    )
    model.add_argument(
        "--network", help="MONAI network class for a state-dict checkpoint, e.g. UNet"
    )
    model.add_argument("--network-kwargs", default=None, help="JSON keyword arguments of --network")
    trust_option(model)
    model.add_argument(
        "--allow-unapplied-preprocessing",
        action="store_true",
        help="run a bundle whose preprocessing cannot all be applied as it says (warned; the "
        "network then sees another input than MONAI gives it)",
    )
    model.add_argument(
        "--card",
        default=None,
        help="model card fields as JSON or a JSON file (class_names, intensity, spacing, roi_size, ...)",
    )
    nnunet = explain.add_argument_group("nnU-Net v2 model folders")
    nnunet.add_argument(
        "--folds",
        default=None,
        help="folds to ensemble, e.g. 0,1 or all (default: every fold_N with the checkpoint)",
    )
    nnunet.add_argument(
        "--checkpoint-name",
        choices=NNUNET_CHECKPOINTS,
        default=None,
        help="checkpoint file of each fold (default checkpoint_final.pth)",
    )
    nnunet.add_argument(
        "--disable-tta",
        action="store_true",
        help="no test-time mirroring (nnU-Net's --disable_tta), for segmentation and explanations",
    )
    nnunet.add_argument(
        "--explain-fold",
        default=None,
        help="explain this fold alone without mirroring (faster); the segmentation and target "
        "region still use every fold with mirroring",
    )
    target = explain.add_argument_group("target", "what part of the segmentation to explain")
    target.add_argument(
        "--target",
        default="class",
        help="class[:NAME] (default: the predicted mask of a class) | mask:FILE[:LABEL] | "
        "roi:i0,j0,k0:i1,j1,k1 | voxel:i,j,k",
    )
    target.add_argument(
        "--class",
        dest="target_class",
        default=None,
        help="class to explain, by name or index (default: first foreground class)",
    )
    target.add_argument(
        "--score",
        choices=("logits", "probabilities"),
        default="logits",
        help="score logits (default) or probabilities",
    )
    target.add_argument(
        "--coordinates",
        choices=("voxel", "lps", "ras"),
        default="voxel",
        help="coordinates of roi/voxel targets (default voxel)",
    )
    target.add_argument(
        "--reduction",
        choices=("mean", "sum"),
        default="mean",
        help="reduce the target region by mean (default) or sum",
    )
    methods = explain.add_argument_group("methods")
    methods.add_argument(
        "--method",
        action="append",
        default=None,
        help=f"comma-separated method names, each optionally NAME:key=value,... (default: "
        f"{DEFAULT_METHOD}; `torchesegeta methods` lists them all with their parameters)",
    )
    methods.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="a method (or --evaluate metric) parameter, e.g. integrated_gradients.n_steps=64",
    )
    evaluation = explain.add_argument_group("evaluation")
    evaluation_options(evaluation)
    run = explain.add_argument_group("run")
    run.add_argument("--out", required=True, help="run folder to create")
    run.add_argument(
        "--format",
        choices=job_field_schema("format")["enum"],
        default="nii.gz",
        help="file format of the maps (default nii.gz)",
    )
    run.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    run.add_argument(
        "--save-job",
        default=None,
        help="also write the job as a JSON file (re-run with `torchesegeta run`)",
    )
    common_run_options(run)
    run.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="largest batch per forward/backward pass (default: by device)",
    )
    run.add_argument(
        "--method-budget",
        type=float,
        default=None,
        help="seconds each method may run before it is stopped",
    )
    run.add_argument(
        "--crop-margin",
        type=int,
        default=None,
        metavar="VOXELS",
        help="whole-volume models: explain on the target's box grown by VOXELS, an approximation "
        "measured and recorded in run.json (sliding-window models already run only the "
        "target's windows, exactly)",
    )
    run.add_argument(
        "--warn-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="warn before the run about a method estimated to take longer (default 600); "
        "every method's estimate is printed and kept in run.json",
    )
    explain.set_defaults(handler=cmd_explain)

    run_job = sub.add_parser("run", help="run a job file (JSON or YAML) into its run folder")
    run_job.add_argument("job", help="job file")
    run_job.add_argument("--out", default=None, help="override the job's output folder")
    evaluation_options(run_job)
    common_run_options(run_job)
    run_job.set_defaults(handler=cmd_run)


def _split_params(params: list[str], evaluate: str | None) -> tuple[list[str], list[str]]:
    """(method parameters, metric parameters): a --param belongs to the metric it names."""
    from ..metrics import REGISTRY

    metric_params = [p for p in params if p.partition(".")[0] in REGISTRY]
    if metric_params and not evaluate:
        raise UserInputError(
            f"--param {metric_params[0]!r} is for a metric; add --evaluate METRICS to evaluate the maps"
        )
    return [p for p in params if p not in metric_params], metric_params


def _job_from_explain(args: argparse.Namespace) -> Any:
    from ..runs.job import Job, MethodSpec
    from ..targets.spec import TargetSpec

    target = TargetSpec.parse(
        args.target,
        output=args.score,
        coordinates=args.coordinates,
        reduction=args.reduction,
        **({"class_": args.target_class} if args.target_class is not None else {}),
    )
    model = model_from_args(args)
    model.update(_nnunet_options(args, model["kind"]))
    method_params, metric_params = _split_params(args.param, args.evaluate)
    card = json_option(args.card, "--card")
    if args.allow_unapplied_preprocessing:
        card = {**(card or {}), "allow_unapplied_preprocessing": True}
    return Job(
        images=args.image,
        model=model,
        card=card,
        target=target,
        methods=[
            MethodSpec.from_any(m)
            for m in methods_from_args(args.method, method_params, default=DEFAULT_METHOD)
        ],
        metrics=metrics_from_args([args.evaluate], metric_params) if args.evaluate else [],
        output=args.out,
        device=args.device or "auto",
        seed=0 if args.seed is None else args.seed,
        format=args.format,
        figures=not args.no_figures,
        overwrite=bool(args.overwrite),
        max_batch=args.max_batch,
        method_budget_s=args.method_budget,
        precision=args.precision or "float32",
        crop_margin=args.crop_margin,
        warn_after_s=args.warn_after,
        flush_denormals=not args.no_flush_denormals,
    )


def _nnunet_options(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """The model reference entries of the nnU-Net flags (an error for other models)."""
    options: dict[str, Any] = {}
    if args.folds is not None:
        options["folds"] = [
            f.strip() if f.strip() == "all" else _fold(f, "--folds") for f in args.folds.split(",")
        ]
    if args.checkpoint_name is not None:
        options["checkpoint_name"] = args.checkpoint_name
    if args.disable_tta:
        options["mirroring"] = False
    if args.explain_fold is not None:
        text = args.explain_fold.strip()
        options["explain_fold"] = text if text == "all" else _fold(text, "--explain-fold")
    if options and kind != "nnunet":
        flags = {"folds": "--folds", "checkpoint_name": "--checkpoint-name"}
        flags.update(mirroring="--disable-tta", explain_fold="--explain-fold")
        raise UserInputError(
            f"{', '.join(flags[k] for k in options)} apply to nnU-Net v2 model folders only; "
            f"the model given is a {kind} model"
        )
    return options


def _fold(text: str, flag: str) -> int:
    if not text.strip().isdigit():
        raise UserInputError(f"{flag} takes fold numbers (or all), e.g. {flag} 0,1; got {text!r}")
    return int(text)


def run_and_summarise(job: Any, quiet: bool, inputs: list[tuple[str, str]] | None = None) -> Path:
    """Run ``job`` with a progress display and print its summary; ``inputs``: what the job was
    read from besides its fields (its file, a card file), kept apart from the run folder."""
    from ..runs.runner import run_job

    bar = progress_display(quiet)
    try:
        out = run_job(job, progress=bar, inputs=inputs or ())
    finally:
        bar.close()
    _summarise(out)
    return out


def _summarise(out: Path) -> None:
    record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    print(f"run folder: {out} ({record['status']})")
    for method in record["methods"]:
        where = method.get("file", method.get("message", ""))
        print(f"  {method['label']:<22} {method['status']:<9} {method['seconds']:8.2f} s  {where}")
    for warning in record.get("warnings", []):
        print(f"  warning: {warning}")
    if record.get("metrics"):
        from ..runs.evaluation import Evaluation
        from .evaluate import print_evaluation

        print_evaluation(Evaluation.from_json(record["metrics"]))


def apply_overrides(job: Any, args: argparse.Namespace) -> Any:
    """The job with the run options given on the command line (device, seed, ...)."""
    for field_name, value in (
        ("device", args.device),
        ("seed", args.seed),
        ("overwrite", args.overwrite),
        ("precision", args.precision),
        ("flush_denormals", False if args.no_flush_denormals else None),
        ("output", getattr(args, "out", None)),
    ):
        if value is not None:
            setattr(job, field_name, value)
    return job


def cmd_explain(args: argparse.Namespace) -> int:
    from ..runs.runner import claim_output

    job = _job_from_explain(args)
    inputs = [("card file", args.card)] if _names_a_file(args.card) else []
    if args.save_job:
        claim_output(job, inputs)  # a run that cannot start leaves no job file either
        _save_job(Path(args.save_job), job, [*job.input_paths(), *inputs])
    run_and_summarise(job, args.quiet, inputs)
    return EXIT_OK


def _names_a_file(option: str | None) -> bool:
    """Whether a JSON-or-file option (--card) names a file rather than holding JSON text."""
    return option is not None and not option.lstrip().startswith("{") and Path(option).is_file()


def _save_job(path: Path, job: Any, inputs: list[tuple[str, str]]) -> None:
    """Write the job as JSON to ``path``: never over or inside an input or the run folder, and
    over an existing file only when it is a job file."""
    from ..io.paths import overlap
    from ..runs.job import JOB_FIELDS

    for what, source in [("run folder", str(job.output)), *inputs]:
        relation = overlap(path, source)
        if relation in ("is", "lies inside"):
            raise UserInputError(
                f"--save-job {path} {relation} the {what} {source}; save the job elsewhere"
            )
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            existing = None
        is_job = isinstance(existing, dict) and "images" in existing
        if not (is_job and set(existing) <= set(JOB_FIELDS)):
            raise UserInputError(
                f"--save-job {path} exists and is not a job file; it is not replaced: choose "
                "another path"
            )
    path.write_text(json.dumps(job.to_dict(), indent=2), encoding="utf-8")


def cmd_run(args: argparse.Namespace) -> int:
    from ..runs.job import Job

    job = apply_overrides(Job.load(args.job), args)
    if args.evaluate:
        job.metrics = metrics_from_args([args.evaluate], [])
    run_and_summarise(job, args.quiet, [("job file", args.job)])
    return EXIT_OK
