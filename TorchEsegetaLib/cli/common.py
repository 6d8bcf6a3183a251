"""What every subcommand shares: exit codes, the parser class, run options and the parsing of
``--method``/``--metric``/``--param`` lists.

The flags build a Job, which validates them (:mod:`TorchEsegetaLib.schema.validation`); the choices of
flags that are job fields come from the job schema, so the two cannot drift apart."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from ..errors import UserInputError
from ..schema.validation import job_field_schema

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_INTERRUPTED = 0, 1, 2, 130


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse's own usage errors are input errors too: one line, with where to look (the
        # usage synopsis argparse prints first runs over a dozen lines for `explain`)
        print(f"torchesegeta: error: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(EXIT_USER)


def output_options(parser: argparse.ArgumentParser) -> None:
    """--quiet and --verbose, given to every subcommand so they work after it as before it."""
    group = parser.add_argument_group("output")
    # SUPPRESS: when not given after the subcommand, the value given before it stays
    group.add_argument(
        "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress output"
    )
    group.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks of errors",
    )


def model_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The model reference of --model, --network, --network-kwargs and --trust-model (which
    only a bundle or nnU-Net folder takes: no other kind of model names code)."""
    from ..models.loading import model_ref_from_string
    from ..models.trust import FOLDER_KINDS

    if args.model is None and (args.network or args.network_kwargs is not None):
        raise UserInputError(
            "--network and --network-kwargs describe the network of a state-dict checkpoint, "
            "and no checkpoint was given; add --model CHECKPOINT (or drop them to explain the "
            "demo model)"
        )
    model = model_ref_from_string(
        args.model or "demo", args.network, json_option(args.network_kwargs, "--network-kwargs")
    )
    if args.trust_model and model["kind"] in FOLDER_KINDS:
        model["trust"] = True
    return model


def trust_option(group: Any) -> None:
    """--trust-model (alias --trust-bundle): consent to the code a model folder names."""
    group.add_argument(
        "--trust-model",
        "--trust-bundle",
        dest="trust_model",
        action="store_true",
        help="run the code a MONAI bundle or nnU-Net folder names (Python expressions, classes "
        "outside MONAI's and nnU-Net's own); only for folders from a source you trust, see "
        "docs/safety.md",
    )


def common_run_options(group: Any) -> None:
    """Options of every command that runs a job: device, seed, overwrite, precision, denormals."""
    group.add_argument(
        "--device",
        default=None,
        help=f"{job_field_schema('device')['title']} (default auto: CUDA when available)",
    )
    group.add_argument(
        "--seed", type=int, default=None, help="seed of every random draw (default 0)"
    )
    group.add_argument(
        "--overwrite", action="store_true", default=None, help="replace an existing output folder"
    )
    group.add_argument(
        "--precision",
        choices=job_field_schema("precision")["enum"],
        default=None,
        help="autocast precision of the network (default float32; a non-finite map is recomputed in float32)",
    )
    group.add_argument(
        "--no-flush-denormals",
        action="store_true",
        default=None,
        help="on the CPU, compute with denormal floats as they are (exact, and tens of times "
        "slower for a model full of them) instead of flushing them to zero, which the first "
        "pass checks against exact arithmetic (see docs/denormals.md)",
    )


def evaluation_options(group: Any) -> None:
    group.add_argument(
        "--evaluate",
        default=None,
        metavar="METRICS",
        help="also evaluate the maps: comma-separated metrics, 'default' or 'all' (see `torchesegeta metrics`)",
    )


def json_option(text: str | None, what: str) -> dict[str, Any] | None:
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


def methods_from_args(
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


def metrics_from_args(names: list[str] | None, params: list[str]) -> list[Any]:
    """Metric specs from --metric/--evaluate names ('default', 'all' expanded) and parameters."""
    from ..metrics import metric_specs

    chosen = [n.strip() for group in (names or ["default"]) for n in group.split(",") if n.strip()]
    expanded = ",".join(spec.name for spec in metric_specs(chosen))
    return metric_specs(methods_from_args([expanded], params, "metric"))
