"""An image too small for the network is refused before the forward pass, with the minimum and
the fixes; the rule is checked against what the real network accepts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_unet

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.io.volume import Geometry, Volume
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import segment
from TorchEsegetaLib.models.input_size import check_input_size, too_small_guard
from TorchEsegetaLib.models.loading import LoadedModel

STRIDE = 2  # the tiny UNet's strides [2]


def model(**card):
    return LoadedModel(tiny_unet(), ModelCard(size_divisible=STRIDE, **card), {}, None)


def volume(shape):
    array = np.random.default_rng(0).random((1, *shape)).astype(np.float32) * 100
    return Volume(array, Geometry(shape))


def network_accepts(shape):
    """Whether the tiny UNet itself runs on an input padded to a multiple of its stride."""
    padded = [n + (-n) % STRIDE for n in shape]
    try:
        with torch.no_grad():
            tiny_unet()(torch.rand(1, 1, *padded))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 2), (3, 2, 2), (2, 2, 3), (4, 4, 4)])
def test_the_check_refuses_exactly_the_sizes_the_network_cannot_take(shape):
    accepted = network_accepts(shape)
    calls = []
    net = model()
    net.network.register_forward_pre_hook(lambda *args: calls.append(1))
    if accepted:
        segment(net, volume(shape))
        assert calls
        return
    with pytest.raises(UserInputError, match="too small for this network") as error:
        segment(net, volume(shape))
    assert not calls  # refused before the forward pass
    message = str(error.value)
    assert "\n" not in message
    assert f"larger than {STRIDE} voxels along at least one axis" in message
    assert "roi_size" in message and "pad it" in message and "resample" in message


def test_the_size_on_the_model_grid_is_checked_and_both_are_named():
    shape = (6, 6, 6)  # 2x2x2 on the model grid at 3x the spacing
    with pytest.raises(
        UserInputError, match=r"2x2x2 voxels on the model's grid \(6x6x6 as given\)"
    ):
        segment(model(spacing=(3.0, 3.0, 3.0)), volume(shape))


def test_a_sliding_window_roi_pads_a_small_image_for_the_network():
    result = segment(model(roi_size=(4, 4, 4)), volume((2, 2, 2)))
    assert result.probabilities.shape == (2, 2, 2, 2)
    with pytest.raises(UserInputError, match="roi_size 2x2x2 is too small"):
        segment(model(roi_size=(2, 2, 2)), volume((8, 8, 8)))


def test_torchscript_and_running_statistics_are_understood():
    card = ModelCard(size_divisible=STRIDE)
    scripted = torch.jit.script(tiny_unet())
    with pytest.raises(UserInputError, match="too small"):
        check_input_size(scripted, card, (2, 2, 2))
    running = torch.nn.Sequential(torch.nn.InstanceNorm3d(2, track_running_stats=True))
    check_input_size(running, card, (2, 2, 2))  # eval mode uses the running statistics


def test_size_errors_of_other_layers_become_one_line_and_other_errors_pass():
    valid_conv = torch.nn.Conv3d(1, 1, 3)  # no padding: needs 3 voxels per axis
    with pytest.raises(UserInputError, match="Kernel size can't be greater") as error:
        with too_small_guard((2, 2, 2)):
            valid_conv(torch.zeros(1, 1, 2, 2, 2))
    assert "too small" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(RuntimeError, match="unrelated"):
        with too_small_guard((2, 2, 2)):
            raise RuntimeError("unrelated")


def test_a_crop_keeps_two_voxels_at_the_deepest_level():
    from TorchEsegetaLib.models.inference import SegmentationForward
    from TorchEsegetaLib.runs.cropping import plan_crop

    net = model()
    forward = SegmentationForward(net.network, net.card)
    region = np.zeros((16, 16, 16), dtype=bool)
    region[8, 8, 8] = True
    crop, _ = plan_crop(forward, region, margin=0)
    sizes = [s.stop - s.start + sum(p) for s, p in zip(crop.box, crop.padding)]
    assert np.prod([n // STRIDE for n in sizes]) == 2
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        forward.on_crop(crop.padding)(crop.take(x))  # runs
