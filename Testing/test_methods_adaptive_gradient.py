"""Adaptive occlusion's gradient first pass (the default): every box's drop estimated along its
occlusion path, boxes that share a pass lying apart, the largest estimates re-measured by exact
occlusion. Re-measuring every box is plain occlusion; on a score linear in the input the estimate
is the drop; on a voxel-wise nonlinear score it converges to the drop with more path points; the
passes made are the passes declared and recorded. (Re-measuring every box on whole-volume models
is tested beside one coarse level, in ``test_methods_adaptive.py``.)"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from helpers import (
    LinearVoxelModel,
    centre_box_target,
    close,
    local_window_case,
    ours,
    tiny_input,
    tiny_unet,
)

from TorchEsegetaLib.engine.context import Context
from TorchEsegetaLib.methods import create_method
from TorchEsegetaLib.methods.path_estimate import path_groups
from TorchEsegetaLib.methods.perturbation import box_grid
from TorchEsegetaLib.targets.bound import BoundTarget


def whole_volume_target(output: str = "logits") -> BoundTarget:
    return BoundTarget(1, torch.ones((16,) * 3, dtype=torch.bool), output, "softmax", "mean")


def test_every_box_re_measured_is_plain_occlusion_where_a_local_target_skips_boxes():
    forward, x, target = local_window_case()
    params = {"window": 8, "stride": 8}
    plain = create_method("occlusion", params).attribute(forward, x, target, Context(max_batch=4))
    method = create_method("occlusion_adaptive", {**params, "exact_share": 1.0})
    context = Context(max_batch=4)
    assert torch.equal(method.attribute(forward, x, target, context), plain)
    estimate = context.facts["estimate"]
    assert 0 < estimate["estimated"] < estimate["boxes"]  # outside the target's windows: no pass
    assert context.facts["passes"] == estimate["exact"] + 1 == estimate["estimated"] + 1
    assert context.facts["backward_passes"] == estimate["groups"] * estimate["path_steps"]


def test_on_a_linear_score_the_path_estimate_is_the_drop():
    # logits = w x + b voxel by voxel, the score their mean: the gradient is constant, so one
    # path point gives each box's drop, even with every box moved in the same pass.
    net, x, target = LinearVoxelModel(), tiny_input(), whole_volume_target()
    params = {"window": 4, "stride": 4}
    plain = ours("occlusion", net, x, target, **params)
    context = Context()
    estimated = create_method(
        "occlusion_adaptive", {**params, "exact_share": 0.0, "path_steps": 1, "separation": 0}
    ).attribute(net, x, target, context)
    assert close(estimated, plain, rtol=1e-4, atol=1e-5)
    assert context.facts["passes"] == 0 and context.facts["backward_passes"] == 1


def test_on_a_voxelwise_nonlinear_score_more_path_points_converge_to_the_drop():
    # Softmax probabilities of a voxel-wise linear model: nonlinear in each voxel, a sum over
    # voxels, so boxes do not interact and the path integral tends to the exact drop.
    net, x, target = LinearVoxelModel(), tiny_input() / 100, whole_volume_target("probabilities")
    params = {"window": 4, "stride": 4, "exact_share": 0.0}
    plain = ours("occlusion", net, x, target, window=4, stride=4)
    errors = {}
    for steps in (1, 32):
        estimated = ours("occlusion_adaptive", net, x, target, path_steps=steps, **params)
        errors[steps] = float((estimated - plain).abs().max() / plain.abs().max())
    assert errors[32] < 1e-3
    assert errors[1] > 10 * errors[32]


@pytest.mark.parametrize(
    ("spatial", "window", "stride", "cover_edges", "gap"),
    [
        ((16, 16, 16), 4, 4, True, 8),
        ((18, 13, 9), 5, 3, True, 10),
        ((18, 13, 9), 5, 3, False, 5),
        ((20, 7, 12), 6, 2, True, 0),
        ((8, 8, 8), 16, 8, True, 32),
    ],
)
def test_boxes_whose_paths_share_a_pass_lie_apart(spatial, window, stride, cover_edges, gap):
    boxes = box_grid(spatial, window, stride, cover_edges)
    groups = path_groups(spatial, window, stride, cover_edges, gap)
    assert len(groups) == len(boxes)
    for (a, ga), (b, gb) in itertools.combinations(zip(boxes, groups), 2):
        if ga != gb:
            continue
        apart = [
            max(sa.start, sb.start) - min(sa.stop, sb.stop) for sa, sb in zip(a, b, strict=True)
        ]
        assert max(apart) >= gap, (a, b)
    # Per axis ceil((window + gap) / stride) classes, one more where the flush box at the
    # border fits none: the fewest that keep the gap.
    most = 1
    for n in spatial:
        most *= -(-(min(window, n) + gap) // stride) + 1
    assert len(set(groups)) <= most
    if spatial == (16, 16, 16):
        assert len(set(groups)) == 27  # starts 0, 4, 8, 12: 12 joins 0's class


def test_the_largest_estimates_are_re_measured():
    net, x, target = tiny_unet(), tiny_input(), centre_box_target()
    params = {"window": 4, "stride": 4}
    # one box per pass: maps comparable bit for bit
    estimated = ours("occlusion_adaptive", net, x, target, max_batch=1, exact_share=0, **params)
    plain = ours("occlusion", net, x, target, max_batch=1, **params)
    context = Context(max_batch=1)
    adaptive = create_method("occlusion_adaptive", {**params, "exact_share": 0.25}).attribute(
        net, x, target, context
    )
    corners = list(itertools.product(range(0, 16, 4), repeat=3))
    value = {c: float(estimated[0, 0][c].abs()) for c in corners}
    top = sorted(corners, key=lambda c: -value[c])[:16]  # a quarter of the 64 boxes
    measured = torch.zeros((16,) * 3, dtype=torch.bool)
    for corner in top:
        measured[tuple(slice(c, c + 4) for c in corner)] = True
    assert torch.equal(adaptive[0, 0][measured], plain[0, 0][measured])
    assert torch.equal(adaptive[0, 0][~measured], estimated[0, 0][~measured])
    assert not torch.equal(estimated[0, 0][measured], plain[0, 0][measured])
    assert context.facts["estimate"]["exact"] == 16 and context.facts["passes"] == 17


@pytest.mark.parametrize(
    "params",
    [
        {"window": 4, "stride": 4},
        {"window": 6, "stride": 4, "path_steps": 2, "separation": 1, "exact_share": 0.1},
    ],
)
def test_the_passes_made_are_the_passes_declared(params):
    net, x, target = tiny_unet(), tiny_input(), centre_box_target()
    method = create_method("occlusion_adaptive", params)
    context = Context(max_batch=4)
    method.attribute(net, x, target, context)
    declared = method.passes(tuple(x.shape[1:]))
    assert (context.facts["passes"], context.facts["backward_passes"]) == declared
    assert declared.backward == context.facts["estimate"]["groups"] * method.config["path_steps"]


def test_run_json_keeps_the_estimate_beside_the_declared_passes(tmp_path):
    from helpers import tiny_unet_job

    from TorchEsegetaLib.runs.runner import run_job

    params = {"window": 4, "stride": 4, "exact_share": 0.1}
    job = tiny_unet_job(tmp_path, [{"name": "occlusion_adaptive", "params": params}])
    events = []
    run_job(job, progress=events.append)
    method = json.loads((tmp_path / "run" / "run.json").read_text())["methods"][0]
    facts, estimate = method["facts"], method["estimate"]
    # 64 boxes of 4^3 in 27 groups x 3 path points; 7 re-measured and the unoccluded input
    assert facts["first_pass"] == "gradient" and facts["estimate"]["groups"] == 27
    assert (facts["passes"], facts["backward_passes"]) == (8, 81)
    assert (estimate["forward_passes"], estimate["backward_passes"]) == (8, 81)
    fractions = [e["fraction"] for e in events if e.get("method") == "occlusion_adaptive"]
    assert fractions == sorted(fractions)  # one progress bar for both parts, never backwards


def test_a_score_without_gradient_is_said():
    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.zeros((x.shape[0], 2, *x.shape[2:])) + 0 * x.mean()

    context = Context()
    result = create_method("occlusion_adaptive", {"window": 2, "stride": 2}).attribute(
        Constant(), tiny_input(), centre_box_target(), context
    )
    assert not result.any()
    assert any("first_pass=coarse" in note for note in context.notes)
