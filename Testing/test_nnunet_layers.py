"""Layer methods on nnU-Net v2 folders, against references written here from nnU-Net's own parts.

The model folder (conftest's ``nnunet_model_folder``) has two folds with mirroring along three axes; the
image is anisotropic, obliquely oriented, with a zero slab nnU-Net crops away. The reference
Grad-CAM takes the layer's output of every network call of the pipeline's own forward and the
gradient of the score through the whole pipeline in one graph (autograd), computes each call's
map, then brings the maps back by hand: upsampled to the patch, each mirror combination flipped
back and averaged, weighted by nnU-Net's Gaussian (``compute_gaussian``), divided by the weights
of all windows, averaged over folds, resampled by nnU-Net's own resampling function of the plans,
the crop undone with zeros, ``transpose_backward``, SimpleITK's axis order undone.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from extras import require_extra
from helpers import close

require_extra("nnunet")

from TorchEsegetaLib.targets.spec import TargetSpec  # noqa: E402


def prepared(folder, volume, target="class:vessel", explain_fold=None, folds=(0, 1)):
    from TorchEsegetaLib.models.loading import load_model
    from TorchEsegetaLib.runs.case import prepare_case

    model = load_model(
        {"kind": "nnunet", "path": str(folder), "folds": list(folds), "explain_fold": explain_fold}
    )
    spec = TargetSpec.parse(target) if isinstance(target, str) else target
    return prepare_case(volume, model, spec, torch.device("cpu"))


def flips_of(mirror_axes):
    """nnU-Net's mirror combinations (tensor dimensions), in its order."""
    axes = [a + 2 for a in mirror_axes or ()]
    return [()] + [c for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n)]


def per_call_layer(pipeline, layer_name):
    """Hooks keeping the layer's output of every call of every fold network, in call order
    (the network goes on with a copy: nnU-Net's in-place LeakyReLUs would change it)."""
    outputs = []
    handles = [
        dict(network.named_modules())[layer_name].register_forward_hook(
            lambda _m, _i, o: outputs.append(o) or o.clone()
        )
        for network in pipeline.folds
    ]
    return outputs, handles


def reference_map(case, layer_name, channel_map):
    """The layer map of the nnU-Net pipeline by hand (see the module docstring);
    ``channel_map(activation, grads)`` is one call's per-channel map (rows, K, *s)."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    from nnunetv2.preprocessing.resampling.utils import recursive_find_resampling_fn_by_name

    pipeline = case.forward.network
    state = pipeline.case
    plan = pipeline.plan
    outputs, handles = per_call_layer(pipeline, layer_name)
    try:
        with torch.enable_grad():
            score = case.bound(case.forward(case.x.detach().requires_grad_(True)))
            grads = torch.autograd.grad(score.sum(), outputs)
    finally:
        for handle in handles:
            handle.remove()
    if pipeline.explain_fold is None:
        folds, flips = list(range(len(pipeline.folds))), flips_of(pipeline.mirror_axes)
    else:
        folds, flips = [pipeline.explain_fold], [()]
    assert len(outputs) == len(folds) * len(state.windows)  # one call per window and fold
    patch = tuple(plan.patch_size)
    gaussian = compute_gaussian(
        patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=torch.device("cpu")
    ).double()
    padded_shape = [n + a + b for n, (a, b) in zip(state.to_model.new_shape, state.padding)]
    total = torch.zeros(padded_shape, dtype=torch.float64)
    weights = torch.zeros(padded_shape, dtype=torch.float64)
    calls = iter(zip(outputs, grads))
    for _fold in folds:
        for window in state.windows:
            activation, grad = next(calls)
            maps = channel_map(activation.detach().double(), grad.double())
            up = F.interpolate(maps, size=patch, mode="trilinear", align_corners=False)
            assert up.shape[0] == len(flips)
            back = [
                torch.flip(up[i : i + 1], f) if f else up[i : i + 1] for i, f in enumerate(flips)
            ]
            total[window] += torch.cat(back).mean(0)[0] * gaussian / len(folds)
            weights[window] += gaussian / len(folds)
    inner = tuple(slice(a, n - b) for (a, b), n in zip(state.padding, padded_shape))
    blended = (total / weights)[inner].numpy()[None]
    name, kwargs = plan.resampling_probabilities
    resample = recursive_find_resampling_fn_by_name(name)
    restored = resample(blended, state.to_input.new_shape, state.target, state.spacing, **kwargs)
    full = np.zeros((1, *state.shape))
    full[(slice(None), *state.crop)] = restored
    full = full.transpose([0, *[t + 1 for t in plan.transpose_backward]])
    return torch.from_numpy(full.transpose(0, 3, 2, 1)[None].astype(np.float32))


def grad_cam(activation, grads):
    weights = grads.mean(dim=(2, 3, 4), keepdim=True)
    return torch.relu((weights * activation).sum(1, keepdim=True))


def hires_cam(activation, grads):
    return torch.relu((grads * activation).sum(1, keepdim=True))


def ours(name, case, **params):
    from TorchEsegetaLib.engine.context import Context
    from TorchEsegetaLib.methods import create_method

    method = create_method(name, params)
    return method.attribute(case.forward, case.x, case.bound, Context(max_batch=4))


@pytest.mark.parametrize(
    ("method", "channel_map", "target", "explain_fold"),
    [
        ("gradcam", grad_cam, "class:vessel", None),  # two folds, eight mirror combinations
        ("hirescam", hires_cam, "roi:2,3,4:9,11,14", None),
        ("gradcam", grad_cam, "voxel:6,7,9", 1),  # --explain-fold 1: fold 1 alone, no mirroring
    ],
)
def test_a_layer_map_is_brought_back_as_nnunet_brings_back_its_predictions(
    nnunet_model_folder, nnunet_volume, method, channel_map, target, explain_fold
):
    case = prepared(nnunet_model_folder, nnunet_volume, target, explain_fold)
    layer = "decoder.stages.0"
    expected = reference_map(case, layer, channel_map)
    got = ours(method, case, layer=layer)
    assert got.shape == case.x.shape
    assert close(got, expected, rtol=1e-4, atol=1e-5)
    assert float(expected.abs().max()) > 0
    assert (got[0, 0, :2] == 0).all()  # nnU-Net crops these voxels away: zero


def on_the_plans_spacing(folder, volume):
    """``volume`` with the spacing nnU-Net resamples to: no resampling either way."""
    import numpy as np

    from TorchEsegetaLib.io.volume import Geometry, Volume
    from TorchEsegetaLib.models.loading import load_model

    plan = load_model({"kind": "nnunet", "path": str(folder), "folds": [0]}).network.plan
    reversed_spacing = np.empty(3)
    reversed_spacing[list(plan.transpose_forward)] = plan.spacing  # nnU-Net's (z, y, x), transposed
    geometry = volume.geometry
    spacing = tuple(float(v) for v in reversed_spacing[::-1])
    return Volume(
        volume.array, Geometry(geometry.size, spacing, geometry.origin, geometry.direction)
    )


@pytest.mark.parametrize("resampled", [True, False])
@pytest.mark.parametrize(
    "target",
    [TargetSpec.parse("roi:2,3,4:9,11,14"), TargetSpec.parse("class", output="probabilities")],
    ids=["roi-logits", "class-probabilities"],
)
def test_window_by_window_input_gradients_equal_autograd_through_the_whole_pipeline(
    nnunet_model_folder, nnunet_volume, resampled, target
):
    from TorchEsegetaLib.methods import ScoreModel, input_gradients

    volume = (
        nnunet_volume if resampled else on_the_plans_spacing(nnunet_model_folder, nnunet_volume)
    )
    case = prepared(nnunet_model_folder, volume, target)
    assert case.forward.network.case.to_input.identity is not resampled
    score = ScoreModel(case.forward, case.bound)
    scores, windowed = input_gradients(score, case.x)
    with torch.enable_grad():
        x = case.x.detach().requires_grad_(True)
        whole = score(x)
        (expected,) = torch.autograd.grad(whole.sum(), x)
    assert torch.allclose(scores, whole.detach(), rtol=1e-5)
    assert close(windowed, expected, rtol=1e-4, atol=1e-6)


def test_scores_with_one_network_output_replaced_equal_the_pipeline_run_so(
    nnunet_model_folder, nnunet_volume
):
    case = prepared(nnunet_model_folder, nnunet_volume, "class:vessel")
    pipeline = case.forward.network
    passes = case.forward.windowed_pass(case.x, case.bound)
    chosen = {1, 9, passes.rows_per_example - 3}  # flipped rows, in both folds
    generator = torch.Generator().manual_seed(3)
    start = 0
    for rows in passes.row_batches(progress=None):
        for index in range(len(rows)):
            if start + index not in chosen:
                continue
            with torch.no_grad():
                base = passes.network(rows)(passes.inputs(rows))[index : index + 1]
            new = base + torch.randn((2, *base.shape[1:]), generator=generator)
            got = passes.scores_replacing(rows, index, new, base)
            for replacement, score in zip(new, got):
                # the pipeline's own forward, with that row of that network call replaced
                call_of_row = (start + index) // len(rows)

                def swap(
                    _module,
                    _inputs,
                    output,
                    replacement=replacement,
                    call=call_of_row,
                    row=index,
                    calls=iter(range(10**6)),
                ):
                    if next(calls) != call:
                        return output
                    output = output.clone()
                    output[row] = replacement
                    return output

                handles = [network.register_forward_hook(swap) for network in pipeline.folds]
                try:
                    with torch.no_grad():
                        expected = case.bound(case.forward(case.x))
                finally:
                    for handle in handles:
                        handle.remove()
                assert torch.allclose(score.float(), expected[0], rtol=1e-4, atol=1e-6)
        start += len(rows)


@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
def test_score_weighted_cams_equal_a_loop_through_the_pipeline(
    nnunet_model_folder, nnunet_volume, name
):
    case = prepared(nnunet_model_folder, nnunet_volume, "class:vessel", explain_fold=0)
    layer = "decoder.stages.0"
    pipeline = case.forward.network
    network = pipeline.folds[0]
    module = dict(network.named_modules())[layer]
    activations, inputs = [], []
    keep = module.register_forward_hook(lambda _m, _i, o: activations.append(o.detach()))
    save = network.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach()))
    try:
        with torch.no_grad():
            score = float(case.bound(case.forward(case.x)))
    finally:
        keep.remove()
        save.remove()
    maps = []
    for call, (activation, patch) in enumerate(zip(activations, inputs)):
        scores = []
        for k in range(activation.shape[1]):
            if name == "scorecam":
                up = F.interpolate(activation[:, k : k + 1], size=patch.shape[2:], mode="trilinear")
                mask = (up - up.min()) / (up.max() - up.min())
                hook = network.register_forward_pre_hook(
                    lambda _m, args, mask=mask, call=call, calls=iter(range(10**6)): (
                        (args[0] * mask,) if next(calls) == call else None
                    )
                )
            else:

                def ablate(_m, _i, output, k=k, call=call, calls=iter(range(10**6))):
                    if next(calls) != call:
                        return output
                    output = output.clone()
                    output[:, k] = 0
                    return output

                hook = module.register_forward_hook(ablate)
            try:
                with torch.no_grad():
                    scores.append(float(case.bound(case.forward(case.x))))
            finally:
                hook.remove()
        scores = torch.tensor(scores, dtype=torch.float64)
        weights = torch.softmax(scores, 0) if name == "scorecam" else (score - scores) / abs(score)
        maps.append((weights.float()[None, :, None, None, None] * activation).sum(1, keepdim=True))
    expected = case.forward.blend_windows(torch.cat(maps), case.x.shape[2:])
    got = ours(name, case, layer=layer, relu=False)
    # Ablation-CAM's weights are differences of nearby float32 scores: 1e-5 of the largest value
    assert close(got[:, :1], expected, rtol=1e-4, atol=1e-5)
    assert float(expected.abs().max()) > 0


def test_every_layer_method_runs_on_an_nnunet_model_folder_with_every_target_kind(
    nnunet_model_folder, nnunet_volume
):
    import TorchEsegetaLib as te
    from TorchEsegetaLib.methods import REGISTRY

    fast = {"layer_conductance": {"n_steps": 2}, "internal_influence": {"n_steps": 2}}
    fast["layer_gradient_shap"] = {"n_samples": 2}
    names = sorted(name for name, cls in REGISTRY.items() if cls.family == "layer")
    model = {"kind": "nnunet", "path": str(nnunet_model_folder), "folds": [0, 1], "explain_fold": 0}
    mask = np.zeros(nnunet_volume.spatial_shape, np.uint8)
    mask[4:9, 5:10, 6:12] = 1
    targets = [TargetSpec.parse(text) for text in ("class:vessel", "roi:2,3,4:9,11,14")]
    targets += [TargetSpec.parse("voxel:6,7,9"), TargetSpec(kind="mask", mask_array=mask)]
    for target in targets:
        chosen = names if target.kind == "class" else ["gradcam", "scorecam"]
        methods = [{"name": n, "params": fast.get(n, {})} for n in chosen]
        result = te.explain(
            nnunet_volume, model=model, target=target, methods=methods, device="cpu"
        )
        for method in result.methods:
            label = f"{method.spec.label} / {target.kind}"
            assert method.status == "ok" and method.map is not None, label
            assert method.map.shape == nnunet_volume.spatial_shape, label
            assert np.isfinite(method.map).all(), label
            assert (method.map[:2] == 0).all(), label  # cropped away by nnU-Net


def test_layers_lists_one_folds_layers_with_the_defaults(nnunet_model_folder, capsys):
    from TorchEsegetaLib.cli import main

    assert main(["layers", "--model", str(nnunet_model_folder)]) == 0
    out = capsys.readouterr().out
    assert "one fold's network on one patch" in out
    assert "decoder.stages.0 " in out and "(default of" in out
    assert "folds.0" not in out  # names within a fold's network: the same in every fold


def test_the_slicer_panel_lists_the_layers_the_cli_lists(nnunet_model_folder, capsys):
    from TorchEsegetaSlicer.modelInfo import layerNames

    from TorchEsegetaLib.cli import main
    from TorchEsegetaLib.models.loading import load_model

    names = layerNames(load_model({"kind": "nnunet", "path": str(nnunet_model_folder)}))
    assert main(["layers", "--model", str(nnunet_model_folder)]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names == listed and "decoder.stages.0" in names
