"""The ``torchesegeta`` command: explain | run | demo | batch | evaluate | report | view |
methods | metrics | layers | schema.

``--verbose`` and ``--quiet`` go before or after the subcommand. Exit status: 0 success, 2 bad input (one line naming the problem and the fix), 1 internal error,
130 interrupted. Tracebacks only with --verbose.

Each module of :data:`SUBCOMMANDS` adds its subcommands with ``add_parsers(subparsers)``, and
each subcommand's parser names its handler (``set_defaults(handler=cmd_x)``, a function of the
parsed arguments returning the exit status). A new subcommand is a new module in this list.

The top of the dependency rule: may import every other package of the library.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import CancelledError, UserInputError, unwritable_error
from . import batch, catalog, demo, evaluate, explain, view
from .catalog import (
    ground_truth_markdown,
    method_pages_markdown,
    methods_markdown,
    metrics_markdown,
)
from .common import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USER, Parser, output_options

SUBCOMMANDS = (explain, demo, batch, evaluate, view, catalog)

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USER",
    "SUBCOMMANDS",
    "build_parser",
    "ground_truth_markdown",
    "main",
    "method_pages_markdown",
    "methods_markdown",
    "metrics_markdown",
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="torchesegeta",
        description="Explain 3D medical image segmentation models with attribution maps.",
    )
    parser.add_argument("--version", action="version", version=f"torchesegeta {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in SUBCOMMANDS:
        module.add_parsers(sub)
    for subcommand in sub.choices.values():
        output_options(subcommand)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserInputError as e:
        if args.verbose:
            raise
        print(f"torchesegeta: error: {e}", file=sys.stderr)
        return EXIT_USER
    except BrokenPipeError:  # the reader stopped (`torchesegeta methods | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK
    except OSError as e:  # a read-only disk, a full one, no permission: the user's to fix
        message = unwritable_error(e)
        if args.verbose or message is None:
            return _internal_error(args, e)
        print(f"torchesegeta: error: {message}", file=sys.stderr)
        return EXIT_USER
    except (KeyboardInterrupt, CancelledError):
        print("torchesegeta: interrupted; no run folder was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        return _internal_error(args, e)


def _internal_error(args: argparse.Namespace, error: Exception) -> int:
    """Say it is an internal error; the traceback only with --verbose."""
    if args.verbose:
        raise error
    print(
        f"torchesegeta: internal error: {type(error).__name__}: {error} (rerun with --verbose "
        "for the traceback)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL
