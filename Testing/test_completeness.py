"""Incomplete image files (a cut download) are refused before ITK zero-fills them, in every format
with a header: NIfTI, NRRD (attached and detached data) and MetaImage (.mha and .mhd)."""

from __future__ import annotations

import gzip
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io import completeness
from TorchEsegetaLib.io.completeness import check_complete, voxel_data
from TorchEsegetaLib.io.images import read_volume, to_sitk, write_volume
from TorchEsegetaLib.io.volume import Geometry

GEOMETRY = Geometry((12, 10, 9), (0.8, 0.9, 1.1))
# (file name, compressed, the file holding the voxel data when it is detached)
FORMATS = [
    ("image.nii", False, None),
    ("image.nii.gz", True, None),
    ("image.nrrd", False, None),
    ("image.nrrd", True, None),
    ("image.mha", False, None),
    ("image.mha", True, None),
    ("image.nhdr", False, "image.raw"),
    ("image.nhdr", True, "image.raw.gz"),
    ("image.mhd", False, "image.raw"),
    ("image.mhd", True, "image.zraw"),
]
IDS = [f"{name}{'-compressed' if compressed else ''}" for name, compressed, _ in FORMATS]


def noisy_image():
    # noise, so that compressed streams are long and a cut lands inside the voxel data
    return np.random.default_rng(0).random(GEOMETRY.size).astype(np.float32)


def write(path, compressed):
    sitk.WriteImage(to_sitk(noisy_image(), GEOMETRY), str(path), useCompression=compressed)
    return path


def cut(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("name, compressed, detached", FORMATS, ids=IDS)
def test_a_complete_file_reads_and_a_cut_one_is_refused_in_one_line(
    tmp_path, name, compressed, detached
):
    path = write(tmp_path / name, compressed)
    np.testing.assert_array_equal(read_volume(path).array[0], noisy_image())
    data_file = tmp_path / detached if detached else path
    cut(data_file)
    with pytest.raises(UserInputError, match="is incomplete") as error:
        read_volume(path)
    message = str(error.value)
    assert "\n" not in message and "download or copy it again" in message
    assert str(data_file) in message


@pytest.mark.parametrize("name", ["image.nii", "image.nrrd", "image.mha"])
def test_uncompressed_data_is_checked_by_the_file_size_alone(tmp_path, name):
    path = write(tmp_path / name, compressed=False)
    data = voxel_data(path)
    assert data.encoding == "raw" and data.size == noisy_image().nbytes
    assert data.file.stat().st_size - data.offset == data.size
    cut(path, keep=(path.stat().st_size - 1) / path.stat().st_size)  # one byte short
    with pytest.raises(UserInputError, match=f"{data.size} bytes of voxel data but only"):
        check_complete(path)


def test_a_complete_gzip_is_accepted_from_its_trailer_without_inflating(tmp_path, monkeypatch):
    path = write_volume(noisy_image(), GEOMETRY, tmp_path / "image.nii.gz")
    monkeypatch.setattr(completeness, "_inflate_up_to", lambda data: pytest.fail("inflated"))
    check_complete(path)


def test_concatenated_gzip_members_are_inflated_and_counted(tmp_path):
    plain = write_volume(noisy_image(), GEOMETRY, tmp_path / "plain.nii").read_bytes()
    half = len(plain) // 2
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(plain[:half]) + gzip.compress(plain[half:]))
    assert not completeness._gzip_trailer_matches(voxel_data(path))  # the last member's ISIZE
    check_complete(path)
    cut(path, keep=0.9)  # inside the second member
    with pytest.raises(UserInputError, match="compressed voxel data ends after"):
        check_complete(path)


def test_metaimage_without_a_recorded_compressed_size_is_inflated(tmp_path):
    path = write(tmp_path / "image.mhd", compressed=True)
    path.write_bytes(re.sub(rb"CompressedDataSize = \d+\n", b"", path.read_bytes()))
    assert voxel_data(path).compressed_size is None
    np.testing.assert_array_equal(read_volume(path).array[0], noisy_image())
    cut(tmp_path / "image.zraw", keep=0.7)
    with pytest.raises(UserInputError, match="compressed voxel data ends after"):
        read_volume(path)


@pytest.mark.parametrize("version, endian", [(1, ">"), (2, "<")], ids=["nifti1-big", "nifti2"])
def test_nifti_headers_of_either_byte_order_and_version_are_understood(tmp_path, version, endian):
    image_class = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    header = (nib.Nifti1Header if version == 1 else nib.Nifti2Header)(endianness=endian)
    path = tmp_path / "image.nii"
    nib.save(image_class(noisy_image(), np.eye(4), header), path)
    data = voxel_data(path)
    assert data.size == noisy_image().nbytes and data.offset == (352 if version == 1 else 544)
    check_complete(path)
    cut(path, keep=0.8)
    with pytest.raises(UserInputError, match="is incomplete"):
        check_complete(path)


def test_a_gzip_cut_inside_the_nifti_header_is_incomplete(tmp_path):
    path = write_volume(noisy_image(), GEOMETRY, tmp_path / "image.nii.gz")
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(UserInputError, match="ends inside the NIfTI header"):
        read_volume(path)


def test_a_missing_detached_data_file_is_named(tmp_path):
    path = write(tmp_path / "image.nhdr", compressed=True)
    shutil.move(tmp_path / "image.raw.gz", tmp_path / "elsewhere.raw.gz")
    with pytest.raises(UserInputError, match="image.raw.gz, which does not exist"):
        read_volume(path)


def test_headers_it_does_not_understand_are_left_to_itk(tmp_path):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a gzip file at all")
    check_complete(junk)  # ITK reports it
    with pytest.raises(UserInputError, match="could not be read as an image"):
        read_volume(junk)
