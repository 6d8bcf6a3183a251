"""The ``torchesegeta`` command: explain | run | demo | evaluate | report | methods | metrics |
layers | schema.

Exit status: 0 success, 2 bad input (one line naming the problem and the fix), 1 internal error,
130 interrupted. Tracebacks only with --verbose.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from . import __version__
from .errors import CancelledError, UserInputError

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_INTERRUPTED = 0, 1, 2, 130
#: One or two methods of each family, chosen so the demo stays well under a minute on 2 cores.
DEFAULT_DEMO_METHODS = (
    "saliency,integrated_gradients,smoothgrad,guided_backprop,deeplift,lrp,gradcam,occlusion,"
    "feature_ablation"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors are input errors too
        self.print_usage(sys.stderr)
        print(f"torchesegeta: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER)


def _common_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default=None, help="auto (CUDA when available), cpu, cuda or cuda:N"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of every random draw (default 0)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", default=None, help="replace an existing output folder"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="autocast precision of the network (default float32; a non-finite map is recomputed in float32)",
    )
    parser.add_argument(
        "--evaluate",
        default=None,
        metavar="METRICS",
        help="also evaluate the maps: comma-separated metrics, 'default' or 'all' (see `torchesegeta metrics`)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="torchesegeta",
        description="Explain 3D medical image segmentation models with attribution maps.",
    )
    parser.add_argument("--version", action="version", version=f"torchesegeta {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    explain = sub.add_parser("explain", help="explain a model on one case and write a run folder")
    explain.add_argument(
        "--image",
        action="append",
        required=True,
        help="input image file or DICOM folder; repeat once per model input channel",
    )
    explain.add_argument(
        "--model",
        default="demo",
        help="'demo', a TorchScript file, a MONAI bundle folder, or a checkpoint with --network",
    )
    explain.add_argument(
        "--network", help="MONAI network class for a state-dict checkpoint, e.g. UNet"
    )
    explain.add_argument(
        "--network-kwargs", default=None, help="JSON keyword arguments of --network"
    )
    explain.add_argument(
        "--trust-bundle",
        action="store_true",
        help="allow a MONAI bundle whose config holds Python expressions (they run on loading)",
    )
    explain.add_argument(
        "--card",
        default=None,
        help="model card fields as JSON or a JSON file (class_names, intensity, spacing, roi_size, ...)",
    )
    explain.add_argument(
        "--target",
        default="class",
        help="class[:NAME] | mask:FILE[:LABEL] | roi:i0,j0,k0:i1,j1,k1 | voxel:i,j,k",
    )
    explain.add_argument(
        "--class",
        dest="target_class",
        default=None,
        help="class to explain, by name or index (default: first foreground class)",
    )
    explain.add_argument(
        "--score",
        choices=("logits", "probabilities"),
        default="logits",
        help="score logits (default) or probabilities",
    )
    explain.add_argument(
        "--coordinates",
        choices=("voxel", "lps", "ras"),
        default="voxel",
        help="coordinates of roi/voxel targets",
    )
    explain.add_argument(
        "--reduction",
        choices=("mean", "sum"),
        default="mean",
        help="reduce the target region by mean (default) or sum",
    )
    explain.add_argument(
        "--method",
        action="append",
        default=None,
        help="comma-separated method names (see `torchesegeta methods`)",
    )
    explain.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="a method parameter, e.g. integrated_gradients.n_steps=64",
    )
    explain.add_argument("--out", required=True, help="run folder to create")
    explain.add_argument(
        "--format",
        choices=("nii.gz", "nrrd", "mha"),
        default="nii.gz",
        help="file format of the maps",
    )
    explain.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    explain.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="largest batch per forward/backward pass (default: by device)",
    )
    explain.add_argument(
        "--method-budget",
        type=float,
        default=None,
        help="seconds each method may run before it is stopped",
    )
    explain.add_argument(
        "--crop-margin",
        type=int,
        default=None,
        metavar="VOXELS",
        help="whole-volume models: explain on the target's box grown by VOXELS, an approximation "
        "measured and recorded in run.json (sliding-window models already run only the "
        "target's windows, exactly)",
    )
    explain.add_argument(
        "--save-job",
        default=None,
        help="also write the job as a JSON file (re-run with `torchesegeta run`)",
    )
    _common_run_options(explain)

    run = sub.add_parser("run", help="run a job file (JSON or YAML) into its run folder")
    run.add_argument("job", help="job file")
    run.add_argument("--out", default=None, help="override the job's output folder")
    _common_run_options(run)

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
    _common_run_options(demo)

    methods = sub.add_parser("methods", help="list every attribution method with its parameters")
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    methods.add_argument("--markdown", action="store_true", help="the README's method table")

    layers = sub.add_parser("layers", help="list the layers a layer method (Grad-CAM) can use")
    layers.add_argument("--model", default="demo")
    layers.add_argument("--network", default=None)
    layers.add_argument("--network-kwargs", default=None)

    evaluate = sub.add_parser(
        "evaluate", help="score the maps of a run folder (metrics.csv, run.json, figures)"
    )
    evaluate.add_argument("run_folder", help="run folder written by explain, run or demo")
    evaluate.add_argument(
        "--metric",
        action="append",
        default=None,
        help="comma-separated metrics, 'default' (the default) or 'all' (see `torchesegeta metrics`)",
    )
    evaluate.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METRIC.NAME=VALUE",
        help="a metric parameter, e.g. deletion.steps=10",
    )
    evaluate.add_argument(
        "--method", default=None, help="comma-separated method labels to evaluate (default: all)"
    )
    evaluate.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")

    report = sub.add_parser("report", help="write a self-contained report.html into a run folder")
    report.add_argument("run_folder", help="run folder written by explain, run or demo")

    metrics = sub.add_parser("metrics", help="list every evaluation metric with its parameters")
    metrics.add_argument("--json", action="store_true", help="machine-readable output")
    metrics.add_argument("--markdown", action="store_true", help="the README's metric table")

    sub.add_parser("schema", help="print the JSON schema of job files")
    return parser


def _json_option(text: str | None, what: str) -> dict[str, Any] | None:
    if text is None:
        return None
    source = Path(text)
    try:
        if not text.lstrip().startswith("{") and source.is_file():
            text = source.read_text(encoding="utf-8")
        value = json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise UserInputError(
            f"{what} is neither a JSON object nor a readable JSON file: {e}"
        ) from e
    if not isinstance(value, dict):
        raise UserInputError(f"{what} must be a JSON object, e.g. '{{\"key\": 1}}'")
    return value


def _methods_from_args(
    names: list[str] | None, params: list[str], what: str = "method", default: str = "saliency"
) -> list[dict[str, Any]]:
    # "a,b" lists methods; "name:key=value,key=value" also gives parameters (the batch
    # script's form): a token with "=" and no ":" continues the previous method's parameters
    entries: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for group in names or [default]:
        for token in (t.strip() for t in group.split(",")):
            if not token:
                continue
            equals_at, colon_at = token.find("="), token.find(":")
            name, colon, first = token.partition(":")
            if equals_at >= 0 and (colon_at < 0 or equals_at < colon_at):  # key=value (a: ok)
                if current is None:
                    raise UserInputError(
                        f"--{what} {group!r}: {token!r} has no {what} before it; write "
                        f"NAME:key=value,key=value, e.g. integrated_gradients:n_steps=16"
                    )
                first = token
            else:
                current = entries.setdefault(name.strip(), {"name": name.strip(), "params": {}})
            if first:
                key, equals, value = first.partition("=")
                if not equals or not key.strip():
                    raise UserInputError(
                        f"--{what} {token!r}: write parameters as NAME:key=value,key=value"
                    )
                current["params"][key.strip()] = value.strip()
    for item in params:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise UserInputError(
                f"--param {item!r} must look like {what.upper()}.NAME=VALUE, e.g. "
                + ("deletion.steps=10" if what == "metric" else "occlusion.window=8")
            )
        if method not in entries:
            raise UserInputError(
                f"--param {item!r} is for {what} {method!r}, which is not among --{what} {','.join(entries)}"
            )
        entries[method]["params"][name] = value
    return list(entries.values())


def _metrics_from_args(names: list[str] | None, params: list[str]) -> list[Any]:
    """Metric specs from --metric/--evaluate names ('default', 'all' expanded) and parameters."""
    from .metrics import metric_specs

    chosen = [n.strip() for group in (names or ["default"]) for n in group.split(",") if n.strip()]
    expanded = ",".join(spec.name for spec in metric_specs(chosen))
    return metric_specs(_methods_from_args([expanded], params, "metric"))


def _split_params(params: list[str], evaluate: str | None) -> tuple[list[str], list[str]]:
    """(method parameters, metric parameters): a --param belongs to the metric it names."""
    from .metrics import REGISTRY

    metric_params = [p for p in params if p.partition(".")[0] in REGISTRY]
    if metric_params and not evaluate:
        raise UserInputError(
            f"--param {metric_params[0]!r} is for a metric; add --evaluate METRICS to evaluate the maps"
        )
    return [p for p in params if p not in metric_params], metric_params


def _job_from_explain(args: argparse.Namespace) -> Any:
    from .job import Job
    from .models import model_ref_from_string
    from .targets import TargetSpec

    target = TargetSpec.parse(
        args.target,
        output=args.score,
        coordinates=args.coordinates,
        reduction=args.reduction,
        **({"class_": args.target_class} if args.target_class is not None else {}),
    )
    model = model_ref_from_string(
        args.model, args.network, _json_option(args.network_kwargs, "--network-kwargs")
    )
    if args.trust_bundle and model["kind"] == "bundle":
        model["trust"] = True
    method_params, metric_params = _split_params(args.param, args.evaluate)
    return Job(
        images=args.image,
        model=model,
        card=_json_option(args.card, "--card"),
        target=target,
        methods=_methods_from_args(args.method, method_params),
        metrics=_metrics_from_args([args.evaluate], metric_params) if args.evaluate else [],
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
    )


class ProgressBar:
    """A tqdm bar over the whole run: one unit per method, advanced by each method's fraction."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.stage = "method"

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if event.get("stage") == "evaluate" and self.stage != "evaluate":
            self.close()  # a second bar, one unit per (metric, method)
            self.bar, self.stage = None, "evaluate"
        if event.get("stage") != self.stage:
            if self.bar is None:
                print(f"torchesegeta: {event.get('message', '')}", file=sys.stderr)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=float(event["total"]),
                unit="method",
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.2f}/{total:.0f} "
                + ("methods" if self.stage == "method" else "evaluations")
                + " [{elapsed}<{remaining}]",
            )
        self.bar.n = event["index"] + event["fraction"]
        self.bar.set_description(event.get("message", "")[:48], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run(job: Any, quiet: bool) -> Path:
    from .runner import run_job

    bar = ProgressBar(enabled=not quiet)
    try:
        out = run_job(job, progress=bar)
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
        from .evaluation import Evaluation

        _print_evaluation(Evaluation.from_json(record["metrics"]))


def _print_evaluation(evaluation: Any) -> None:
    from .metric_figures import format_value

    rows = evaluation.rows()
    print("metrics (methods best mean rank first; (+) higher is better, (-) lower is better):")
    print(f"  {'':<26}" + "".join(f"{row['method'][:13]:>14}" for row in rows))
    for name, info in evaluation.metrics.items():
        sign = "(+)" if info["direction"] == "higher" else "(-)"
        values = "".join(f"{format_value(row[name]):>14}" for row in rows)
        print(f"  {name[:22] + ' ' + sign:<26}{values}   {evaluation.seconds.get(name, 0):.2f} s")


def _apply_overrides(job: Any, args: argparse.Namespace) -> Any:
    for field_name, value in (
        ("device", args.device),
        ("seed", args.seed),
        ("overwrite", args.overwrite),
        ("precision", args.precision),
        ("output", getattr(args, "out", None)),
    ):
        if value is not None:
            setattr(job, field_name, value)
    return job


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_volume
    from .io import write_volume
    from .job import Job

    out = Path(args.out).absolute()
    data = out.with_name(out.name + "-input")
    volume, truth = demo_volume()
    image = write_volume(volume.array[0], volume.geometry, data / "mra.nii.gz")
    write_volume(truth, volume.geometry, data / "vessels_truth.nii.gz", dtype="uint8")
    methods = _methods_from_args([args.method], [])
    for entry in methods:
        entry["params"].update(DEMO_PARAMS.get(entry["name"], {}))
    job = Job(
        images=[str(image)],
        model={"kind": "demo"},
        target="class:vessel",
        methods=methods,
        output=str(out),
        overwrite=True,
        metrics=_metrics_from_args([args.evaluate], []) if args.evaluate else [],
    )
    _apply_overrides(job, args)
    job.output = str(out)
    _run(job, args.quiet)
    print(f"demo input: {image}")
    return EXIT_OK


#: Demo settings that keep `torchesegeta demo` well under a minute on two CPU cores.
DEMO_PARAMS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 32},
    "smoothgrad": {"samples": 16, "noise_level": 0.1},
    "occlusion": {"window": 8, "stride": 8},
}


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import REGISTRY

    described = [cls.describe() for cls in REGISTRY.values()]
    if args.json:
        print(json.dumps(described, indent=2))
        return EXIT_OK
    if args.markdown:
        print(methods_markdown(), end="")
        return EXIT_OK
    for info in described:
        print(
            f"{info['name']}  ({info['title']}; {info['family']}; {'signed' if info['signed'] else 'unsigned'}; cost: {info['cost']})"
        )
        _print_summary_and_params(info, "method")
    return EXIT_OK


def _print_summary_and_params(info: dict[str, Any], what: str) -> None:
    print(textwrap.indent(textwrap.fill(info["summary"], 92), "    "))
    print(f"    reference: {info['reference']}")
    for p in info["params"]:
        extra = f" choices: {', '.join(p['choices'])}" if "choices" in p else ""
        if "minimum" in p or "maximum" in p:
            extra += f" range: [{p.get('minimum', '')}, {p.get('maximum', '')}]"
        print(
            f"    --param {info['name']}.{p['name']}=<{p['type']}> (default {p['default']!r}){extra}"
        )
        print(textwrap.indent(textwrap.fill(p["help"], 88), "        "))
    print()


def methods_markdown() -> str:
    """The README's table of methods, generated from the registry so the two never drift."""
    from .methods import REGISTRY

    families = {"gradient": 0, "layer": 1, "perturbation": 2}
    ordered = sorted(REGISTRY.values(), key=lambda cls: (families.get(cls.family, 9), cls.name))
    lines = [
        "| method | family | output | cost | parameters (default) | reference |",
        "|---|---|---|---|---|---|",
    ]
    for cls in ordered:
        params = ", ".join(f"`{p.name}`={p.default!r}" for p in cls.params) or "none"
        output = "signed" if cls.signed else "unsigned"
        lines.append(
            f"| `{cls.name}`: {cls.summary} | {cls.family} | {output} | {cls.cost} | {params} | {cls.reference} |"
        )
    return "\n".join(lines) + "\n"


def metrics_markdown() -> str:
    """The README's table of metrics, generated from the registry."""
    from .metrics import ordered

    lines = ["| metric | family | better | run | cost | reference |", "|---|---|---|---|---|---|"]
    for cls in ordered():
        run = "by default" if cls.default else "on request"
        lines.append(
            f"| `{cls.name}`: {cls.summary} | {cls.family} | {cls.direction} | {run} | {cls.cost} | {cls.reference} |"
        )
    return "\n".join(lines) + "\n"


def cmd_layers(args: argparse.Namespace) -> int:
    import torch

    from .inference import SegmentationForward
    from .methods.layer import default_layer, trace_layers
    from .models import load_model, model_ref_from_string

    model = load_model(
        model_ref_from_string(
            args.model, args.network, _json_option(args.network_kwargs, "--network-kwargs")
        )
    )
    card = model.card
    # A dry run on a small blank input finds the layers in the order they run, with their shapes.
    side = max(32, 2 * card.size_divisible)
    size = card.roi_size or (side, side, side)
    forward = SegmentationForward(model.network, card)
    dummy = torch.zeros((1, card.in_channels, *size))
    layers = trace_layers(forward, dummy)
    if not layers:
        raise UserInputError(
            "this model exposes no layers (TorchScript); load it by network name and checkpoint to use layer methods"
        )
    default = default_layer(forward, dummy, card.out_channels)
    print(
        f"layers of {card.name} in execution order (output shape for a {'x'.join(map(str, size))} input):"
    )
    for layer in layers:
        mark = "  (default)" if layer["name"] == default else ""
        shape = "x".join(map(str, layer["shape"]))
        print(f"  {layer['name']:<44} {layer['type']:<18} {layer['channels']:>4} x {shape}{mark}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from .job import schema_path

    print(schema_path().read_text(encoding="utf-8"))
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    job = _job_from_explain(args)
    if args.save_job:
        Path(args.save_job).write_text(json.dumps(job.to_dict(), indent=2), encoding="utf-8")
    _run(job, args.quiet)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from .job import Job

    job = _apply_overrides(Job.load(args.job), args)
    if args.evaluate:
        job.metrics = _metrics_from_args([args.evaluate], [])
    _run(job, args.quiet)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_run

    metrics = _metrics_from_args(args.metric, args.param)
    labels = [m.strip() for m in args.method.split(",") if m.strip()] if args.method else None
    bar = ProgressBar(enabled=not args.quiet)
    bar.stage = "evaluate"
    try:
        evaluation = evaluate_run(
            args.run_folder, metrics, progress=bar, methods=labels, device=args.device
        )
    finally:
        bar.close()
    print(f"run folder: {Path(args.run_folder).absolute()} (metrics.csv, run.json, figures/)")
    _print_evaluation(evaluation)
    for label, notes in evaluation.notes.items():
        for name, note in notes.items():
            print(f"  note: {label} / {name}: {note}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(f"report: {write_report(args.run_folder)}")
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    from .metrics import ordered

    described = [cls.describe() for cls in ordered()]
    if args.json:
        print(json.dumps(described, indent=2))
        return EXIT_OK
    if args.markdown:
        print(metrics_markdown(), end="")
        return EXIT_OK
    for info in described:
        better = f"{info['direction']} is better"
        run = "default" if info["default"] else "opt-in"
        print(
            f"{info['name']}  ({info['title']}; {info['family']}; {better}; {run}; cost: {info['cost']})"
        )
        _print_summary_and_params(info, "metric")
    return EXIT_OK


COMMANDS = {
    "explain": cmd_explain,
    "run": cmd_run,
    "demo": cmd_demo,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "methods": cmd_methods,
    "metrics": cmd_metrics,
    "layers": cmd_layers,
    "schema": cmd_schema,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserInputError as e:
        if args.verbose:
            raise
        print(f"torchesegeta: error: {e}", file=sys.stderr)
        return EXIT_USER
    except (KeyboardInterrupt, CancelledError):
        print("torchesegeta: interrupted; no run folder was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # an internal error: say so, keep the traceback for --verbose
        if args.verbose:
            raise
        print(
            f"torchesegeta: internal error: {type(e).__name__}: {e} (rerun with --verbose for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
