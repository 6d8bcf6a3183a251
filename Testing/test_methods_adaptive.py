"""Adaptive occlusion with its coarse first pass: one level is plain occlusion; each finer level
occludes exactly inside the boxes that hold the top share of the level before; the passes it makes
are the ones it records and never more than it declares; on an additive score the coarse boxes
keep their total. The gradient first pass (the default) has its own file:
``test_methods_adaptive_gradient.py``."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import (
    LinearVoxelModel,
    centre_box_target,
    local_window_case,
    ours,
    tiny_input,
    tiny_unet,
)

from TorchEsegetaLib.engine.context import Context
from TorchEsegetaLib.methods import create_method
from TorchEsegetaLib.methods.drill_down import refined_boxes
from TorchEsegetaLib.targets.bound import BoundTarget

COARSE = {"first_pass": "coarse"}


@pytest.mark.parametrize(
    "exact",
    [{**COARSE, "levels": 1}, {"first_pass": "gradient", "exact_share": 1.0}],
    ids=["one coarse level", "every box re-measured"],
)
@pytest.mark.parametrize(
    ("window", "stride", "cover_edges", "size"),
    [(4, 4, True, 16), (6, 4, True, 16), (6, 4, False, 16), (5, 3, True, 18)],
)
def test_the_exact_settings_are_plain_occlusion(exact, window, stride, cover_edges, size):
    net, target = tiny_unet(in_channels=2), centre_box_target(size)
    x = tiny_input(channels=2, size=size)
    params = {"window": window, "stride": stride, "cover_edges": cover_edges, "baseline": "mean"}
    plain = ours("occlusion", net, x, target, max_batch=3, **params)
    adaptive = ours("occlusion_adaptive", net, x, target, max_batch=3, **exact, **params)
    assert torch.equal(adaptive, plain)


def test_one_level_is_plain_occlusion_where_a_local_target_skips_boxes():
    forward, x, target = local_window_case()
    params = {"window": 8, "stride": 8}
    context = Context(max_batch=4)
    plain = create_method("occlusion", params).attribute(forward, x, target, Context(max_batch=4))
    adaptive = create_method("occlusion_adaptive", {**params, **COARSE, "levels": 1})
    assert torch.equal(adaptive.attribute(forward, x, target, context), plain)
    level = context.facts["levels"][0]
    assert 0 < level["evaluated"] < level["boxes"]  # boxes outside the target's windows: no pass
    assert context.facts["passes"] == level["evaluated"] + 1


def test_refined_boxes_are_the_fewest_largest_drops_holding_the_share():
    drops = torch.tensor([1.0, -5.0, 2.0, 0.0, 3.0])  # |drop| total 11
    assert refined_boxes(drops, 0.5, most=5) == [1, 4]  # 5 + 3 = 8 >= 5.5
    assert refined_boxes(drops, 5 / 11, most=5) == [1]  # exactly the share: one box is enough
    assert refined_boxes(drops, 0.5, most=1) == [1]  # the cap wins
    assert refined_boxes(drops, 1.0, most=5) == [1, 4, 2, 0]  # never a box without a drop
    assert refined_boxes(torch.zeros(4), 0.5, most=4) == []


def coarse_drops(plain_coarse: torch.Tensor, window: int) -> dict[tuple[int, ...], float]:
    """Each box's drop, read from plain occlusion with stride = window (constant per box)."""
    size = plain_coarse.shape[-1]
    starts = range(0, size, window)
    return {
        (i, j, k): float(plain_coarse[0, 0, i, j, k])
        for i in starts
        for j in starts
        for k in starts
    }


def test_the_finer_level_occludes_exactly_inside_the_boxes_holding_the_share():
    net, x, target = tiny_unet(), tiny_input(), centre_box_target()
    share = 0.6
    context = Context(max_batch=1)  # one box per pass: maps comparable bit for bit
    adaptive = create_method(
        "occlusion_adaptive",
        {
            "window": 4,
            "stride": 4,
            "levels": 2,
            "refine_share": share,
            "max_refined": 1.0,
            **COARSE,
        },
    ).attribute(net, x, target, context)
    coarse = ours("occlusion", net, x, target, max_batch=1, window=8, stride=8)
    fine = ours("occlusion", net, x, target, max_batch=1, window=4, stride=4)
    # The boxes that hold the share, found here from plain occlusion's coarse map.
    drops = coarse_drops(coarse, 8)
    ranked = sorted(drops, key=lambda corner: -abs(drops[corner]))
    total, held, chosen = sum(abs(d) for d in drops.values()), 0.0, []
    for corner in ranked:
        if held >= share * total:
            break
        chosen.append(corner)
        held += abs(drops[corner])
    assert 0 < len(chosen) < len(drops)
    refined = torch.zeros(x.shape[2:], dtype=torch.bool)
    for corner in chosen:
        refined[tuple(slice(c, c + 8) for c in corner)] = True
    assert torch.equal(adaptive[0, 0][refined], fine[0, 0][refined])
    # Elsewhere: the coarse drop spread over the 8 final-size boxes of the coarse box.
    assert torch.equal(adaptive[0, 0][~refined], coarse[0, 0][~refined] / 8)
    levels = context.facts["levels"]
    assert [lv["window"] for lv in levels] == [8, 4]
    assert levels[0]["refined"] == len(chosen) and levels[1]["evaluated"] == 8 * len(chosen)


def test_on_an_additive_score_each_coarse_box_keeps_the_total_of_its_fine_boxes():
    # logits = w x + b voxel by voxel, the score their mean: a box's drop is the sum of the
    # drops of the boxes it holds, so an unrefined box's value is its fine boxes' mean.
    net, x = LinearVoxelModel(), tiny_input()
    target = BoundTarget(1, torch.ones((16,) * 3, dtype=torch.bool), "logits", "softmax", "mean")
    params = {"window": 2, "stride": 2}
    adaptive = ours(
        "occlusion_adaptive", net, x, target, levels=3, refine_share=0.3, **COARSE, **params
    )
    fine = ours("occlusion", net, x, target, **params)
    # Voxels refined to the last level equal the fine map; the others a coarser level's mean.
    exact = torch.isclose(adaptive, fine, rtol=1e-4, atol=1e-7)
    assert 0 < exact.float().mean() < 1
    for size in (8, 4):
        pooled = torch.nn.functional.avg_pool3d(fine, size)
        coarse = torch.nn.functional.interpolate(pooled, scale_factor=size, mode="nearest")
        exact |= torch.isclose(adaptive, coarse, rtol=1e-4, atol=1e-7)
    assert exact.all()
    assert torch.allclose(adaptive.sum(), fine.sum(), rtol=1e-4)


def test_the_passes_meet_the_declared_bound_when_the_cap_decides():
    net, x, target = tiny_unet(), tiny_input(), centre_box_target()
    method = create_method(
        "occlusion_adaptive",
        {"window": 2, "stride": 2, "levels": 3, "refine_share": 1.0, "max_refined": 0.25, **COARSE},
    )
    context = Context(max_batch=4)
    method.attribute(net, x, target, context)
    # 8 boxes of 8^3; 2 of them refined into 16 boxes of 4^3; 4 of those into 32 of 2^3.
    assert [lv["evaluated"] for lv in context.facts["levels"]] == [8, 16, 32]
    assert context.facts["passes"] == method.passes(tuple(x.shape[1:])).forward == 57


def test_a_cap_that_keeps_less_than_the_share_is_recorded_and_said():
    # On an additive score over the whole volume every box drops about alike: refining half of
    # the drop would need half of the boxes, max_refined lets through a quarter.
    net, x = LinearVoxelModel(), tiny_input()
    target = BoundTarget(1, torch.ones((16,) * 3, dtype=torch.bool), "logits", "softmax", "mean")
    params = {"window": 4, "stride": 4, "levels": 2, "refine_share": 0.9, "max_refined": 0.25}
    params.update(COARSE)
    context = Context()
    create_method("occlusion_adaptive", params).attribute(net, x, target, context)
    first, last = context.facts["levels"]
    assert first["refined"] == 2  # a quarter of the 8 coarse boxes
    assert 0 < first["share_refined"] < 0.9 and "share_refined" not in last
    assert any("level 1 (window 8)" in note and "max_refined" in note for note in context.notes)
    # Without the cap the share is held, and nothing is said.
    context = Context()
    uncapped = {**params, "max_refined": 1.0}
    create_method("occlusion_adaptive", uncapped).attribute(net, x, target, context)
    assert context.facts["levels"][0]["share_refined"] >= 0.9 and not context.notes


def test_a_score_no_box_changes_is_not_refined():
    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.zeros((x.shape[0], 2, *x.shape[2:])) + 0 * x.mean()

    target = centre_box_target()
    context = Context()
    result = create_method("occlusion_adaptive", {"window": 2, "stride": 2, **COARSE}).attribute(
        Constant(), tiny_input(), target, context
    )
    assert not result.any()
    assert [lv["evaluated"] for lv in context.facts["levels"]] == [8, 0, 0]
    assert context.facts["passes"] == 9


def test_run_json_keeps_the_passes_and_levels_beside_the_bound(tmp_path):
    from helpers import tiny_unet_job

    from TorchEsegetaLib.runs.runner import run_job

    params = {"window": 2, "stride": 2, "refine_share": 0.5, **COARSE}
    job = tiny_unet_job(tmp_path, [{"name": "occlusion_adaptive", "params": params}])
    events = []
    run_job(job, progress=events.append)
    lines = [e["message"] for e in events if e["stage"] == "estimate"]
    assert any(line.startswith("estimate occlusion_adaptive: at most 57 forward") for line in lines)
    method = json.loads((tmp_path / "run" / "run.json").read_text())["methods"][0]
    assert method["estimate"]["forward_passes"] == 57 and method["estimate"]["upper_bound"]
    facts = method["facts"]
    assert facts["passes"] == 1 + sum(level["evaluated"] for level in facts["levels"]) <= 57
    assert [level["window"] for level in facts["levels"]] == [8, 4, 2]
    fractions = [e["fraction"] for e in events if e.get("method") == "occlusion_adaptive"]
    assert fractions == sorted(fractions)  # the levels share one progress bar, never backwards
