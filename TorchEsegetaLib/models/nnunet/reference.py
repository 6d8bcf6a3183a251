"""nnU-Net's own inference on a :class:`~TorchEsegetaLib.io.volume.Volume`: the reference that the
tests and ``benchmarks/nnunet.py`` compare this package's pipeline with."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...io.volume import Volume


def nnunet_predict(
    folder: Path,
    volume: Volume,
    folds: Sequence[int | str],
    mirroring: bool = True,
    checkpoint_name: str = "checkpoint_final.pth",
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """nnUNetPredictor's labelmap (I, J, K) and probabilities (K, I, J, K), in our axis order.

    The image is handed over as nnU-Net's SimpleITK reader gives it (arrays in (k, j, i) order,
    spacing reversed), through ``predict_single_npy_array``: in this process, no workers."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(
            use_mirroring=mirroring, device=torch.device(device), allow_tqdm=False
        )
        return _predict(predictor, folder, volume, folds, checkpoint_name)


def nnunet_member_predict(
    folder: Path,
    volume: Volume,
    fold: int | str,
    flip: Sequence[int],
    checkpoint_name: str = "checkpoint_final.pth",
) -> tuple[np.ndarray, np.ndarray]:
    """One member of nnU-Net's ensemble by nnUNetPredictor's own code: fold ``fold`` alone,
    whose test-time mirroring is the one flip ``flip`` (nnU-Net's axes; empty: no flip), as
    :func:`nnunet_predict` returns it. Only ``_internal_maybe_mirror_and_predict``, the function
    that sums the flips, is replaced: it returns that flip's prediction instead of the mean."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    dims = [a + 2 for a in flip]

    class OneFlip(nnUNetPredictor):
        def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
            if not dims:
                return self.network(x)
            return torch.flip(self.network(torch.flip(x, dims)), dims)

    with contextlib.redirect_stdout(io.StringIO()):
        predictor = OneFlip(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
        return _predict(predictor, folder, volume, [fold], checkpoint_name)


def _predict(
    predictor: Any,
    folder: Path,
    volume: Volume,
    folds: Sequence[int | str],
    checkpoint_name: str,
) -> tuple[np.ndarray, np.ndarray]:
    predictor.initialize_from_trained_model_folder(str(folder), list(folds), checkpoint_name)
    image = np.ascontiguousarray(volume.array.transpose(0, 3, 2, 1))
    properties = {"spacing": list(volume.geometry.spacing[::-1])}
    labels, probabilities = predictor.predict_single_npy_array(image, properties, None, None, True)
    return labels.transpose(2, 1, 0), probabilities.transpose(0, 3, 2, 1)
