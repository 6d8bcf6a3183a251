"""``torchesegeta view``: review a run folder (or a cohort's results) in a web browser.

The viewer (the ``TorchEsegetaWeb`` package beside the Slicer module) renders with Slicer's
own views on the ``slicer-core`` wheel, which the engine never imports: it is imported by name
when this command runs, and its optional dependencies are checked first.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from ..errors import UserInputError

VIEWER_PACKAGE = "TorchEsegetaWeb"
# A source checkout keeps the viewer in the Slicer module's folder, next to the engine.
_CHECKOUT_FOLDER = Path(__file__).resolve().parents[2] / "TorchEsegeta"


def add_parsers(sub: Any) -> None:
    view = sub.add_parser(
        "view",
        help='review a run folder in a web browser (needs pip install "torchesegeta[view]")',
        description="Serve a web page showing the run's maps over its input image with the "
        "Slicer module's colours: slice and 3D views, method switcher, opacity, compare, "
        "metrics. Read-only; on this machine only unless --host says otherwise.",
    )
    view.add_argument("run_folder", nargs="?", help="run folder written by explain, run or demo")
    view.add_argument(
        "--cohort",
        metavar="RESULTS",
        help="the results folder of `torchesegeta batch` instead of a run folder: pick the case",
    )
    view.add_argument(
        "--port", type=int, default=8080, help="port to serve on (default 8080; 0: any free port)"
    )
    view.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only); another address "
        "shows the images to the network and prints a warning",
    )
    view.add_argument(
        "--image",
        action="append",
        default=None,
        metavar="FILE",
        help="the input image to show the maps over when the run's own has moved "
        "(repeat for each input channel)",
    )
    view.set_defaults(handler=cmd_view)


def viewer_package():
    """Import the viewer package, or fail with the pip command that installs what is missing."""
    if (
        importlib.util.find_spec(VIEWER_PACKAGE) is None
        and (_CHECKOUT_FOLDER / VIEWER_PACKAGE).is_dir()
    ):
        sys.path.insert(0, str(_CHECKOUT_FOLDER))
    try:
        package = importlib.import_module(VIEWER_PACKAGE)
    except ImportError as e:
        raise UserInputError(
            f'the web viewer is not installed ({e}); install it with pip install "torchesegeta[view]"'
        ) from e
    missing = package.missingPackages()
    if missing:
        raise UserInputError(
            f"the web viewer needs {', '.join(missing)}, which are not installed; "
            f"install them with {package.INSTALL_HINT}"
        )
    return package


def cmd_view(args: argparse.Namespace) -> int:
    viewer_package()
    serve = importlib.import_module(f"{VIEWER_PACKAGE}.serve")
    return serve.serve(
        run=args.run_folder, cohort=args.cohort, port=args.port, host=args.host, images=args.image
    )
