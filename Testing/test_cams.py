"""The CAM family: each CAM equals its formula on a layer of known weights; Score-CAM and
Ablation-CAM equal loops written here (on a whole-volume network and on MONAI's sliding-window
inferer); every CAM pytorch-grad-cam computes in 3D equals ours, up to its [0, 1] scaling; the
default layers and `torchesegeta layers`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from catalog import make_network
from helpers import KnownLayerNet, centre_box_target, close, ours, tiny_input, tiny_unet
from monai.inferers import sliding_window_inference
from test_layer_windows import LAYER, ROI, box_target, monai_blend, sliding, upsample, volume

from TorchEsegetaLib.methods import REGISTRY
from TorchEsegetaLib.targets.bound import BoundTarget

CAMS = ["gradcam", "hirescam", "xgradcam", "layercam", "eigencam", "eigengradcam"]
SCORED = ["scorecam", "ablationcam"]


VALUES = np.array([-1.5, -0.5, 0.3, 1.0, 2.0, -2.0, 0.7, 1.2])


def known_case():
    x = torch.tensor(VALUES, dtype=torch.float32).reshape(1, 1, 2, 2, 2)
    target = BoundTarget(1, torch.ones((2, 2, 2), dtype=torch.bool), "logits", "softmax", "sum")
    return KnownLayerNet(), x, target


def first_component(values: np.ndarray) -> np.ndarray:
    """(voxels, K) -> projection on the first principal component (numpy's SVD), oriented so
    that its channel weights sum to a non-negative number."""
    centred = values - values.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    first = vt[0] if vt[0].sum() >= 0 else -vt[0]
    return centred @ first


def score_of(x: np.ndarray) -> float:
    a0, a1 = x + 0.2, 1 - x / 2
    return float((a0**2 / 2 + 3 * a1).sum())


def expected_map(name: str) -> np.ndarray:
    """The CAM ``name`` of :class:`~helpers.KnownLayerNet` on :data:`VALUES` by its formula,
    before the ReLU (dS/dA0 = A0 and dS/dA1 = 3 for a summed target)."""
    x = VALUES
    a0, a1 = x + 0.2, 1 - x / 2
    g0, g1 = a0, np.full_like(x, 3.0)
    activations, grads = np.stack([a0, a1]), np.stack([g0, g1])
    if name == "gradcam":
        return (grads.mean(axis=1, keepdims=True) * activations).sum(0)
    if name == "hirescam":
        return (grads * activations).sum(0)
    if name == "xgradcam":
        weights = (grads * activations).sum(1) / activations.sum(1)
        return (weights[:, None] * activations).sum(0)
    if name == "layercam":
        return (np.maximum(grads, 0) * activations).sum(0)
    if name == "eigencam":
        # rank one: A = (0.2, 1) + x (1, -0.5), so the component is (1, -0.5) / |.|
        assert np.allclose(first_component(activations.T), np.sqrt(1.25) * (x - x.mean()))
        return first_component(activations.T)
    if name == "eigengradcam":
        return first_component((grads * activations).T)
    if name == "scorecam":
        masks = [(a - a.min()) / (a.max() - a.min()) for a in activations]
        scores = np.array([score_of(x * m) for m in masks])
        weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        return (weights[:, None] * activations).sum(0)
    if name == "ablationcam":
        score = score_of(x)
        ablated = np.array([float((3 * a1).sum()), float((a0**2 / 2).sum())])
        weights = (score - ablated) / abs(score)
        return (weights[:, None] * activations).sum(0)
    raise ValueError(name)


@pytest.mark.parametrize("name", CAMS + SCORED)
def test_each_cam_equals_its_formula_on_a_layer_of_known_weights(name):
    net, x, target = known_case()
    expected = torch.tensor(expected_map(name), dtype=torch.float32)
    signed = ours(name, net, x, target, layer="layer", relu=False).flatten()
    assert torch.allclose(signed, expected, rtol=1e-5, atol=1e-5), (signed, expected)
    rectified = ours(name, net, x, target, layer="layer").flatten()
    assert torch.allclose(rectified, torch.relu(expected), rtol=1e-5, atol=1e-5)
    assert float(expected.max()) > 0
    assert REGISTRY[name](relu=False).signed and not REGISTRY[name]().signed


# Score-CAM and Ablation-CAM against loops written here.

HALF = "model.1"  # the tiny UNet's skip concatenation: half resolution, 12 channels


def layer_of(net, name):
    return dict(net.named_modules())[name]


def captured(net, name, x):
    """The layer's output on ``x`` (no graph)."""
    out = []
    handle = layer_of(net, name).register_forward_hook(lambda _m, _i, o: out.append(o.detach()))
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    return out[0]


def score_cam_masks(activation, size):
    masks = []
    for k in range(activation.shape[1]):
        up = F.interpolate(activation[:, k : k + 1], size=size, mode="trilinear")
        low, high = float(up.min()), float(up.max())
        masks.append((up - low) / (high - low) if high > low else torch.zeros_like(up))
    return masks


def ablated_output(net, name, x, channel):
    def zero(_module, _inputs, output):
        output = output.clone()
        output[:, channel] = 0
        return output

    handle = layer_of(net, name).register_forward_hook(zero)
    try:
        with torch.no_grad():
            return net(x)
    finally:
        handle.remove()


def loop_cam(name, activation, scores, score):
    """The layer map (1, 1, *s) from the K scores of the perturbed passes, before the ReLU."""
    scores = torch.tensor(scores, dtype=torch.float64)
    if name == "scorecam":
        weights = torch.softmax(scores, dim=0)
    else:
        weights = (score - scores) / abs(score)
    weights = weights.to(activation.dtype)[None, :, None, None, None]
    return (weights * activation).sum(1, keepdim=True)


@pytest.mark.parametrize("name", SCORED)
def test_score_weighted_cams_equal_a_loop_on_a_whole_volume_network(name):
    net, x = tiny_unet(), tiny_input(size=8)
    target = BoundTarget(1, centre_box_target(8).region, "logits", "softmax", "sum")
    activation = captured(net, HALF, x)
    with torch.no_grad():
        score = float(target(net(x)))
    scores = []
    for k, mask in enumerate(score_cam_masks(activation, x.shape[2:])):
        with torch.no_grad():
            out = net(x * mask) if name == "scorecam" else ablated_output(net, HALF, x, k)
        scores.append(float(target(out)))
    layer_map = loop_cam(name, activation, scores, score)
    expected = F.interpolate(layer_map, size=x.shape[2:], mode="trilinear")
    got = ours(name, net, x, target, layer=HALF, relu=False, max_batch=5)
    assert close(got, expected, rtol=1e-4)
    rectified = F.interpolate(torch.relu(layer_map), size=x.shape[2:], mode="trilinear")
    assert close(ours(name, net, x, target, layer=HALF), rectified, rtol=1e-4)


@pytest.mark.parametrize("output", ["logits", "probabilities"])
@pytest.mark.parametrize("name", SCORED)
def test_score_weighted_cams_equal_a_loop_over_monai_sliding_windows(name, output):
    # in float64: the weights are differences of nearby scores, float32 would round them
    forward, x = sliding("gaussian", sw_batch_size=1).double(), volume(8).double()
    target = box_target((1, 1, 1), (9, 8, 7))
    target = BoundTarget(1, target.region, output, "softmax", "mean")
    net = forward.network
    # the windows' inputs and layer outputs, as MONAI's inferer hands the windows out
    windows, activations = [], []

    def keep(window):
        windows.append(window)
        activations.append(captured(net, LAYER, window))
        return net(window)

    with torch.no_grad():
        base = sliding_window_inference(x, ROI, 1, keep, overlap=0.5, mode="gaussian")
        score = float(target(base))
    cams = []
    for w, activation in enumerate(activations):
        scores = []
        for k in range(activation.shape[1]):
            calls = iter(range(len(windows)))

            def perturbed(patch, k=k, w=w, activation=activation, calls=calls):
                if next(calls) != w:
                    return net(patch)
                if name == "scorecam":
                    return net(patch * score_cam_masks(activation, ROI)[k])
                return ablated_output(net, LAYER, patch, k)

            with torch.no_grad():
                out = sliding_window_inference(x, ROI, 1, perturbed, overlap=0.5, mode="gaussian")
            scores.append(float(target(out)))
        cams.append(upsample(loop_cam(name, activation, scores, score)))
    with torch.no_grad():
        expected = monai_blend(cams, x, forward)
    assert len(windows) == forward.windows_per_pass(x.shape[2:]) > 1
    got = ours(name, forward, x, target, layer=LAYER, relu=False, max_batch=5)
    assert close(got[:, :1], expected, rtol=1e-4)


# Agreement with pytorch-grad-cam, which scales each map to [0, 1] (after its ReLU) and
# resizes it with a cubic spline: compared on full-resolution layers (its resize is then the
# identity) with ours scaled the same way. Its ScoreCAM is 2D only (a bilinear 2D upsampling) and
# its AblationCAM fails on 5D activations (and ablates with a large negative value where the
# activations are signed): both are checked against the loops above instead.

GRAD_CAM_CLASSES = {
    "gradcam": "GradCAM",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "gradcam_pp": "GradCAMPlusPlus",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
}
#: (network, input channels, a full-resolution layer)
FULL_RESOLUTION = [("deconvnorm", 1, "decode.2"), ("unet", 2, "model.2.0.adn.A")]


def scaled(cam: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image``, applied as its forward applies it (twice)."""
    for _ in range(2):
        cam = cam - cam.min()
        cam = cam / (1e-7 + cam.max())
    return cam


def grad_cam_targets(size: int):
    """Region targets of every kind, summed (pytorch-grad-cam's eps in Grad-CAM++'s denominator,
    1e-6, would otherwise dominate the squared gradients of a mean over a region)."""
    box = centre_box_target(size).region
    voxel = torch.zeros((size,) * 3, dtype=torch.bool)
    voxel[3, 4, 5] = True
    mask = torch.zeros((size,) * 3, dtype=torch.bool)
    mask[1:7, 2:5, 3:8] = True
    return {
        "roi": BoundTarget(1, box, "logits", "softmax", "sum"),
        "mask": BoundTarget(1, mask, "logits", "softmax", "sum"),
        "voxel": BoundTarget(0, voxel, "logits", "softmax", "sum"),
    }


@pytest.mark.parametrize("name", sorted(GRAD_CAM_CLASSES))
def test_cams_equal_pytorch_grad_cam_in_3d(name):
    from extras import require_reference
    from grad_cam_reference import pytorch_grad_cam

    try:
        grad_cam = pytorch_grad_cam()
    except ImportError as error:
        require_reference("grad-cam", error)
    size = 8
    for kind, channels, layer in FULL_RESOLUTION:
        net = make_network(kind, channels) if kind != "unet" else tiny_unet(channels, norm="BATCH")
        x = tiny_input(channels, size)
        for target_kind, target in grad_cam_targets(size).items():
            with getattr(grad_cam, GRAD_CAM_CLASSES[name])(net, [layer_of(net, layer)]) as cam:
                theirs = cam(input_tensor=x, targets=[lambda out, t=target: t(out[None])[0]])[0]
            label = f"{name}/{kind}/{target_kind}"
            if name.startswith("eigen"):  # an SVD's sign is arbitrary: LAPACK's against ours
                signed = ours(name, net, x, target, layer=layer, relu=False)[0, 0].numpy()
                errors = [np.abs(scaled(np.maximum(s * signed, 0)) - theirs).max() for s in (1, -1)]
                assert min(errors) < 1e-4, label
                continue
            mine = ours(name, net, x, target, layer=layer)[0, 0].numpy()
            assert theirs.max() > 0, label
            # Grad-CAM++: pytorch-grad-cam adds 1e-6 to alpha's denominator 2 g^2 + sum(A) g^3
            tolerance = 1e-3 if name == "gradcam_pp" else 1e-4
            assert np.abs(scaled(mine) - theirs).max() < tolerance, label


# Layer defaults.


def test_methods_that_assume_relu_activations_default_to_a_non_negative_layer():
    from TorchEsegetaLib.methods import create_method

    net, x = tiny_unet(), tiny_input(size=8)
    nonnegative = {n for n, cls in REGISTRY.items() if getattr(cls, "nonnegative_layer", False)}
    assert nonnegative == {"gradcam_pp", "xgradcam", "layercam"}
    for name in CAMS + SCORED + ["gradcam_pp"]:
        chosen = create_method(name).layer_name(net, x)
        # the last wide feature map (the skip concatenation, normalised: signed), or the last
        # one without negative values (the inner block's ReLU)
        expected = "model.1.submodule.conv" if name in nonnegative else "model.1"
        assert chosen == expected, name


def test_torchesegeta_layers_marks_each_methods_default(capsys):
    from TorchEsegetaLib.cli import main

    assert main(["layers", "--model", "demo"]) == 0
    out = capsys.readouterr().out
    marked = [line for line in out.splitlines() if "default" in line]
    assert any("gradcam," in line and "scorecam" in line for line in marked), out
    assert any("gradcam_pp" in line and "layercam" in line for line in marked), out
