"""``python -m TorchEsegetaWeb`` is ``torchesegeta view``."""

import sys

from TorchEsegetaLib.cli import main

sys.exit(main(["view", *sys.argv[1:]]))
