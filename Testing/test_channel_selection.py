"""4D and vector images: a channel count that does not fit the model says where the channels came
from, and ``FILE:frame=N`` / ``FILE:channel=N`` reads one of them."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.images import read_channels, read_volume, to_sitk
from TorchEsegetaLib.io.volume import Geometry
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import check_input

GEOMETRY = Geometry((6, 5, 4), (0.5, 0.7, 1.2), (3.0, -2.0, 1.0))


def frames(count):
    return np.random.default_rng(count).random((count, *GEOMETRY.size)).astype(np.float32)


def write_4d(path, data):
    image = sitk.JoinSeries([to_sitk(frame, GEOMETRY) for frame in data])
    sitk.WriteImage(image, str(path))
    return path


def test_a_4d_image_that_does_not_fit_the_model_is_named_with_the_way_to_pick_a_frame(tmp_path):
    path = write_4d(tmp_path / "series.nii.gz", frames(2))
    volume = read_volume(path)
    assert volume.channels == 2
    with pytest.raises(UserInputError) as error:
        check_input(volume, ModelCard(in_channels=1))
    message = str(error.value)
    assert f"{path} is a 4D image with 2 frames" in message
    assert f"--image {path}:frame=N (N from 0 to 1)" in message and "\n" not in message


def test_two_plain_images_for_a_one_channel_model_keep_the_plain_message(tmp_path):
    path = tmp_path / "a.nii.gz"
    sitk.WriteImage(to_sitk(frames(1)[0], GEOMETRY), str(path))
    with pytest.raises(UserInputError, match="got 2 image\\(s\\); pass one --image per channel"):
        check_input(read_channels([path, path]), ModelCard(in_channels=1))


def test_a_frame_is_read_on_the_grid_of_the_4d_image(tmp_path):
    data = frames(3)
    path = write_4d(tmp_path / "series.nii.gz", data)
    whole = read_volume(path)
    for index in range(3):
        one = read_volume(f"{path}:frame={index}")
        np.testing.assert_array_equal(one.array[0], data[index])
        assert one.geometry == whole.geometry == read_volume(f"{path}:channel={index}").geometry
    with pytest.raises(UserInputError, match="has 3 frames, so there is no frame 3; pick a frame"):
        read_volume(f"{path}:frame=3")


def test_a_long_series_is_refused_whole_but_one_of_its_frames_reads(tmp_path):
    data = frames(20)
    path = write_4d(tmp_path / "long.nii.gz", data)
    with pytest.raises(UserInputError, match=f"pick one frame with {path}:frame=N"):
        read_volume(path)
    np.testing.assert_array_equal(read_volume(f"{path}:frame=19").array[0], data[19])


def test_a_component_of_a_vector_image_is_picked_by_channel(tmp_path):
    data = frames(3)
    path = tmp_path / "vector.mha"
    sitk.WriteImage(to_sitk(data, GEOMETRY), str(path))
    with pytest.raises(UserInputError, match="a vector image with 3 components per voxel"):
        check_input(read_volume(path), ModelCard(in_channels=2))
    np.testing.assert_array_equal(read_volume(f"{path}:channel=2").array[0], data[2])
    two = read_channels([f"{path}:channel=0", f"{path}:channel=2"])
    np.testing.assert_array_equal(two.array, data[[0, 2]])
    check_input(two, ModelCard(in_channels=2))


def test_picking_from_a_single_channel_image_and_odd_file_names(tmp_path):
    plain = tmp_path / "plain.nii.gz"
    sitk.WriteImage(to_sitk(frames(1)[0], GEOMETRY), str(plain))
    with pytest.raises(UserInputError, match="has a single channel, so there is no channel 0"):
        read_volume(f"{plain}:frame=0")
    odd = tmp_path / "odd.nii.gz:frame=0"  # a file really named so is read as named
    sitk.WriteImage(to_sitk(frames(1)[0], GEOMETRY), str(tmp_path / "tmp.nii.gz"))
    (tmp_path / "tmp.nii.gz").rename(odd)
    with pytest.raises(UserInputError, match="unsupported file type"):
        read_volume(odd)  # found as named (its suffix is not an image's)
    with pytest.raises(UserInputError, match="does not exist"):
        read_volume(f"{tmp_path / 'missing.nii.gz'}:frame=0")
