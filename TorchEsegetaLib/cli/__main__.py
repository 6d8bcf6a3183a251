"""``python -m TorchEsegetaLib.cli``: the ``torchesegeta`` command."""

import sys

from . import main

sys.exit(main())
