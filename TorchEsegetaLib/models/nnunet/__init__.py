"""nnU-Net v2 trained-model folders: loading, nnU-Net's inference pipeline as a differentiable
module, and a builder for small example folders.

``nnunetv2`` is an optional dependency (``pip install "torchesegeta[nnunet]"``), imported only
when such a model is loaded; this package itself imports neither torch nor nnunetv2.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import UserInputError

#: The checkpoint files nnU-Net's training writes into each fold folder; the first is the default.
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")


def is_nnunet_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like an nnU-Net v2 trained-model folder (dataset.json, plans.json
    and at least one fold_N/ folder)."""
    folder = Path(path)
    return (
        (folder / "dataset.json").is_file()
        and (folder / "plans.json").is_file()
        and any(p.is_dir() for p in folder.glob("fold_*"))
    )


def require_nnunetv2() -> None:
    """Raise a one-line :class:`UserInputError` naming the install when nnunetv2 is missing."""
    try:
        import nnunetv2  # noqa: F401
    except ImportError as error:
        raise UserInputError(
            'nnU-Net model folders need nnU-Net v2: pip install "torchesegeta[nnunet]" '
            "(see docs/nnunet.md to keep your PyTorch build)"
        ) from error
