"""Reading and writing volumes: the only module that talks to SimpleITK.

SimpleITK's ``GetArrayFromImage`` returns numpy arrays indexed (k, j, i) because ITK stores
i fastest and numpy is C-ordered. The library indexes (channel, i, j, k) like nibabel and
MONAI, so every array is transposed here, once, and nowhere else. Geometry stays in LPS
exactly as SimpleITK reports it (see :mod:`TorchEsegetaLib.io.volume`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import UserInputError, unwritable_errno
from .completeness import check_complete, written_completely
from .native_stderr import native_stderr
from .paths import refuse_special
from .volume import ChannelSource, Geometry, Volume

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# A short 4th axis is almost always channels stacked into one file (e.g. BraTS-style 4D
# NIfTI); a long one is a time series that no 3D segmentation model takes as input.
MAX_CHANNELS_ON_4TH_AXIS = 16
_COMPRESSED_SUFFIXES = (".nii.gz", ".nrrd")
_GRID_TOLERANCE = 1e-4
_SUPPORTED_TEXT = ", ".join(SUPPORTED_SUFFIXES) + " or a DICOM series folder"
_CHANNEL_SELECTOR = re.compile(r"^(?P<file>.+):(?:frame|channel)=(?P<index>\d+)$")


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a NIfTI, NRRD or MetaImage file, or a folder holding one DICOM series.

    Args:
        path: image file or DICOM series folder; ``FILE:frame=N`` (or ``FILE:channel=N``)
            reads only channel N of the file: frame N of a 4D image, component N of a vector
            image.

    Returns:
        A float32 volume of shape (channels, i, j, k): one channel for scalar images, one per
        pixel component for vector images, one per frame for a 4D image with a short 4th axis.

    Raises:
        UserInputError: the path is missing, unreadable, unsupported, incomplete or not a 3D
            image, or the channel picked does not exist.
    """
    file, index = split_channel_selector(path)
    image = _read_image(file)
    axis = _channel_axis(image)
    if index is not None:
        image, axis = _select_channel(image, file, index), ""
    array, geometry = _image_to_array(image, file, np.float32)
    return Volume(array, geometry, (ChannelSource(str(path), array.shape[0], axis),))


def split_channel_selector(path: str | os.PathLike) -> tuple[Path, int | None]:
    """``FILE:frame=N`` or ``FILE:channel=N`` -> (FILE, N); any other path -> (path, None).

    A file whose name itself ends that way is read as named.
    """
    match = _CHANNEL_SELECTOR.match(str(path))
    if match is None or Path(path).exists():
        return Path(path), None
    return Path(match["file"]), int(match["index"])


def read_channels(paths: Sequence[str | os.PathLike]) -> Volume:
    """Read co-registered images and stack their channels in the given order.

    Args:
        paths: image files or DICOM folders; each may itself hold several channels.

    Returns:
        A float32 volume with the channels of all inputs, on the grid of the first.

    Raises:
        UserInputError: no paths, an unreadable input, or an input on a different grid.
    """
    if not paths:
        raise UserInputError("no input images were given; pass at least one image file")
    first = read_volume(paths[0])
    arrays, sources = [first.array], list(first.sources)
    for path in paths[1:]:
        volume = read_volume(path)
        difference = first.geometry.mismatch(volume.geometry, _GRID_TOLERANCE)
        if difference is not None:
            raise UserInputError(
                f"input {path} is not on the grid of {paths[0]}: {difference}; resample or "
                "register it onto the same grid as the first input before explaining"
            )
        arrays.append(volume.array)
        sources.extend(volume.sources)
    return Volume(np.concatenate(arrays, axis=0), first.geometry, tuple(sources))


def read_label(path: str | os.PathLike, like: Geometry) -> np.ndarray:
    """Read a label map or mask that must lie on the grid ``like``.

    Args:
        path: label file or DICOM folder.
        like: grid of the image the labels belong to.

    Returns:
        An int32 array of shape (i, j, k).

    Raises:
        UserInputError: the file is unreadable, has several channels, holds non-integer
            values or is on another grid.
    """
    path = Path(path)
    array, geometry = _image_to_array(_read_image(path), path)
    if array.shape[0] != 1:
        raise UserInputError(
            f"label {path} has {array.shape[0]} channels; pass a single-channel label map"
        )
    difference = like.mismatch(geometry, _GRID_TOLERANCE)
    if difference is not None:
        raise UserInputError(
            f"label {path} is not on the image grid: {difference}; resample it onto the "
            "image grid first (nearest-neighbour interpolation)"
        )
    labels = array[0]
    if labels.dtype.kind == "f":
        fractional = labels[labels != np.round(labels)]
        if fractional.size:
            raise UserInputError(
                f"label {path} holds non-integer values such as {fractional.flat[0]}; pass a "
                "label map or a thresholded mask, not a probability map"
            )
    return labels.astype(np.int32)


def write_volume(
    array: np.ndarray,
    geometry: Geometry,
    path: str | os.PathLike,
    dtype: np.dtype | type = np.float32,
) -> Path:
    """Write an (i, j, k) or (channels, i, j, k) array with its geometry.

    Several channels are written as one vector image. The parent folder is created.

    Args:
        array: voxel values.
        geometry: grid of the array.
        path: output file; its suffix picks the format.
        dtype: pixel type on disk.

    Returns:
        The path written.

    Raises:
        UserInputError: unsupported suffix, wrong array shape, or the file could not be written.
    """
    path = Path(path)
    suffix = _supported_suffix(path)
    if suffix is None:
        raise UserInputError(
            f"cannot write {path}: unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    array = np.asarray(array).astype(dtype, copy=False)
    image = to_sitk(array, geometry)
    path.parent.mkdir(parents=True, exist_ok=True)
    compress = suffix in _COMPRESSED_SUFFIXES
    _, error, printed = _itk(lambda: sitk.WriteImage(image, str(path), useCompression=compress))
    if error is not None:
        code = unwritable_errno(f"{_reason(error)} {printed.text}", path, array.nbytes)
        if code is not None:
            raise OSError(code, os.strerror(code), str(path)) from error
        raise UserInputError(
            f"could not write {path} ({_reason(error)}); check that the folder is writable "
            f"and that {suffix} supports pixel type {np.dtype(dtype).name}"
        ) from error
    missing = written_completely(path)
    if missing is not None:  # ITK's NIfTI writer reports success when the disk fills up
        code = unwritable_errno(printed.text, path, array.nbytes)
        if code is not None:
            raise OSError(code, f"{os.strerror(code)} ({missing})", str(path))
        raise UserInputError(
            f"could not write {path} completely ({missing}); check the disk it is on and retry"
        )
    printed.echo()  # the write is complete: what ITK printed was only a warning
    return path


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """Convert an (i, j, k) or (channels, i, j, k) array to a SimpleITK image.

    One channel gives a scalar image, several a vector image.
    """
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim not in (3, 4) or tuple(array.shape[-3:]) != geometry.size:
        raise UserInputError(
            f"array of shape {array.shape} does not fit the grid of size {geometry.size}; "
            "pass an (i, j, k) or (channels, i, j, k) array on that grid"
        )
    is_vector = array.ndim == 4
    reordered = array.transpose(3, 2, 1, 0) if is_vector else array.transpose(2, 1, 0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(reordered), isVector=is_vector)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def geometry_from_sitk(image: sitk.Image) -> Geometry:
    """Grid of a SimpleITK image of 3 or more dimensions, taken from its first 3 axes."""
    dimension = image.GetDimension()
    if dimension < 3:
        raise UserInputError(f"a {dimension}D image has no 3D geometry; pass a 3D volume")
    direction = np.asarray(image.GetDirection()).reshape(dimension, dimension)[:3, :3]
    return Geometry(
        size=image.GetSize()[:3],
        spacing=image.GetSpacing()[:3],
        origin=image.GetOrigin()[:3],
        direction=tuple(float(v) for v in direction.ravel()),
    )


def check_finite(volume: Volume | np.ndarray, name: str) -> None:
    """Raise when ``volume`` holds NaN or infinite voxels.

    Args:
        volume: a volume or array.
        name: what the input is called in the message (e.g. its file name).
    """
    array = volume.array if isinstance(volume, Volume) else np.asarray(volume)
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise UserInputError(
            f"input {name} contains {bad} NaN/Inf voxels; replace them (e.g. with 0) or crop "
            "them away before explaining"
        )


def _read_image(path: Path) -> sitk.Image:
    if not path.exists():
        raise UserInputError(f"{path} does not exist; check the path")
    if path.is_dir():
        return _read_dicom_series(path)
    refuse_special(path, "image file")
    if _supported_suffix(path) is None:
        raise UserInputError(f"{path} has an unsupported file type; use {_SUPPORTED_TEXT}")
    if path.stat().st_size == 0:
        raise UserInputError(f"{path} is an empty file (0 bytes); download or copy it again")
    check_complete(path)
    image, error, _ = _itk(lambda: sitk.ReadImage(str(path)), echo=True)
    if error is None:
        return image
    raise UserInputError(
        f"{path} could not be read as an image ({_reason(error)}); check that the file is "
        "complete and not corrupted"
    ) from error


def _read_dicom_series(folder: Path) -> sitk.Image:
    # GDCM warns on stderr when it finds no series: said in the message instead
    series_ids, _, printed = _itk(lambda: sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not series_ids:
        raise UserInputError(
            f"folder {folder} contains no DICOM series; pass the folder that directly holds "
            f"the DICOM files of one series, or an image file ({', '.join(SUPPORTED_SUFFIXES)})"
        )
    printed.echo()
    if len(series_ids) > 1:
        raise UserInputError(
            f"folder {folder} contains {len(series_ids)} DICOM series ({', '.join(series_ids)}); "
            "choose one by passing a folder that holds only that series"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))
    image, error, _ = _itk(reader.Execute, echo=True)
    if error is None:
        return image
    raise UserInputError(
        f"the DICOM series in {folder} could not be read ({_reason(error)}); check that "
        "its files are complete"
    ) from error


def _image_to_array(
    image: sitk.Image, path: Path, dtype: type | None = None
) -> tuple[np.ndarray, Geometry]:
    """(channels, i, j, k) copy of the voxels in ``dtype`` (None: as stored) and the grid."""
    dimension = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    voxels = sitk.GetArrayViewFromImage(image)
    if dimension == 3 and components == 1:
        array = voxels.transpose(2, 1, 0)[None]
    elif dimension == 3:
        array = voxels.transpose(3, 2, 1, 0)
    elif dimension == 4 and components == 1 and image.GetSize()[3] <= MAX_CHANNELS_ON_4TH_AXIS:
        array = voxels.transpose(0, 3, 2, 1)
    elif dimension == 4:
        raise UserInputError(
            f"{path} is a 4D image with {image.GetSize()[3]} frames of {components} components; "
            f"pass a 3D volume or pick one frame with {path}:frame=N (at most "
            f"{MAX_CHANNELS_ON_4TH_AXIS} frames are read as channels)"
        )
    else:
        raise UserInputError(
            f"{path} is a {dimension}D image; a 3D volume is needed, so pass the 3D scan "
            "(or DICOM series folder) instead"
        )
    # The view does not keep ``image`` alive, so copy before returning.
    return np.array(array, dtype=dtype, order="C", copy=True), geometry_from_sitk(image)


def _itk(call: Callable[[], Any], echo: bool = False) -> tuple[Any, RuntimeError | None, Any]:
    """(result, None, printed) or (None, error, printed) of an ITK call whose native stderr
    output is captured (see :mod:`.native_stderr`); ``echo``: print it when the call worked."""
    result, error = None, None
    with native_stderr() as printed:
        try:
            result = call()
        except RuntimeError as e:
            error = e
    if echo and error is None:
        printed.echo()
    return result, error, printed


def _channel_axis(image: sitk.Image) -> str:
    """What a file's several channels are: "frames" of a 4D image, "components" or ""."""
    if image.GetDimension() == 4:
        return "frames"
    return "components" if image.GetNumberOfComponentsPerPixel() > 1 else ""


def _select_channel(image: sitk.Image, path: Path, index: int) -> sitk.Image:
    """The 3D image of frame ``index`` of a 4D image, or of component ``index``."""
    if image.GetDimension() == 4:
        frames = image.GetSize()[3]
        if index >= frames:
            raise UserInputError(
                f"{path} has {frames} frames, so there is no frame {index}; pick a frame from 0 "
                f"to {frames - 1}"
            )
        extract = sitk.ExtractImageFilter()
        extract.SetSize([*image.GetSize()[:3], 0])
        extract.SetIndex([0, 0, 0, index])
        # the 3D grid is the first three axes, as geometry_from_sitk reads it
        extract.SetDirectionCollapseToStrategy(extract.DIRECTIONCOLLAPSETOSUBMATRIX)
        return extract.Execute(image)
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        if index >= components:
            raise UserInputError(
                f"{path} has {components} components per voxel, so there is no channel "
                f"{index}; pick a channel from 0 to {components - 1}"
            )
        return sitk.VectorIndexSelectionCast(image, index)
    raise UserInputError(
        f"{path} has a single channel, so there is no channel {index} to pick; give the file "
        "without ':frame=' / ':channel='"
    )


def _supported_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((suffix for suffix in SUPPORTED_SUFFIXES if name.endswith(suffix)), None)


def _reason(error: Exception) -> str:
    # SimpleITK puts the source location first and the actual reason on the last line.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
