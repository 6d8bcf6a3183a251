"""Adaptive occlusion against exhaustive occlusion at the same final window (bench.py's rows).

On whole-volume models (the demo network and a random-weight MONAI UNet) with a whole-volume
class target: the passes of each, their ratio, how much the maps agree (the share of the top 1%
of voxels by absolute value that both maps hold, and Spearman's rank correlation inside the
foreground) and the wall time of each. The exhaustive map costs thousands of passes, so it can
be kept in a cache folder (``--cache``): a later run with the same network, input, target and
window reuses the map and the wall time measured when it was computed, and says so.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from measure import sync

from TorchEsegetaLib.engine.context import Context, measure_sample_bytes
from TorchEsegetaLib.methods import ScoreModel, create_method
from TorchEsegetaLib.models.demo import build_demo_network, demo_card, make_vessel_volume
from TorchEsegetaLib.models.inference import SegmentationForward
from TorchEsegetaLib.targets.bound import bind_target
from TorchEsegetaLib.targets.spec import TargetSpec

#: the networks of the rows, in their order: the demo network, a random-weight MONAI UNet
NETWORKS = ("demo", "unet")
#: the vessel volume's seed (the demo input's own is 64^3; training never saw this one)
VOLUME_SEED = 11


@dataclass
class Case:
    name: str
    forward: SegmentationForward
    x: torch.Tensor
    target: Any
    #: voxels of the head / body, where Spearman's correlation is taken
    foreground: torch.Tensor


def random_unet(channels: tuple[int, ...]) -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(
        3,
        1,
        2,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        act="RELU",
        norm="INSTANCE",
        # No residual units: a third of the time of a pass (0.17 s at 128^3 on 2 idle cores,
        # so the 4,096 passes of exhaustive occlusion take about 12 min; 42 min under load).
        num_res_units=0,
    ).eval()


def make_cases(
    size: int,
    unet_channels: tuple[int, ...],
    device: torch.device,
    networks: tuple[str, ...] = NETWORKS,
) -> list[Case]:
    """The demo network and a random-weight MONAI UNet (those of ``networks``) on one synthetic
    MRA volume of ``size``^3 (tissue everywhere: the foreground is every voxel above a tenth of
    the median intensity), z-scored with statistics fixed on the unperturbed input, class 1 over
    its prediction."""
    unknown = set(networks) - set(NETWORKS)
    if unknown:
        raise SystemExit(f"unknown network {sorted(unknown)}: choose among {', '.join(NETWORKS)}")
    image, _ = make_vessel_volume((size,) * 3, VOLUME_SEED)
    x = torch.from_numpy(image)[None, None].to(device)
    foreground = x[0, 0] > 0.1 * x.median()
    cases = []
    built = {
        "demo": lambda: ("demo network", build_demo_network()),
        "unet": lambda: (
            f"MONAI UNet {'-'.join(map(str, unet_channels))}, random",
            random_unet(unet_channels),
        ),
    }
    for key in NETWORKS:
        if key not in networks:
            continue
        name, network = built[key]()
        card = demo_card()
        if key == "unet":
            card.size_divisible = 2 ** (len(unet_channels) - 1)
        forward = SegmentationForward(network.to(device), card)
        forward.freeze_statistics(x)
        with torch.no_grad():
            logits = forward(x)
        target = bind_target(TargetSpec(kind="class", class_=1), card, logits)
        cases.append(Case(name, forward, x, target, foreground))
    return cases


def digest(case: Case, params: dict[str, Any]) -> str:
    """What the exhaustive map depends on: the network's weights, the input, the target region,
    the occlusion parameters and the torch version."""
    hasher = hashlib.sha256()
    for tensor in case.forward.network.state_dict().values():
        hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    hasher.update(case.x.cpu().numpy().tobytes())
    hasher.update(case.target.region.cpu().numpy().tobytes())
    hasher.update(repr((sorted(params.items()), torch.__version__)).encode())
    return hasher.hexdigest()[:16]


def run_method(case: Case, name: str, params: dict[str, Any]) -> tuple[torch.Tensor, float, dict]:
    """A method's map, its wall time and what it recorded about its run."""
    score = ScoreModel(case.forward, case.target)
    shown = [0.0, time.perf_counter()]

    def progress(fraction: float, message: str) -> None:
        # long runs: a line per tenth, at most one a minute
        if fraction >= shown[0] + 0.1 and time.perf_counter() > shown[1] + 60:
            shown[:] = [fraction, time.perf_counter()]
            print(f"  {case.name}: {message}", flush=True)

    context = Context(
        device=case.x.device,
        sample_bytes=measure_sample_bytes(score, case.x),
        progress=progress,
    )
    method = create_method(name, params)
    began = time.perf_counter()
    result = method.attribute(case.forward, case.x, case.target, context)
    return result[0, 0].detach().cpu(), time.perf_counter() - began, dict(context.facts)


def exhaustive(case: Case, params: dict[str, Any], cache: Path | None) -> dict[str, Any]:
    """Plain occlusion's map, wall time and passes, from the cache when it holds them."""
    path = cache / f"occlusion-{digest(case, params)}.pt" if cache is not None else None
    if path is not None and path.is_file():
        found = torch.load(path, weights_only=True)
        return {**found, "cached": True}
    occlusion, seconds, _ = run_method(case, "occlusion", params)
    passes = create_method("occlusion", params).passes(tuple(case.x.shape[1:])).forward
    result = {"map": occlusion, "seconds": seconds, "passes": passes}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save(result, partial)
        partial.replace(path)
    return {**result, "cached": False}


def top_overlap(ours: torch.Tensor, reference: torch.Tensor, share: float = 0.01) -> float:
    """Share of the reference's top ``share`` voxels by absolute value that ours also ranks in
    its top ``share`` (ties ranked by voxel index, the same way in both maps)."""
    count = max(1, int(share * reference.numel()))

    def top(values: torch.Tensor) -> set[int]:
        order = torch.argsort(-values.abs().flatten().double(), stable=True)
        return set(order[:count].tolist())

    return len(top(ours) & top(reference)) / count


def spearman(ours: torch.Tensor, reference: torch.Tensor, where: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    a, b = ours[where].double().numpy(), reference[where].double().numpy()
    return float(spearmanr(a, b).statistic)


#: the first passes compared, the method's default first
FIRST_PASSES = ("gradient", "coarse")


def pass_costs(case: Case, repeat: int = 3) -> tuple[float, float]:
    """Seconds of one forward pass and of one forward pass with its backward (to the input), on
    the case's input, each the median of ``repeat`` after a warm-up: what one pass of each kind
    costs in this run."""
    import statistics

    score = ScoreModel(case.forward, case.target)

    def forward() -> None:
        with torch.no_grad():
            score(case.x)

    def backward() -> None:
        x = case.x.detach().requires_grad_(True)
        with torch.enable_grad():
            torch.autograd.grad(score(x).sum(), x)

    timed = []
    for run in (forward, backward):
        run()
        times = []
        for _ in range(repeat):
            sync(case.x.device)
            began = time.perf_counter()
            run()
            sync(case.x.device)
            times.append(time.perf_counter() - began)
        timed.append(statistics.median(times))
    return timed[0], timed[1]


def adaptive_rows(
    size: int,
    window: int,
    unet_channels: tuple[int, ...],
    device: torch.device,
    cache: Path | None,
    params: dict[str, Any] | None = None,
    networks: tuple[str, ...] = NETWORKS,
    first_passes: tuple[str, ...] = FIRST_PASSES,
) -> list[dict[str, Any]]:
    """One row per network and first pass: adaptive occlusion (its defaults, or ``params``)
    against exhaustive occlusion, both at final window ``window`` and stride ``window``. Passes
    with a backward are counted in forward passes by the cost of each kind measured in this run
    (``pass_costs``): the ratio is exhaustive occlusion's passes over that count."""
    plain = {"window": window, "stride": window, "baseline": "zero"}
    params = params or {}
    rows = []
    print(f"adaptive occlusion against exhaustive occlusion, {size}^3, window {window}", flush=True)
    for case in make_cases(size, unet_channels, device, networks):
        reference = exhaustive(case, plain, cache)
        forward_s, backward_s = pass_costs(case)
        print(
            f"  {case.name}: one forward pass {forward_s:.3f} s, with its backward "
            f"{backward_s:.3f} s ({backward_s / forward_s:.2f} forward passes)",
            flush=True,
        )
        for first in first_passes:
            method_params = {**plain, "first_pass": first, **params}
            ours, seconds, facts = run_method(case, "occlusion_adaptive", method_params)
            backward = facts.get("backward_passes", 0)
            equivalent = facts["passes"] + backward * backward_s / forward_s
            row = {
                "case": f"{case.name}, {size}^3, window {window}",
                "first_pass": first,
                "passes": facts["passes"],
                "backward_passes": backward,
                "backward_in_forwards": backward_s / forward_s,
                "pass_equivalents": equivalent,
                "levels": facts.get("levels"),
                "estimate": facts.get("estimate"),
                "exhaustive_passes": reference["passes"],
                "pass_ratio": reference["passes"] / equivalent,
                "top1_overlap": top_overlap(ours, reference["map"]),
                "spearman": spearman(ours, reference["map"], case.foreground),
                "foreground_share": float(case.foreground.float().mean()),
                "ours_s": seconds,
                "exhaustive_s": reference["seconds"],
                "exhaustive_cached": reference["cached"],
                "params": method_params,
            }
            rows.append(row)
            print(f"  {case.name}, {first}: {steps_text(row)}", flush=True)
    print(Rows.header(), flush=True)
    for row in rows:
        print(Rows.format(row), flush=True)
    print(
        "passes: forward passes + passes with their backward (b); ratio: exhaustive passes over "
        "them counted in forward passes at the costs measured above"
    )
    if any(row["exhaustive_cached"] for row in rows):
        print("* exhaustive map and its time from the cache (computed by an earlier run)")
    return rows


class Rows:
    @staticmethod
    def header() -> str:
        columns = (
            "case",
            "first pass",
            "passes",
            "exhaustive",
            "ratio",
            "top-1%",
            "Spearman",
            "ours s",
            "exh. s",
        )
        widths = (40, 10, 12, 10, 6, 7, 8, 8, 10)
        cells = [f"{c:<{w}}" for c, w in zip(columns, widths)]
        return "| " + " | ".join(cells) + " |\n|" + "|".join("-" * (w + 2) for w in widths) + "|"

    @staticmethod
    def format(row: dict[str, Any]) -> str:
        cached = "*" if row["exhaustive_cached"] else " "
        passes = f"{row['passes']}" + (
            f"+{row['backward_passes']}b" if row["backward_passes"] else ""
        )
        return (
            f"| {row['case']:<40} | {row['first_pass']:<10} | {passes:>12} | "
            f"{row['exhaustive_passes']:>10} | {row['pass_ratio']:>5.1f}x | "
            f"{row['top1_overlap']:>7.3f} | {row['spearman']:>8.3f} | "
            f"{row['ours_s']:>8.1f} | {row['exhaustive_s']:>9.1f}{cached} |"
        )


def steps_text(row: dict[str, Any]) -> str:
    """What the run did: its path estimate and exact boxes, or its levels."""
    estimate = row["estimate"]
    if estimate is not None:
        return (
            f"{estimate['estimated']} boxes estimated in {estimate['groups']} groups x "
            f"{estimate['path_steps']} path points, {estimate['exact']} re-measured"
        )
    return levels_text(row["levels"])


def levels_text(levels: list[dict[str, Any]]) -> str:
    """What each level did: "window 32: 64 boxes, 16 refined; window 16: 128 boxes, ..."."""
    return "; ".join(
        f"window {lv['window']}: {lv['evaluated']} boxes, {lv['refined']} refined" for lv in levels
    )
