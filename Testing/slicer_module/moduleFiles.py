"""Where the module's files are."""

from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_FOLDER = REPOSITORY / "TorchEsegeta"
ENGINE_FOLDER = REPOSITORY / "TorchEsegetaLib"
