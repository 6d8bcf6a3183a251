"""In-memory volumes: an array with its exact physical geometry.

Axis order and coordinate convention are fixed here once for the whole library:

* arrays are indexed ``(channel, i, j, k)`` where i, j, k are the voxel indices along the
  image's first, second and third axis (the x, y, z index of ITK/SimpleITK; the order
  MONAI and nibabel use). SimpleITK's ``GetArrayFromImage`` returns (k, j, i); the
  conversion happens only in :mod:`TorchEsegetaLib.io.images`.
* geometry is stored in LPS (DICOM/ITK) physical coordinates, exactly as SimpleITK reports
  it, so files round-trip without any sign flips; :meth:`Geometry.affine_ras` gives the
  RAS affine that nibabel and 3D Slicer use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from ..errors import UserInputError

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: The patient directions the +x, +y, +z LPS axes point to, and their opposites.
_LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))
#: The anatomical plane perpendicular to each LPS axis.
_LPS_PLANES = ("sagittal", "coronal", "axial")


@dataclass(frozen=True)
class Geometry:
    """Voxel grid in physical space.

    Attributes:
        size: number of voxels along (i, j, k).
        spacing: voxel size in mm along (i, j, k).
        origin: LPS position in mm of the centre of voxel (0, 0, 0).
        direction: 3x3 direction cosines, row-major, as SimpleITK's ``GetDirection``: column
            n is the LPS unit vector of index axis n.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(s) for s in self.origin))
        object.__setattr__(self, "direction", tuple(float(s) for s in np.ravel(self.direction)))
        if (
            len(self.size) != 3
            or len(self.spacing) != 3
            or len(self.origin) != 3
            or len(self.direction) != 9
        ):
            raise UserInputError(
                "a geometry needs 3 sizes, 3 spacings, 3 origin coordinates and a 3x3 direction"
            )
        if min(self.spacing) <= 0:
            raise UserInputError(f"voxel spacing {self.spacing} must be positive")

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        affine[:3, 3] = self.origin
        return affine

    def affine_ras(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) to RAS millimetres (nibabel, 3D Slicer)."""
        return _LPS_TO_RAS @ self.affine_lps()

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous voxel indices (..., 3) to LPS millimetres (..., 3)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ (self.direction_matrix @ np.diag(self.spacing)).T + np.asarray(self.origin)

    def physical_to_index(self, lps: np.ndarray) -> np.ndarray:
        """LPS millimetres (..., 3) to continuous voxel indices (..., 3)."""
        lps = np.asarray(lps, dtype=np.float64)
        inverse = np.linalg.inv(self.direction_matrix @ np.diag(self.spacing))
        return (lps - np.asarray(self.origin)) @ inverse.T

    def anatomical_axes(self) -> list[AnatomicalAxis]:
        """For each index axis (i, j, k), the patient axis nearest to it.

        An oblique axis is named by the LPS axis with the largest direction cosine (as
        radiology viewers label oblique slices); ``obliquity_deg`` says how far off it is.
        """
        matrix = self.direction_matrix
        axes = []
        for column in range(3):
            cosines = matrix[:, column] / np.linalg.norm(matrix[:, column])
            nearest = int(np.argmax(np.abs(cosines)))
            towards, away = (
                _LPS_LETTERS[nearest][::-1] if cosines[nearest] > 0 else _LPS_LETTERS[nearest]
            )
            angle = float(np.degrees(np.arccos(np.clip(abs(cosines[nearest]), 0.0, 1.0))))
            axes.append(AnatomicalAxis(away, towards, _LPS_PLANES[nearest], angle))
        return axes

    def mismatch(self, other: Geometry, tolerance: float = 1e-4) -> str | None:
        """Describe how ``other`` differs from this grid, or None when they match.

        Spacing and origin are compared relative to the voxel size, direction cosines absolutely.
        """
        if self.size != other.size:
            return f"size {other.size} differs from {self.size}"
        scale = max(min(self.spacing), 1e-12)
        if not np.allclose(self.spacing, other.spacing, rtol=tolerance, atol=0):
            return f"spacing {other.spacing} differs from {self.spacing}"
        if not np.allclose(self.origin, other.origin, rtol=0, atol=tolerance * scale):
            return f"origin {other.origin} differs from {self.origin}"
        if not np.allclose(self.direction, other.direction, rtol=0, atol=tolerance):
            return f"direction {other.direction} differs from {self.direction}"
        return None


@dataclass(frozen=True)
class AnatomicalAxis:
    """Where an index axis points in the patient.

    Attributes:
        start: letter of the patient direction at index 0 (R/L, A/P, S/I).
        end: letter of the direction the index increases towards.
        plane: the anatomical plane perpendicular to the axis (a slice at fixed index).
        obliquity_deg: angle between the axis and that patient axis.
    """

    start: str
    end: str
    plane: str
    obliquity_deg: float


@dataclass(frozen=True)
class ChannelSource:
    """Where some of a volume's channels were read from (for messages about channel counts).

    Attributes:
        path: the file or folder, as given.
        channels: how many channels it gave.
        axis: "frames" (the 4th axis of a 4D image), "components" (a vector image) or ""
            (one scalar 3D image).
    """

    path: str
    channels: int = 1
    axis: str = ""


@dataclass
class Volume:
    """A (channels, i, j, k) array with its geometry; ``sources`` says which file gave which
    channels (empty for arrays made in memory)."""

    array: np.ndarray
    geometry: Geometry
    sources: tuple[ChannelSource, ...] = ()

    def __post_init__(self) -> None:
        if self.array.ndim == 3:
            self.array = self.array[None]
        if self.array.ndim != 4:
            raise UserInputError(
                f"a volume needs 3 spatial dimensions (plus channels); got an array of shape {self.array.shape}"
            )
        if tuple(self.array.shape[1:]) != self.geometry.size:
            raise UserInputError(
                f"array shape {self.array.shape[1:]} does not match the geometry size {self.geometry.size}"
            )

    @property
    def channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return cast("tuple[int, int, int]", tuple(int(s) for s in self.array.shape[1:]))
