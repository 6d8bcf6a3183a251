"""Reading and writing volumes: round trips, independent readers, DICOM, errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.images import (
    SUPPORTED_SUFFIXES,
    check_finite,
    geometry_from_sitk,
    read_channels,
    read_label,
    read_volume,
    to_sitk,
    write_volume,
)
from TorchEsegetaLib.io.volume import Geometry

nib = pytest.importorskip("nibabel")

SIZE = (7, 9, 5)


def rotation(degrees_x: float, degrees_z: float) -> np.ndarray:
    """A proper rotation: about x, then about z."""
    ax, az = np.radians([degrees_x, degrees_z])
    about_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    about_z = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return about_z @ about_x


OBLIQUE = Geometry(
    size=SIZE, spacing=(0.7, 1.3, 2.5), origin=(-12.5, 30.25, 7.0), direction=rotation(20, 35)
)


def random_array(shape: tuple[int, ...] = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def assert_same_geometry(actual: Geometry, expected: Geometry) -> None:
    assert actual.size == expected.size
    np.testing.assert_allclose(actual.spacing, expected.spacing, atol=1e-5)
    np.testing.assert_allclose(actual.origin, expected.origin, atol=1e-5)
    np.testing.assert_allclose(actual.direction, expected.direction, atol=1e-5)


def file_states(folder) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


@pytest.mark.parametrize("suffix", SUPPORTED_SUFFIXES)
def test_round_trip_keeps_array_and_oblique_geometry(tmp_path, suffix):
    array = random_array()
    path = write_volume(array, OBLIQUE, tmp_path / f"scan{suffix}")
    before = file_states(tmp_path)

    volume = read_volume(path)

    assert volume.array.shape == (1, *SIZE) and volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array[0], array)
    assert_same_geometry(volume.geometry, OBLIQUE)
    assert file_states(tmp_path) == before, "reading must not touch its input"


@pytest.mark.parametrize("suffix", SUPPORTED_SUFFIXES)
def test_simpleitk_reads_what_we_write(tmp_path, suffix):
    array = random_array()
    image = sitk.ReadImage(str(write_volume(array, OBLIQUE, tmp_path / f"scan{suffix}")))

    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), array)
    assert_same_geometry(geometry_from_sitk(image), OBLIQUE)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nibabel_reads_what_we_write(tmp_path, suffix):
    array = random_array()
    image = nib.load(write_volume(array, OBLIQUE, tmp_path / f"scan{suffix}"))

    np.testing.assert_allclose(image.affine, OBLIQUE.affine_ras(), atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), array)


def test_we_read_what_nibabel_writes(tmp_path):
    # An improper (radiological, left-right flipped) oblique RAS affine, as scanners write.
    affine = np.eye(4)
    affine[:3, :3] = rotation(-15, 50) @ np.diag([-0.9, 1.1, 3.0])
    affine[:3, 3] = (40.0, -22.5, 12.0)
    array = random_array()
    nib.save(nib.Nifti1Image(array, affine), tmp_path / "scan.nii.gz")

    volume = read_volume(tmp_path / "scan.nii.gz")

    np.testing.assert_allclose(volume.geometry.affine_ras(), affine, atol=1e-4)
    np.testing.assert_array_equal(volume.array[0], array)


def test_index_to_physical_agrees_with_simpleitk():
    image = to_sitk(random_array(), OBLIQUE)
    points = np.array([[0, 0, 0], [6, 8, 4], [1.5, -2.0, 3.25], [3, 4, 2]])

    expected = [image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in points]

    np.testing.assert_allclose(OBLIQUE.index_to_physical(points), expected, atol=1e-9)
    np.testing.assert_allclose(OBLIQUE.physical_to_index(expected), points, atol=1e-9)


def test_read_channels_stacks_files_in_order(tmp_path):
    first, second = random_array(seed=1), random_array(seed=2)
    paths = [
        write_volume(first, OBLIQUE, tmp_path / "t1.nii.gz"),
        write_volume(second, OBLIQUE, tmp_path / "flair.nrrd"),
    ]

    volume = read_channels(paths)

    assert volume.array.shape == (2, *SIZE)
    np.testing.assert_array_equal(volume.array[0], first)
    np.testing.assert_array_equal(volume.array[1], second)
    assert_same_geometry(volume.geometry, OBLIQUE)


@pytest.mark.parametrize(
    "prop, changed",
    [
        ("size", {"size": (7, 9, 6)}),
        ("spacing", {"spacing": (0.7, 1.3, 2.6)}),
        ("origin", {"origin": (-12.5, 30.25, 8.0)}),
        ("direction", {"direction": rotation(20, 40)}),
    ],
)
def test_read_channels_rejects_another_grid(tmp_path, prop, changed):
    other = replace(OBLIQUE, **changed)
    first = write_volume(random_array(), OBLIQUE, tmp_path / "t1.nii.gz")
    second = write_volume(random_array(other.size), other, tmp_path / "t2.nii.gz")

    with pytest.raises(UserInputError, match=prop) as error:
        read_channels([first, second])
    assert "t1.nii.gz" in str(error.value) and "t2.nii.gz" in str(error.value)
    assert "resample" in str(error.value)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_vector_image_round_trips_as_channels(tmp_path, suffix):
    array = random_array((3, *SIZE))
    path = write_volume(array, OBLIQUE, tmp_path / f"rgb{suffix}")

    assert sitk.ReadImage(str(path)).GetNumberOfComponentsPerPixel() == 3
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, array)
    assert_same_geometry(volume.geometry, OBLIQUE)


def test_short_4d_nifti_reads_as_channels(tmp_path):
    array = random_array((*SIZE, 2))
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 3.0, 4.0, 1.0])), tmp_path / "4d.nii.gz")

    volume = read_volume(tmp_path / "4d.nii.gz")

    np.testing.assert_array_equal(volume.array, np.moveaxis(array, -1, 0))
    assert volume.geometry.spacing == pytest.approx((2.0, 3.0, 4.0))


def test_long_4d_nifti_is_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 17), np.float32), np.eye(4)), tmp_path / "t.nii")

    with pytest.raises(UserInputError, match="17 frames"):
        read_volume(tmp_path / "t.nii")


def write_dicom_series(folder, array_kji: np.ndarray, geometry: Geometry, series: str) -> None:
    """One file per k slice, tags as a scanner writes them (SimpleITK DicomSeriesFromArray)."""
    folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.GetImageFromArray(array_kji)
    volume.SetSpacing(geometry.spacing)
    volume.SetOrigin(geometry.origin)
    volume.SetDirection(geometry.direction)
    d = geometry.direction
    tags = {
        "0008|0060": "CT",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1.1",
        "0020|000e": series,
        "0020|0037": "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
        # DICOM pixel spacing is row spacing (along j) first, then column spacing (along i).
        "0028|0030": f"{geometry.spacing[1]}\\{geometry.spacing[0]}",
        "0018|0050": str(geometry.spacing[2]),
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array_kji.shape[0]):
        image_slice = volume[:, :, k]
        for tag, value in tags.items():
            image_slice.SetMetaData(tag, value)
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        image_slice.SetMetaData("0020|0032", "\\".join(str(v) for v in position))
        image_slice.SetMetaData("0020|0013", str(k + 1))
        image_slice.SetMetaData("0008|0018", f"{series}.{k + 1}")
        writer.SetFileName(str(folder / f"{series}_{k:03d}.dcm"))
        writer.Execute(image_slice)


# Oblique about the slice normal only, so each 2D slice keeps a valid in-plane direction.
DICOM_GRID = Geometry(
    size=SIZE, spacing=(0.6, 0.8, 2.5), origin=(-40.0, 12.5, 80.0), direction=rotation(0, 25)
)


def test_dicom_series_folder(tmp_path):
    array = np.random.default_rng(3).integers(-1000, 3000, size=SIZE).astype(np.int16)
    write_dicom_series(tmp_path / "ct", array.transpose(2, 1, 0).copy(), DICOM_GRID, "1.2.3.4")
    before = file_states(tmp_path)

    volume = read_volume(tmp_path / "ct")

    np.testing.assert_array_equal(volume.array[0], array)
    np.testing.assert_allclose(volume.geometry.spacing, DICOM_GRID.spacing, atol=1e-4)
    np.testing.assert_allclose(volume.geometry.origin, DICOM_GRID.origin, atol=1e-4)
    np.testing.assert_allclose(volume.geometry.direction, DICOM_GRID.direction, atol=1e-4)
    assert file_states(tmp_path) == before


def test_folder_with_two_dicom_series_asks_to_choose(tmp_path):
    small = Geometry(size=(3, 3, 2))
    slices = np.zeros((2, 3, 3), np.int16)
    write_dicom_series(tmp_path / "mixed", slices, small, "1.2.3.4")
    write_dicom_series(tmp_path / "mixed", slices + 1, small, "1.2.3.5")

    with pytest.raises(UserInputError, match="2 DICOM series.*choose"):
        read_volume(tmp_path / "mixed")


def test_missing_path(tmp_path):
    with pytest.raises(UserInputError, match="nothere.nii.gz does not exist; check the path"):
        read_volume(tmp_path / "nothere.nii.gz")


def test_corrupt_file(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(np.random.default_rng(4).bytes(600))

    with pytest.raises(UserInputError, match="broken.nii.gz could not be read as an image"):
        read_volume(path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"not used")

    with pytest.raises(UserInputError, match=r"photo.png has an unsupported.*\.nii\.gz"):
        read_volume(path)
    with pytest.raises(UserInputError, match=r"unsupported.*\.nrrd"):
        write_volume(random_array(), OBLIQUE, tmp_path / "out.png")


def test_2d_image_is_rejected(tmp_path):
    sitk.WriteImage(sitk.Image([4, 5], sitk.sitkFloat32), str(tmp_path / "slice.mha"))

    with pytest.raises(UserInputError, match="slice.mha is a 2D image; a 3D volume is needed"):
        read_volume(tmp_path / "slice.mha")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "empty").mkdir()

    with pytest.raises(UserInputError, match="empty contains no DICOM series"):
        read_volume(tmp_path / "empty")


def test_check_finite_counts_bad_voxels():
    array = random_array()
    check_finite(array, "t1")
    array[0, 0, 0], array[1, 2, 3] = np.nan, np.inf

    with pytest.raises(UserInputError, match="input t1 contains 2 NaN/Inf voxels"):
        check_finite(array, "t1")


def test_read_label(tmp_path):
    labels = np.random.default_rng(5).integers(0, 4, size=SIZE)
    path = write_volume(labels, OBLIQUE, tmp_path / "seg.nii.gz", dtype=np.uint8)

    read = read_label(path, like=OBLIQUE)

    assert read.dtype == np.int32
    np.testing.assert_array_equal(read, labels)
    shifted = replace(OBLIQUE, origin=(0.0, 0.0, 0.0))
    with pytest.raises(UserInputError, match="seg.nii.gz is not on the image grid: origin"):
        read_label(path, like=shifted)


def test_read_label_rejects_probabilities(tmp_path):
    path = write_volume(np.full(SIZE, 0.25), OBLIQUE, tmp_path / "prob.nrrd")

    with pytest.raises(UserInputError, match="non-integer values such as 0.25"):
        read_label(path, like=OBLIQUE)
