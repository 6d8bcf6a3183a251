"""Layer methods on sliding-window models whose windows are smaller than the image: one layer
map per window, blended with the inferer's weights. Cross-checked against MONAI's own
sliding-window inferer (which blends any per-window predictor) and against autograd through it;
local targets (only the windows that touch the target run) give the same map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import centre_box_target, close, ours, tiny_input, tiny_unet
from monai.inferers import sliding_window_inference

from TorchEsegetaLib.methods import REGISTRY, default_layer, trace_layers
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import SegmentationForward

SHAPE = (12, 10, 8)
ROI = (8, 8, 8)
LAYER = "model.1"  # the tiny UNet's skip concatenation, at half the window's size
LAYER_METHODS = sorted(name for name, cls in REGISTRY.items() if cls.family == "layer")
FAST = {"layer_conductance": 4, "internal_influence": 4, "layer_gradient_shap": 3}


def sliding(mode: str = "constant", overlap: float = 0.5, sw_batch_size: int = 2):
    card = ModelCard(
        in_channels=1,
        out_channels=2,
        roi_size=ROI,
        overlap=overlap,
        sw_mode=mode,
        sw_batch_size=sw_batch_size,
    )
    return SegmentationForward(tiny_unet(), card).eval()


def volume(seed: int = 0) -> torch.Tensor:
    x = tiny_input(size=max(SHAPE), seed=seed)
    return x[:, :, : SHAPE[0], : SHAPE[1], : SHAPE[2]].contiguous()


def box_target(low=(2, 2, 1), high=(5, 5, 4)):
    region = torch.zeros(SHAPE, dtype=torch.bool)
    region[tuple(slice(a, b) for a, b in zip(low, high))] = True
    target = centre_box_target(8)
    return type(target)(1, region, "logits", "softmax", "mean")


class Captured:
    """The layer's output of every network call, in order, attached to the graph."""

    def __init__(self, network: torch.nn.Module, layer: str) -> None:
        self.outputs: list[torch.Tensor] = []
        module = dict(network.named_modules())[layer]
        self.handle = module.register_forward_hook(lambda _m, _i, o: self.outputs.append(o))

    def close(self) -> None:
        self.handle.remove()


def monai_blend(per_call_maps: list[torch.Tensor], x: torch.Tensor, forward) -> torch.Tensor:
    """MONAI's inferer blending precomputed window maps, handed out in its call order."""
    maps = iter(per_call_maps)
    card = forward.card
    return sliding_window_inference(
        x,
        card.roi_size,
        card.sw_batch_size,
        lambda _window: next(maps),
        overlap=card.overlap,
        mode=card.sw_mode,
    )


def upsample(layer_map: torch.Tensor) -> torch.Tensor:
    return F.interpolate(layer_map, size=ROI, mode="trilinear", align_corners=False)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_layer_activation_is_the_inferer_blend_of_the_window_maps(mode):
    forward = sliding(mode)
    x = volume()
    got = ours("layer_activation", forward, x, box_target(), layer=LAYER)
    captured = Captured(forward.network, LAYER)
    try:
        with torch.no_grad():
            reference = sliding_window_inference(
                x,
                ROI,
                2,
                lambda w: upsample(
                    (forward.network(w), captured.outputs[-1])[1].sum(1, keepdim=True)
                ),
                overlap=0.5,
                mode=mode,
            )
    finally:
        captured.close()
    assert forward.windows_per_pass(SHAPE) > 1
    assert close(got[:, :1], reference)


SPACE = (2, 3, 4)


def gradcam_pp_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    denominator = 2 * g**2 + a.sum(dim=SPACE, keepdim=True) * g**3
    alpha = g**2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return (alpha * torch.relu(g)).sum(dim=SPACE, keepdim=True)


#: each gradient CAM's map of one window from its activations a and gradients g, written out
WINDOW_CAMS = {
    "gradcam": lambda a, g: g.mean(dim=SPACE, keepdim=True) * a,
    "hirescam": lambda a, g: g * a,
    "xgradcam": lambda a, g: (
        (g * a).sum(dim=SPACE, keepdim=True) / a.sum(dim=SPACE, keepdim=True) * a
    ),
    "layercam": lambda a, g: torch.relu(g) * a,
    "gradcam_pp": lambda a, g: gradcam_pp_weights(a, g) * a,
}


@pytest.mark.parametrize("name", sorted(WINDOW_CAMS))
def test_gradient_cams_weight_each_window_by_the_gradient_of_the_whole_blended_score(name):
    forward = sliding("gaussian")
    # a corner target: one of the four windows touches it
    x, target = volume(1), box_target((0, 0, 0), (2, 2, 2))
    # Grad-CAM++'s weights are non-negative: on this signed layer its ReLU'd map is empty
    relu = name != "gradcam_pp"
    got = ours(name, forward, x, target, layer=LAYER, relu=relu)
    # Reference: autograd through MONAI's inferer, the CAM per captured window map, blended by
    # MONAI's inferer again.
    captured = Captured(forward.network, LAYER)
    try:
        with torch.enable_grad():
            logits = sliding_window_inference(
                x, ROI, 2, forward.network, overlap=0.5, mode="gaussian"
            )
            grads = torch.autograd.grad(target(logits).sum(), captured.outputs)
    finally:
        captured.close()
    assert len(captured.outputs) == 2  # four windows, two per call
    cams = [
        upsample(
            (torch.relu if relu else torch.positive)(WINDOW_CAMS[name](a, g).sum(1, keepdim=True))
        )
        for a, g in zip(captured.outputs, grads)
    ]
    with torch.no_grad():
        reference = monai_blend([c.detach() for c in cams], x, forward)
    assert close(got[:, :1], reference)
    # Windows far from the target have no gradient: their share is zero, and so is the map
    # where only they reach.
    assert float(got.abs().max()) > 0
    assert float(got[0, 0, -1, -1, -1].abs()) < float(got.abs().max()) * 1e-6


@pytest.mark.parametrize("name", ["gradcam", "layer_gradient_x_activation", "internal_influence"])
def test_local_target_runs_only_its_windows_with_the_same_map(name):
    target = box_target((0, 0, 0), (3, 3, 3))
    full, local = sliding(), sliding()
    local.restrict_to(target.region.numpy())
    assert local.windows_per_pass(SHAPE) < full.windows_per_pass(SHAPE)
    params = {"layer": LAYER}
    if name in FAST:
        params["n_steps"] = FAST[name]
    x = volume(2)
    assert close(ours(name, local, x, target, **params), ours(name, full, x, target, **params))


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_every_layer_method_runs_per_window(name):
    forward, x, target = sliding(), volume(3), box_target()
    params = {}
    if name in ("layer_conductance", "internal_influence"):
        params["n_steps"] = FAST[name]
    if name == "layer_gradient_shap":
        params["n_samples"] = FAST[name]
    got = ours(name, forward, x, target, **params)
    assert got.shape == x.shape
    assert torch.isfinite(got).all() and float(got.abs().max()) > 0


def test_layer_deeplift_over_windows_sums_to_the_score_change():
    from TorchEsegetaLib.engine.context import Context
    from TorchEsegetaLib.methods import ScoreModel, create_method

    forward, x, target = sliding("gaussian"), volume(7), box_target()
    method, context = create_method("layer_deeplift", {"layer": LAYER}), Context()
    probe = method.probe(forward, x, target)
    layer_map = method.layer_map(probe, x, context)
    assert probe.windows == forward.windows_per_pass(SHAPE) > 1
    score = ScoreModel(forward, target)
    with torch.no_grad():
        change = float(score(x) - score(torch.zeros_like(x)))
    assert abs(float(layer_map.sum()) - change) <= 1e-3 * abs(change) + 1e-6
    assert not context.notes


def test_conductance_per_window_sums_like_the_whole_model_when_one_window_covers_all():
    # With one window covering the image, the per-window path is the whole-model path.
    card = ModelCard(in_channels=1, out_channels=2, roi_size=(12, 10, 8), overlap=0.25)
    one = SegmentationForward(tiny_unet(), card).eval()
    whole = SegmentationForward(tiny_unet(), ModelCard(in_channels=1, out_channels=2)).eval()
    x, target = volume(4), box_target()
    assert one.windows_per_pass(SHAPE) == 1
    a = ours("layer_conductance", one, x, target, layer=LAYER, n_steps=4)
    b = ours("layer_conductance", whole, x, target, layer=LAYER, n_steps=4)
    assert close(a, b)


def test_layers_of_a_sliding_model_are_traced_once_and_have_a_default():
    forward, x = sliding(), volume()
    traced = trace_layers(forward, x)
    names = [layer["name"] for layer in traced]
    assert len(names) == len(set(names)) and LAYER in names
    assert [layer["shape"] for layer in traced if layer["name"] == LAYER] == [[4, 4, 4]]
    assert default_layer(forward, x, out_channels=2) in names


STREAMING = sorted(name for name in LAYER_METHODS if REGISTRY[name].streams)


@pytest.mark.parametrize("output", ["logits", "probabilities"])
@pytest.mark.parametrize("name", STREAMING)
def test_window_batches_one_at_a_time_give_the_map_of_the_whole_pass(name, output, monkeypatch):
    # The methods that need only the layer's output and gradient run one window batch at a
    # time (memory of one batch); the whole pass in one graph is the reference.
    forward, x = sliding("gaussian"), volume(5)
    target = box_target()
    target = type(target)(1, target.region, output, "softmax", "mean")
    from TorchEsegetaLib.methods.probe import LayerProbe

    in_one_graph, whole_pass = [], LayerProbe.run
    monkeypatch.setattr(LayerProbe, "run", lambda *a: in_one_graph.append(1) or whole_pass(*a))
    streamed = ours(name, forward, x, target, layer=LAYER)
    assert not in_one_graph
    monkeypatch.setattr(REGISTRY[name], "streams", False)
    whole = ours(name, forward, x, target, layer=LAYER)
    assert in_one_graph
    assert close(streamed, whole, rtol=1e-5, atol=1e-6)
    assert float(streamed.abs().max()) > 0


def test_streaming_methods_are_those_without_a_path_or_baseline():
    assert STREAMING == [
        "eigencam",
        "eigengradcam",
        "gradcam",
        "gradcam_pp",
        "guided_gradcam",
        "hirescam",
        "layer_activation",
        "layer_gradient_x_activation",
        "layercam",
        "xgradcam",
    ]


PATH_METHODS = ["internal_influence", "layer_conductance", "layer_gradient_shap"]


@pytest.mark.parametrize("name", PATH_METHODS)
def test_path_methods_stream_one_example_of_windows_at_a_time_with_the_same_map(name, monkeypatch):
    from TorchEsegetaLib.methods.layer import LayerProbe

    forward, x = sliding("gaussian"), volume(6)
    target = box_target()
    target = type(target)(1, target.region, "probabilities", "softmax", "mean")
    key = "n_samples" if name == "layer_gradient_shap" else "n_steps"
    params = {"layer": LAYER, key: 3}
    if name == "layer_gradient_shap":
        params["stdevs"] = 0.05
    calls, by_window = [], forward.layer_windows
    forward.layer_windows = lambda *args: calls.append(1) or by_window(*args)
    streamed = ours(name, forward, x, target, **params)
    assert calls
    monkeypatch.setattr(LayerProbe, "points", LayerProbe.points_in_one_graph)
    whole = ours(name, forward, x, target, **params)
    assert close(streamed, whole, rtol=1e-5, atol=1e-6)
    assert float(streamed.abs().max()) > 0
