"""The web viewer of run folders (``torchesegeta view RUN``), on trame-slicer.

It shows a run's attribution maps over its input image with the Slicer module's own display
code (``TorchEsegetaSlicer``) rendered by Slicer's slice and 3D views (the ``slicer-core``
wheel), streamed to a browser by trame. Importing this package imports neither trame nor
slicer: :func:`missingPackages` tells the command line what is not installed.
"""

from __future__ import annotations

import importlib

from TorchEsegetaSlicer import enginePath

enginePath.ensureEngineImportable()

INSTALL_HINT = 'pip install "torchesegeta[view]"'
# module -> the distribution that provides it (named in the message when it is missing).
REQUIRED_MODULES = {
    "trame": "trame",
    "trame_vuetify": "trame-vuetify",
    "trame_rca": "trame-rca",
    "trame_slicer": "trame-slicer",
    "slicer_core": "slicer-core",
    "slicer_layer_dm": "slicer-layer-dm",
}


def missingPackages() -> list[str]:
    """The distributions of the viewer's optional dependencies that cannot be imported
    (not installed, or installed but broken, e.g. a binary built for another slicer-core)."""
    missing = []
    for module, distribution in REQUIRED_MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    return missing
