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
    methods = sub.add_parser(
        "methods",
        help="list every attribution method with its parameters, or one method's page",
    )
    methods.add_argument(
        "name",
        nargs="?",
        default=None,
        help="a method's page: what its maps answer, what red and blue mean, how they mislead, "
        "what they cannot show",
    )
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    methods.add_argument(
        "--markdown", action="store_true", help="the docs' method table (with NAME: its page)"
    )
    methods.set_defaults(handler=cmd_methods)

    metrics = sub.add_parser("metrics", help="list every evaluation metric with its parameters")
    metrics.add_argument("--json", action="store_true", help="machine-readable output")
    metrics.add_argument("--markdown", action="store_true", help="the docs' metric table")
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

    if args.name:
        info = REGISTRY.lookup(args.name).describe()
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(method_page_markdown(info) if args.markdown else method_page_text(info), end="")
        return EXIT_OK

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
    """A registry's entries as JSON (--json), the docs' table (--markdown) or text."""
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
    for line in _param_lines(info):
        print(line)
    print()


def _param_lines(info: dict[str, Any]) -> list[str]:
    """Each declared parameter as its ``--param`` flag (type, default, choices, range) and help."""
    lines = []
    for p in info["params"]:
        extra = f" choices: {', '.join(p['choices'])}" if "choices" in p else ""
        if "minimum" in p or "maximum" in p:
            extra += f" range: [{p.get('minimum', '')}, {p.get('maximum', '')}]"
        lines.append(
            f"    --param {info['name']}.{p['name']}=<{p['type']}> (default {p['default']!r}){extra}"
        )
        lines.append(textwrap.indent(textwrap.fill(p["help"], 88), "        "))
    return lines


def methods_markdown() -> str:
    """The docs' table of methods (docs/methods.md), generated from the registry so the two
    never drift."""
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


def _values(info: dict[str, Any]) -> list[tuple[str, str]]:
    """What the map's values mean: (colour, meaning) pairs."""
    guide = info["guide"]
    if not info["signed"]:
        return [("bright (high)", guide["positive"])]
    values = [("red (positive)", guide["positive"])]
    if guide["negative"]:
        values.append(("blue (negative)", guide["negative"]))
    return values


def method_page_text(info: dict[str, Any]) -> str:
    """``torchesegeta methods NAME``: one method's page for the terminal."""

    def paragraph(text: str, indent: str = "  ") -> str:
        return textwrap.fill(
            text, 96, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
        )

    def points(items: list[str]) -> list[str]:
        return [
            textwrap.fill(
                item,
                96,
                initial_indent="    - ",
                subsequent_indent="      ",
                break_on_hyphens=False,
            )
            for item in items
        ]

    guide = info["guide"]
    signed = "signed" if info["signed"] else "unsigned"
    lines = [
        f"{info['title']} ({info['name']}): {info['family']} method",
        paragraph(info["summary"]),
        "",
        "  What it answers:",
        paragraph(guide["answers"], "    "),
        f"  Map value: {info['quantity']}, {signed}",
        *(paragraph(f"{colour}: {meaning}", "    ") for colour, meaning in _values(info)),
        "  Known failure modes:",
        *points(guide["failure_modes"]),
        "  What it cannot show:",
        *points(guide["cannot_show"]),
        f"  Cost: {info['cost']}",
        paragraph(f"Reference: {info['reference']}"),
    ]
    if info["params"]:
        lines += ["  Parameters:", *_param_lines(info)]
    return "\n".join(lines) + "\n"


def method_page_markdown(info: dict[str, Any]) -> str:
    """One method's page for the docs (docs/methods-FAMILY.md), from the same description."""
    guide = info["guide"]
    signed = "signed" if info["signed"] else "unsigned"
    values = "; ".join(f"{colour}: {meaning}" for colour, meaning in _values(info))
    params = "; ".join(
        f"`{p['name']}` (default `{p['default']!r}`): {p['help']}" for p in info["params"]
    )
    lines = [
        f"## {info['title']} (`{info['name']}`)",
        "",
        f"{info['summary']} *Cost: {info['cost']}. Reference: {info['reference']}.*",
        "",
        f"**What it answers.** {guide['answers']}",
        "",
        f"**Map value.** {_cell(info['quantity'])}, {signed}. {_cell(values[0].upper() + values[1:])}.",
        "",
        "**Known failure modes.**",
        *(f"- {item}" for item in guide["failure_modes"]),
        "",
        "**What it cannot show.**",
        *(f"- {item}" for item in guide["cannot_show"]),
        "",
        f"**Parameters.** {params or 'none'}",
        "",
    ]
    return "\n".join(lines) + "\n"


def method_page_group(cls: type) -> str:
    """The docs page group a method's page is on (``Method.page_group``, else its family)."""
    return getattr(cls, "page_group", None) or str(getattr(cls, "family", ""))


def method_pages_markdown(group: str) -> str:
    """Every method page of one group (a family, or "cam": the class activation maps), in the
    order ``torchesegeta methods`` lists them."""
    from ..methods import REGISTRY

    return "".join(
        method_page_markdown(cls.describe())
        for cls in REGISTRY.values()
        if method_page_group(cls) == group
    )


def ground_truth_markdown() -> str:
    """The docs' table of the ground-truth test (docs/proofs.md): each method's share of |map|
    in the box a network sees, as the method pages quote it (the methods not listed there reach
    at least 0.95, asserted)."""
    from ..methods import REGISTRY
    from ..methods.guides import ALL_ZERO_IN_GROUND_TRUTH, GROUND_TRUTH_SHARE

    rows: dict[str, list[str]] = {}
    for name, cls in REGISTRY.items():
        share = GROUND_TRUTH_SHARE.get(name)
        if cls.name in ALL_ZERO_IN_GROUND_TRUTH:
            key = "all zero"
        else:
            key = "at least 0.95 (measured 1.00)" if share is None else f"{share:.2f}"
        rows.setdefault(key, []).append(cls.title)

    def order(key: str) -> float:
        return 2.0 if key.startswith("at least") else -1.0 if key == "all zero" else float(key)

    lines = ["| methods | share in the box |", "|---|---|"]
    for key in sorted(rows, key=order, reverse=True):
        lines.append(f"| {', '.join(rows[key])} | {key} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text for a markdown table cell: a "|" (as in |map|) would end the cell."""
    return text.replace("|", "\\|")


def metrics_markdown() -> str:
    """The docs' table of metrics (docs/evaluation.md), generated from the registry."""
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
    from ..methods import REGISTRY
    from ..methods.layer import blank_input, default_layer, trace_layers
    from ..models.loading import load_model

    model = load_model(model_from_args(args))
    card = model.card
    # A dry run on a small blank input finds the layers in the order they run, with their shapes.
    forward, dummy, where = blank_input(model.network, card, max(32, 2 * card.size_divisible))
    size = tuple(dummy.shape[2:])
    layers = trace_layers(forward, dummy)
    if not layers:
        raise UserInputError(
            "this model exposes no layers (TorchScript); load it by network name and checkpoint to use layer methods"
        )
    # each layer method's default: the last wide map, or the last non-negative one
    defaults: dict[str, list[str]] = {}
    for name, cls in REGISTRY.items():
        if cls.family == "layer":
            nonnegative = bool(getattr(cls, "nonnegative_layer", False))
            chosen = default_layer(forward, dummy, card.out_channels, nonnegative, layers)
            defaults.setdefault(chosen, []).append(name)
    print(
        f"layers of {card.name} in execution order (output shape for {where} "
        f"{'x'.join(map(str, size))} input):"
    )
    for layer in layers:
        methods = defaults.get(layer["name"])
        mark = f"  (default of {', '.join(methods)})" if methods else ""
        shape = "x".join(map(str, layer["shape"]))
        print(f"  {layer['name']:<44} {layer['type']:<18} {layer['channels']:>4} x {shape}{mark}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from ..runs.job import schema_path

    print(schema_path().read_text(encoding="utf-8"))
    return EXIT_OK
