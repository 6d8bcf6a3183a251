"""The differentiable forward pass, resampling between grids, and segment()."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet
from monai.transforms import NormalizeIntensity, ScaleIntensityRange

from TorchEsegetaLib.errors import OutOfMemoryError, UserInputError
from TorchEsegetaLib.io.volume import Geometry, Volume
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.grids import resample_to_model_grid, restore_input_grid
from TorchEsegetaLib.models.inference import (
    SegmentationForward,
    labelmap_from_probabilities,
    resolve_device,
    segment,
)
from TorchEsegetaLib.models.loading import LoadedModel


def tiny_net(in_channels: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(3, in_channels, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()


def raw_input(shape=(1, 1, 16, 16, 16), seed: int = 0) -> torch.Tensor:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 300 - 100
    x[..., :4, :, :] = 0  # a zero background for the nonzero option
    return x


def volume(size=(16, 16, 16), spacing=(1.0, 1.0, 1.0), channels: int = 1) -> Volume:
    array = raw_input((channels, *size)).numpy()
    return Volume(array, Geometry(size=size, spacing=spacing))


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


@pytest.mark.parametrize("nonzero", [False, True])
@pytest.mark.parametrize("channel_wise", [False, True])
def test_zscore_equals_monai(nonzero, channel_wise):
    x = raw_input((2, 2, 8, 8, 8))
    card = ModelCard(
        in_channels=2,
        intensity={"kind": "zscore", "nonzero": nonzero, "channel_wise": channel_wise},
    )
    ours = SegmentationForward(Identity(), card).preprocess(x)
    monai = torch.stack(
        [NormalizeIntensity(nonzero=nonzero, channel_wise=channel_wise)(s.clone()) for s in x]
    )
    torch.testing.assert_close(ours, torch.as_tensor(monai), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "params",
    [
        {"a_min": -50, "a_max": 150, "b_min": 0.0, "b_max": 1.0, "clip": True},
        {"a_min": -50, "a_max": 150, "b_min": -1.0, "b_max": 1.0, "clip": False},
        {"a_min": 0, "a_max": 100, "b_min": None, "b_max": None, "clip": False},
    ],
)
def test_scale_range_equals_monai(params):
    x = raw_input((1, 1, 8, 8, 8))
    card = ModelCard(intensity={"kind": "scale_range", **params})
    ours = SegmentationForward(Identity(), card).preprocess(x)
    torch.testing.assert_close(ours, torch.as_tensor(ScaleIntensityRange(**params)(x[0]))[None])


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_sliding_window_equals_monai_and_passes_gradients(mode):
    net = tiny_net()
    card = ModelCard(roi_size=(8, 8, 8), overlap=0.5, sw_batch_size=3, sw_mode=mode)
    forward = SegmentationForward(net, card)
    x = raw_input((1, 1, 12, 16, 14)).requires_grad_(True)

    logits = forward(x)

    with torch.no_grad():
        expected = sliding_window_inference(x, (8, 8, 8), 3, net, overlap=0.5, mode=mode)
    torch.testing.assert_close(logits.detach(), torch.as_tensor(expected))
    logits[:, 1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gradients_flow_through_zscore():
    forward = SegmentationForward(
        tiny_net(), ModelCard(intensity={"kind": "zscore", "nonzero": True})
    )
    x = raw_input().requires_grad_(True)
    forward(x)[:, 1].mean().backward()
    assert x.grad.abs().sum() > 0


def test_padding_to_size_divisible_crops_back():
    net = tiny_net()
    x = raw_input((1, 1, 15, 14, 13))
    forward = SegmentationForward(net, ModelCard(size_divisible=4))
    logits = forward(x)
    assert logits.shape == (1, 2, 15, 14, 13)
    padded = torch.nn.functional.pad(x, (1, 2, 1, 1, 0, 1))  # symmetric, as DivisiblePad
    torch.testing.assert_close(logits, net(padded)[:, :, 0:15, 1:15, 1:14])


def test_resampling_roundtrip_is_exact_for_linear_ramps():
    ramp = np.fromfunction(lambda i, j, k: 2 * i - j + 0.5 * k, (16, 16, 9), dtype=np.float32)
    vol = Volume(ramp, Geometry(size=ramp.shape, spacing=(1.0, 1.0, 2.0)))
    card = ModelCard(spacing=(2.0, 0.5, 2.0))

    x, info = resample_to_model_grid(vol, card)

    assert x.shape == (1, 1, 8, 32, 9) and x.dtype == torch.float32
    np.testing.assert_allclose(info.model_spacing, (15 / 7, 15 / 31, 2.0))  # corners kept
    torch.testing.assert_close(restore_input_grid(x, info)[0, 0].numpy(), ramp, atol=1e-4, rtol=0)
    labels = torch.arange(8 * 32 * 9).reshape(1, 1, 8, 32, 9)
    restored = restore_input_grid(labels, info, mode="nearest")
    assert restored.shape == (1, 1, 16, 16, 9) and restored.dtype == labels.dtype
    assert restored[0, 0, -1, -1, -1] == labels[0, 0, -1, -1, -1]


def test_resampling_identity_when_spacing_matches():
    vol = volume(spacing=(0.5, 0.5, 1.0))
    for card in (ModelCard(), ModelCard(spacing=(0.5, 0.5, 1.0))):
        x, info = resample_to_model_grid(vol, card)
        assert info.identity and np.array_equal(x[0].numpy(), vol.array)


def test_segment_on_another_spacing_returns_input_grid_results():
    card = ModelCard(spacing=(2.0, 2.0, 2.0), intensity={"kind": "zscore"}, roi_size=(8, 8, 8))
    model = LoadedModel(tiny_net(), card, {}, None)
    vol = volume(size=(16, 18, 20))

    result = segment(model, vol)

    assert result.logits.shape == (1, 2, 8, 9, 10)
    assert (
        result.probabilities.shape == (2, 16, 18, 20) and result.probabilities.dtype == np.float32
    )
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert result.labelmap.shape == (16, 18, 20) and result.labelmap.dtype == np.uint8
    assert np.array_equal(result.labelmap, result.probabilities.argmax(axis=0))
    assert next(model.network.parameters()).device.type == "cpu"


def test_segment_rejects_bad_inputs():
    model = LoadedModel(tiny_net(), ModelCard(), {}, None)
    with pytest.raises(
        UserInputError, match="expects 1 input channel.*got 2 image.*one --image per channel"
    ):
        segment(model, volume(channels=2))
    bad = volume()
    bad.array[0, 3, 3, 3] = np.nan
    with pytest.raises(UserInputError, match="NaN"):
        segment(model, bad)


def test_out_of_memory_becomes_a_clear_error():
    class Hungry(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")

    with pytest.raises(OutOfMemoryError, match="roi_size or sw_batch_size"):
        segment(LoadedModel(Hungry(), ModelCard(), {}, None), volume())


def test_sigmoid_labelmap_takes_the_highest_label_above_half():
    p = np.array(
        [[0.9, 0.2, 0.7], [0.6, 0.1, 0.4], [0.1, 0.3, 0.8]], dtype=np.float32
    )  # (K=3, 3 voxels)
    # overlapping classes: label n + 1 is channel n, 0 where no channel is above 0.5
    assert labelmap_from_probabilities(p, "sigmoid").tolist() == [2, 0, 3]
    assert labelmap_from_probabilities(p, "softmax").tolist() == [0, 2, 2]
    names = ModelCard(out_channels=3, activation="sigmoid", class_names=["a", "b", "c"]).label_names
    assert names == ["background", "a", "b", "c"]
    assert ModelCard(out_channels=3, class_names=["bg", "b", "c"]).label_names == ["bg", "b", "c"]


def test_a_one_channel_sigmoid_model_labels_its_foreground_one():
    """A binary model with one output channel (sigmoid): foreground where p > 0.5 is label 1,
    as MONAI's Activations(sigmoid) + AsDiscrete(threshold=0.5) gives, never an empty map."""

    class Ramp(torch.nn.Module):
        def forward(self, x):
            return 10 * x - 5

    card = ModelCard(in_channels=1, out_channels=1, activation="sigmoid", class_names=["vessel"])
    image = volume()
    result = segment(LoadedModel(Ramp(), card, {}, None), image)
    foreground = result.probabilities[0] > 0.5
    assert 0 < foreground.sum() < foreground.size
    np.testing.assert_array_equal(result.labelmap, foreground.astype(np.uint8))
    np.testing.assert_array_equal(result.class_mask(card, 0), foreground)


def test_resolve_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(UserInputError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(UserInputError, match="CUDA.*--device cpu"):
                resolve_device(name)
    else:
        with pytest.raises(UserInputError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_reduced_precision_autocast_stays_close_to_fp32():
    import pytest
    import torch
    from helpers import tiny_unet

    from TorchEsegetaLib.errors import UserInputError
    from TorchEsegetaLib.models.card import ModelCard
    from TorchEsegetaLib.models.inference import SegmentationForward

    net, card = tiny_unet(), ModelCard(size_divisible=2)
    x = torch.rand((1, 1, 16, 16, 16))
    with torch.no_grad():
        full = SegmentationForward(net, card)(x)
        half = SegmentationForward(net, card, precision="bfloat16")(x)
    assert half.dtype == torch.float32
    assert (half - full).abs().max() < 0.05 * full.abs().max()
    assert not torch.equal(half, full)
    with pytest.raises(UserInputError, match="precision"):
        SegmentationForward(net, card, precision="float8")


def test_a_non_finite_map_in_reduced_precision_is_recomputed_in_float32():
    import numpy as np
    import torch

    import TorchEsegetaLib as te
    from TorchEsegetaLib.models.card import ModelCard
    from TorchEsegetaLib.models.loading import LoadedModel

    class Overflowing(torch.nn.Module):
        """Logits and gradients beyond float16's range (65504) once the convolution runs in float16."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x) * 1e9

    model = LoadedModel(Overflowing().eval(), ModelCard(), {"kind": "test"}, None)
    image = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32) + 1
    common = dict(model=model, target="roi:3,3,3:8,8,8", methods=["saliency"], device="cpu")
    reference = te.explain(image, **common)
    reduced = te.explain(image, precision="float16", **common)
    assert any("recomputed in float32" in note for note in reduced.methods[0].notes)
    np.testing.assert_allclose(reduced.maps["saliency"], reference.maps["saliency"], rtol=1e-6)
