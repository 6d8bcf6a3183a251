"""nnU-Net's resampling as differentiable torch operations.

nnU-Net resamples with ``resample_data_or_seg_to_shape``: scikit-image's ``resize`` (a B-spline
of the plans' ``order``, edge mode, no anti-aliasing) of each channel, or, for anisotropic
spacings, of each slice across the low-resolution axis followed by scipy's ``map_coordinates``
(``order_z``) along it. Spline prefiltering and evaluation are linear and separable, so each
axis is one matrix: the matrices here are built by running nnU-Net's own functions
(``skimage.transform.resize``, ``scipy.ndimage.map_coordinates``) on unit vectors, and the
resampling is their product along the axes. ``resize`` then clips to the input's range (its
``clip=True``): that clip is kept, with the live minimum and maximum of the input, so the
whole step is exactly nnU-Net's (and positively homogeneous).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ...errors import UserInputError

SUPPORTED = ("resample_data_or_seg_to_shape", "no_resampling_hack")


@dataclass(frozen=True)
class Resampling:
    """One resampling of a (B, C, *shape) tensor to ``new_shape``, as nnU-Net would do it.

    Attributes:
        shape, new_shape: spatial shapes before and after.
        order: spline order of ``resize`` (in-plane order when ``separate_axis`` is set).
        separate_axis: the low-resolution axis resampled on its own with ``order_z``, or None.
        order_z: interpolation order along ``separate_axis``.
        identity: nnU-Net leaves the data untouched (equal shapes, or no resampling).
    """

    shape: tuple[int, ...]
    new_shape: tuple[int, ...]
    order: int
    separate_axis: int | None
    order_z: int
    identity: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        spatial = list(range(2, x.ndim))
        if self.separate_axis is None:
            y = x
            for axis in range(len(self.shape)):
                y = _along(y, axis + 2, self.operator(axis))
            return _clip(y, x, spatial)
        axis = self.separate_axis
        in_plane = [a for a in range(len(self.shape)) if a != axis]
        y = x
        for a in in_plane:
            y = _along(y, a + 2, self.operator(a))
        # resize runs on each slice across the separate axis: each slice is clipped to its range
        y = _clip(y, x, [a + 2 for a in in_plane])
        if self.shape[axis] != self.new_shape[axis]:
            y = _along(y, axis + 2, self.operator(axis))
        return y

    def operator(self, axis: int) -> tuple[str, int, int, int]:
        """The one-dimensional step along ``axis`` as (kind, n, m, order): scikit-image's
        ``resize`` at the plans' order, or ``map_coordinates`` at ``order_z`` along the
        separate axis."""
        n, m = self.shape[axis], self.new_shape[axis]
        if axis == self.separate_axis:
            return ("coordinates", n, m, self.order_z)
        return ("resize", n, m, self.order)

    def matrix(self, axis: int) -> np.ndarray:
        """The (m, n) matrix of the step along ``axis`` (before any clip)."""
        return operator_matrix(self.operator(axis))

    @property
    def convex(self) -> bool:
        """Whether every output is a convex combination of inputs (non-negative weights summing
        to 1: linear or nearest interpolation): the clip to the input's range then never
        acts, and the resampling is linear, its gradient the same whatever it is applied to."""
        if self.identity:
            return True
        for axis in range(len(self.shape)):
            matrix = self.matrix(axis)
            if matrix.min() < 0 or not np.allclose(matrix.sum(axis=1), 1.0, atol=1e-6):
                return False
        return True


def plan_resampling(
    function: str,
    kwargs: dict,
    shape: tuple[int, ...],
    new_shape: tuple[int, ...],
    current_spacing: tuple[float, ...],
    new_spacing: tuple[float, ...],
) -> Resampling:
    """The resampling that nnU-Net's ``function`` (a plans entry) with ``kwargs`` would apply."""
    shape, new_shape = tuple(int(s) for s in shape), tuple(int(s) for s in new_shape)
    if function == "no_resampling_hack":
        return Resampling(shape, shape, 0, None, 0, True)
    if function != "resample_data_or_seg_to_shape":
        raise UserInputError(
            f"the plans resample with {function!r}, which TorchEsegeta does not reproduce "
            f"(supported: {', '.join(SUPPORTED)}); use a model planned with nnU-Net's default planner"
        )
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    known = {"is_seg", "order", "order_z", "force_separate_z", "separate_z_anisotropy_threshold"}
    unknown = sorted(set(kwargs) - known)
    if unknown or kwargs.get("is_seg"):
        raise UserInputError(
            f"unsupported resampling arguments {sorted(kwargs)} in the plans; expected {sorted(known)} "
            "with is_seg false"
        )
    extra = {}
    if "separate_z_anisotropy_threshold" in kwargs:
        extra["separate_z_anisotropy_threshold"] = kwargs["separate_z_anisotropy_threshold"]
    separate, axis = determine_do_sep_z_and_axis(
        kwargs.get("force_separate_z", False), current_spacing, new_spacing, **extra
    )
    return Resampling(
        shape,
        new_shape,
        int(kwargs.get("order", 3)),
        int(axis) if separate else None,
        int(kwargs.get("order_z", 0)),
        shape == new_shape,
    )


@lru_cache(maxsize=64)
def resize_matrix(n: int, m: int, order: int) -> np.ndarray:
    """(m, n) matrix of scikit-image's ``resize`` of a length-n line to m samples, as nnU-Net
    calls it (edge mode, no anti-aliasing), without its final clip."""
    from skimage.transform import resize

    matrix = np.empty((m, n), dtype=np.float64)
    for i in range(n):
        unit = np.zeros(n, dtype=np.float64)
        unit[i] = 1.0
        matrix[:, i] = resize(unit, (m,), order, mode="edge", anti_aliasing=False, clip=False)
    matrix.setflags(write=False)
    return matrix


@lru_cache(maxsize=64)
def coordinate_matrix(n: int, m: int, order: int) -> np.ndarray:
    """(m, n) matrix of nnU-Net's ``map_coordinates`` step along a separate axis (its
    align-corners-false coordinates, nearest mode)."""
    from scipy.ndimage import map_coordinates

    coordinates = (n / m) * (np.arange(m, dtype=np.float64) + 0.5) - 0.5
    matrix = np.empty((m, n), dtype=np.float64)
    for i in range(n):
        unit = np.zeros(n, dtype=np.float64)
        unit[i] = 1.0
        matrix[:, i] = map_coordinates(unit, coordinates[None], order=order, mode="nearest")
    matrix.setflags(write=False)
    return matrix


def _along(x: torch.Tensor, dim: int, operator: tuple[str, int, int, int]) -> torch.Tensor:
    """Apply the (m, n) matrix of ``operator`` (kind, n, m, order) along ``dim`` of ``x``."""
    weights = _weights(operator, x.dtype, x.device)
    if weights is None:
        return x
    return torch.movedim(weights @ torch.movedim(x, dim, -2), -2, dim)


def operator_matrix(operator: tuple[str, int, int, int]) -> np.ndarray:
    """The (m, n) matrix of a one-dimensional step (kind, n, m, order) of :class:`Resampling`."""
    kind, n, m, order = operator
    return (resize_matrix if kind == "resize" else coordinate_matrix)(n, m, order)


@lru_cache(maxsize=64)
def _weights(
    operator: tuple[str, int, int, int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """The operator's matrix as a tensor; None when it is the identity."""
    matrix = operator_matrix(operator)
    n, m = operator[1], operator[2]
    if n == m and np.array_equal(matrix, np.eye(n)):
        return None
    return torch.tensor(matrix, dtype=dtype, device=device)


def _clip(y: torch.Tensor, x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """``resize``'s clip of the output to the input's range, over ``dims`` (per the rest)."""
    return torch.clamp(y, min=x.amin(dim=dims, keepdim=True), max=x.amax(dim=dims, keepdim=True))
