"""``torchesegeta methods | metrics | layers | schema``: what the library offers."""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Callable
from typing import Any

from ..errors import UserInputError
from .common import EXIT_OK, model_from_args, trust_option


def add_parsers(sub: Any) -> None:
    methods = sub.add_parser("methods", help="list every attribution method with its parameters")
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    methods.add_argument("--markdown", action="store_true", help="the README's method table")
    methods.set_defaults(handler=cmd_methods)

    metrics = sub.add_parser("metrics", help="list every evaluation metric with its parameters")
    metrics.add_argument("--json", action="store_true", help="machine-readable output")
    metrics.add_argument("--markdown", action="store_true", help="the README's metric table")
    metrics.set_defaults(handler=cmd_metrics)

    layers = sub.add_parser("layers", help="list the layers a layer method (Grad-CAM) can use")
    layers.add_argument("--model", default="demo")
    layers.add_argument("--network", default=None)
    layers.add_argument("--network-kwargs", default=None)
    trust_option(layers)
    layers.set_defaults(handler=cmd_layers)

    schema = sub.add_parser("schema", help="print the JSON schema of job files")
    schema.set_defaults(handler=cmd_schema)


def cmd_methods(args: argparse.Namespace) -> int:
    from ..methods import REGISTRY

    def heading(info: dict[str, Any]) -> str:
        output = "signed" if info["signed"] else "unsigned"
        return (
            f"{info['name']}  ({info['title']}; {info['family']}; {output}; cost: {info['cost']})"
        )

    return _catalog(args, [cls.describe() for cls in REGISTRY.values()], methods_markdown, heading)


def cmd_metrics(args: argparse.Namespace) -> int:
    from ..metrics import ordered

    def heading(info: dict[str, Any]) -> str:
        better = f"{info['direction']} is better"
        run = "default" if info["default"] else "opt-in"
        return f"{info['name']}  ({info['title']}; {info['family']}; {better}; {run}; cost: {info['cost']})"

    return _catalog(args, [cls.describe() for cls in ordered()], metrics_markdown, heading)


def _catalog(
    args: argparse.Namespace,
    described: list[dict[str, Any]],
    markdown: Callable[[], str],
    heading: Callable[[dict[str, Any]], str],
) -> int:
    """A registry's entries as JSON (--json), the README's table (--markdown) or text."""
    if args.json:
        print(json.dumps(described, indent=2))
    elif args.markdown:
        print(markdown(), end="")
    else:
        for info in described:
            print(heading(info))
            _print_summary_and_params(info)
    return EXIT_OK


def _print_summary_and_params(info: dict[str, Any]) -> None:
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
    from ..methods import REGISTRY

    families = {"gradient": 0, "layer": 1, "perturbation": 2}
    ordered = sorted(REGISTRY.values(), key=lambda cls: (families.get(cls.family, 9), cls.name))
    lines = [
        "| method | family | map value | cost | parameters (default) | reference |",
        "|---|---|---|---|---|---|",
    ]
    for cls in ordered:
        params = ", ".join(f"`{p.name}`={p.default!r}" for p in cls.params) or "none"
        output = _cell(f"{cls.quantity}, {'signed' if cls.signed else 'unsigned'}")
        lines.append(
            f"| `{cls.name}`: {_cell(cls.summary)} | {cls.family} | {output} | {cls.cost} | {params} | {cls.reference} |"
        )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text for a markdown table cell: a "|" (as in |map|) would end the cell."""
    return text.replace("|", "\\|")


def metrics_markdown() -> str:
    """The README's table of metrics, generated from the registry."""
    from ..metrics import ordered

    lines = [
        "| metric | family | better | unit | run | cost | reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for cls in ordered():
        run = "by default" if cls.default else "on request"
        summary = (
            f"{cls.summary} {cls.caveat[0].upper()}{cls.caveat[1:]}." if cls.caveat else cls.summary
        )
        lines.append(
            f"| `{cls.name}`: {_cell(summary)} | {cls.family} | {cls.direction} | {_cell(cls.unit)} | {run} | {cls.cost} | {cls.reference} |"
        )
    return "\n".join(lines) + "\n"


def cmd_layers(args: argparse.Namespace) -> int:
    import torch

    from ..methods.layer import default_layer, trace_layers
    from ..models.inference import SegmentationForward
    from ..models.loading import load_model

    model = load_model(model_from_args(args))
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
    from ..runs.job import schema_path

    print(schema_path().read_text(encoding="utf-8"))
    return EXIT_OK
