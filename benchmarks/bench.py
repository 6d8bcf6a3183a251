"""Speed and memory of TorchEsegeta against the references, in one process.

    python benchmarks/bench.py --config cpu          # a few minutes on 2 cores
    python benchmarks/bench.py --config cuda         # the issue's sizes (128^3, 512x512x256)
    python benchmarks/bench.py --config smoke        # seconds: correctness of the comparison only
    python benchmarks/bench.py --config adaptive --cache /tmp/torchesegeta-bench
                                                     # adaptive vs exhaustive occlusion, 128^3
    python benchmarks/bench.py --cases window-reuse  # exact window reuse, MONAI (window_reuse.py)
    python benchmarks/bench.py --cases nnunet-reuse  # exact window reuse, nnU-Net example folder

Each case runs ours and the reference (captum, MONAI, plain autograd through MONAI's
sliding-window inferer) on the same model, input and target, and prints: our time, the
reference time, their ratio, our time over the floor (samples x the best per-sample forward
(+backward) time measured in this run), peak memory, and the maximum difference of the maps
relative to the reference's largest value. Timings are the best of ``--repeat`` runs after a
warm-up; ours keeps the batch sizes it tuned itself during the warm-up (as a run keeps them
across its methods), the references get the best of the batch sizes tried. No time
is asserted anywhere; the smoke configuration runs in CI to keep the comparison itself correct.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adaptive_occlusion import adaptive_rows  # noqa: E402
from measure import Table, WholeInference, max_rel_diff, peak_mb, reset_peak, sync, timed  # noqa: E402
from window_reuse import nnunet_reuse_cases, window_reuse_cases  # noqa: E402

from TorchEsegetaLib.engine.context import Context, measure_sample_bytes  # noqa: E402
from TorchEsegetaLib.methods import ScoreModel, create_method  # noqa: E402
from TorchEsegetaLib.models.card import ModelCard  # noqa: E402
from TorchEsegetaLib.models.inference import SegmentationForward  # noqa: E402
from TorchEsegetaLib.targets.bound import BoundTarget  # noqa: E402


@dataclass
class Config:
    channels: tuple[int, ...]
    res_units: int
    size: tuple[int, int, int]  # whole-volume cases
    steps: int  # integrated gradients
    samples: int  # SmoothGrad
    occlusion: tuple[int, int]  # window, stride
    batches: tuple[int, ...]  # batch sizes tried for the floor and the references
    sliding_volume: tuple[int, int, int]
    roi: int
    local_box: int  # edge of the centred ROI target
    sliding_occlusion: tuple[int, int]
    occlusion_reference: bool = True  # captum occlusion through the full inferer (slow)
    whole_volume: bool = (
        True  # the whole-volume cases (integrated gradients, SmoothGrad, occlusion)
    )
    sliding_reference: bool = True  # autograd through MONAI's inferer over the whole volume
    local_occlusion: bool = True
    sliding: bool = True  # the sliding-window cases
    #: adaptive against exhaustive occlusion (adaptive_occlusion.py): volume edge (0: not run),
    #: final window, channels of the random-weight MONAI UNet
    adaptive_size: int = 0
    adaptive_window: int = 8
    adaptive_unet: tuple[int, ...] = (2, 4, 8)
    notes: list[str] = field(default_factory=list)


CONFIGS = {
    "smoke": Config(
        (4, 8),
        1,
        (16, 16, 16),
        4,
        3,
        (8, 8),
        (1, 2),
        (32, 32, 32),
        16,
        6,
        (16, 16),
        adaptive_size=16,
        adaptive_window=4,
    ),
    "cpu": Config(
        (8, 16, 32),
        1,
        (48, 48, 48),
        32,
        16,
        (16, 8),
        (1, 2, 4, 8),
        (128, 128, 64),
        32,
        16,
        (16, 16),
    ),
    # The large case on a CPU: window by window only (autograd through the whole
    # inferer would keep all 75 windows' activations, far beyond this machine's memory).
    "memory": Config(
        (8, 16, 32),
        1,
        (16, 16, 16),
        4,
        2,
        (8, 8),
        (1,),
        (512, 512, 256),
        128,
        32,
        (16, 16),
        whole_volume=False,
        sliding_reference=False,
        local_occlusion=False,
    ),
    # Goal 4 of the perturbation issue: adaptive occlusion against exhaustive occlusion at a
    # final window of 8 on 128^3 whole-volume models (4,096 passes per network, hours on a CPU:
    # give --cache to compute the exhaustive maps once).
    "adaptive": Config(
        (8, 16, 32),
        1,
        (16, 16, 16),
        4,
        2,
        (8, 8),
        (1,),
        (32, 32, 32),
        16,
        6,
        (16, 16),
        whole_volume=False,
        sliding=False,
        adaptive_size=128,
    ),
    "cuda": Config(
        (16, 32, 64, 128, 256),
        2,
        (128, 128, 128),
        32,
        16,
        (16, 8),
        (1, 8, 32),
        (512, 512, 256),
        128,
        32,
        (16, 16),
        adaptive_size=128,
        adaptive_unet=(8, 16, 32),
    ),
}


def make_network(config: Config, device: torch.device) -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    strides = (2,) * (len(config.channels) - 1)
    net = UNet(
        3,
        1,
        2,
        channels=config.channels,
        strides=strides,
        num_res_units=config.res_units,
        act="RELU",
        norm="INSTANCE",
    )
    return net.eval().to(device)


def centred_box(shape: tuple[int, ...], edge: int, device: torch.device) -> BoundTarget:
    region = torch.zeros(shape, dtype=torch.bool, device=device)
    box = tuple(slice(n // 2 - edge // 2, n // 2 - edge // 2 + edge) for n in shape)
    region[box] = True
    return BoundTarget(1, region, "logits", "softmax", "mean")


def race(
    entries: list[tuple[str, Callable[[], Any]]], device: torch.device, rounds: int
) -> dict[str, tuple[float, Any, float]]:
    """Best wall time, last result and peak memory (MB) of each named entry, run in turns.

    Each round runs every entry once, in order; an entry listed several times gets that many
    runs per round (its best over all of them). Running ours, the references and the floor in
    turns, instead of each in its own block, spreads the machine's slow spells (other tenants,
    frequency changes) over all of them alike, so the ratios measure the code, not the moment.
    """
    best: dict[str, list[Any]] = {}
    if rounds > 1:
        for name, fn in entries:  # warm-up: allocator, cudnn autotuning, lazy imports
            if name not in best:
                fn()
            best.setdefault(name, [float("inf"), None, 0.0])
    for _ in range(rounds):
        for name, fn in entries:
            slot = best.setdefault(name, [float("inf"), None, 0.0])
            reset_peak(device)
            sync(device)
            start = time.perf_counter()
            slot[1] = fn()
            sync(device)
            slot[0] = min(slot[0], time.perf_counter() - start)
            slot[2] = max(slot[2], peak_mb(device))
    return {name: (t, result, memory) for name, (t, result, memory) in best.items()}


class Floor:
    """The floor's passes: forward (+ backward) of ``batch`` copies of the input at once."""

    def __init__(self, score: ScoreModel, x: torch.Tensor) -> None:
        self.score, self.x = score, x

    def backward(self, batch: int) -> Callable[[], None]:
        xb = self.x.expand(batch, *self.x.shape[1:]).contiguous()

        def forward_backward() -> None:
            xr = xb.detach().requires_grad_(True)
            torch.autograd.grad(self.score(xr).sum(), xr)

        return forward_backward

    def forward(self, batch: int) -> Callable[[], None]:
        xb = self.x.expand(batch, *self.x.shape[1:]).contiguous()

        def forward_only() -> None:
            with torch.no_grad():
                self.score(xb)

        return forward_only


def compare(
    ours: Callable[[], Any],
    reference: Callable[[int], Callable[[], Any]] | None,
    floor: Callable[[int], Callable[[], None]],
    batches: tuple[int, ...],
    device: torch.device,
    rounds: int,
) -> dict[str, Any]:
    """Ours against a reference tried at each batch size and the floor, in turns (:func:`race`).

    Per batch size, a round runs the floor's pass, ours and the reference at that size: ours
    runs as often as the reference and the floor, so no side wins by having more draws of the
    timing noise. Returns our time, result and memory, the reference's best time, its result
    and batch size, and the floor per sample (the best over the batch sizes).
    """
    entries: list[tuple[str, Callable[[], Any]]] = []
    for batch in batches:
        entries.append((f"floor {batch}", floor(batch)))
        entries.append(("ours", ours))
        if reference is not None:
            entries.append((f"reference {batch}", reference(batch)))
    times = race(entries, device, rounds)
    out: dict[str, Any] = dict(zip(("ours_s", "ours", "memory"), times["ours"]))
    out["floor"] = min(times[f"floor {b}"][0] / b for b in batches)
    if reference is not None:
        batch = min(batches, key=lambda b: times[f"reference {b}"][0])
        out.update(reference_s=times[f"reference {batch}"][0], reference=None, batch=batch)
        out["reference"] = times[f"reference {batch}"][1]
    return out


def whole_volume_cases(config: Config, device: torch.device, repeat: int, table: Table) -> None:
    from captum.attr import GradientShap, IntegratedGradients, NoiseTunnel, Occlusion, Saliency
    from monai.visualize import OcclusionSensitivity

    network = make_network(config, device)
    card = ModelCard(in_channels=1, out_channels=2, size_divisible=2 ** (len(config.channels) - 1))
    forward = SegmentationForward(network, card)
    x = torch.rand((1, 1, *config.size), generator=torch.Generator().manual_seed(0)).to(device)
    target = centred_box(config.size, config.size[0] // 2, device)
    score = ScoreModel(forward, target)
    floor = Floor(score, x)
    # Ours runs as inside a run: the batch sizes found by the first call (the warm-up) are kept
    # for the rest, as the runner keeps them for all the methods of a run.
    context = dict(device=device, sample_bytes=measure_sample_bytes(score, x), tuned={})
    batches = config.batches

    def gradient_case(label, passes, ours, reference, reference_name, diff="compare"):
        """One row; ``diff``: "compare" the two maps, or the difference to show (None: -)."""
        r = compare(ours, reference, floor.backward, batches, device, repeat)
        table.add(
            label,
            r["ours_s"],
            r["reference_s"],
            reference_name.format(batch=r["batch"]),
            passes * r["floor"],
            r["memory"],
            max_rel_diff(r["ours"], r["reference"]) if diff == "compare" else diff,
        )
        return r

    ig = create_method(
        "integrated_gradients", {"n_steps": config.steps, "method": "riemann_trapezoid"}
    )
    r = gradient_case(
        f"integrated gradients, {config.steps} steps",
        config.steps,
        lambda: ig.attribute(forward, x, target, Context(**context)),
        lambda b: (
            lambda: IntegratedGradients(score).attribute(
                x, n_steps=config.steps, method="riemann_trapezoid", internal_batch_size=b
            )
        ),
        "captum, best internal batch {batch}",
    )
    print(f"floor: forward+backward {r['floor'] * 1e3:.1f} ms/sample", flush=True)

    # SmoothGrad against captum's NoiseTunnel, its noisy copies batched as it allows.
    level = 0.1
    stdev = level * float(x.max() - x.min())
    sg = create_method("smoothgrad", {"samples": config.samples, "noise_level": level})

    def smoothgrad_reference(b):
        def run():
            torch.manual_seed(3)
            return NoiseTunnel(Saliency(score)).attribute(
                x, nt_samples=config.samples, nt_samples_batch_size=b, stdevs=stdev, abs=False
            )

        return run

    # The maps' difference with one noisy copy per captum batch (the same draws as ours; on
    # CUDA the generators differ, so only the times are compared there).
    same_noise = None
    if device.type == "cpu":
        same_noise = max_rel_diff(
            sg.attribute(forward, x, target, Context(**context, seed=3)), smoothgrad_reference(1)()
        )
    gradient_case(
        f"SmoothGrad, {config.samples} samples",
        config.samples,
        lambda: sg.attribute(forward, x, target, Context(**context, seed=3)),
        smoothgrad_reference,
        "captum NoiseTunnel, best batch {batch}",
        diff=same_noise,
    )

    # A noise-tunnel variant over a path method: VarGrad of integrated gradients, captum with
    # one noisy copy per batch (the same noise as ours) and its internal batch tried.
    nt_samples, nt_steps = max(2, config.samples // 4), max(2, config.steps // 4)
    vg = create_method(
        "smoothgrad",
        {
            "samples": nt_samples,
            "noise_level": level,
            "nt_type": "vargrad",
            "base": "integrated_gradients",
            "base_n_steps": nt_steps,
            "base_method": "riemann_trapezoid",
        },
    )

    def vargrad_reference(b):
        def run():
            torch.manual_seed(3)
            return NoiseTunnel(IntegratedGradients(score)).attribute(
                x,
                nt_type="vargrad",
                nt_samples=nt_samples,
                nt_samples_batch_size=1,
                stdevs=stdev,
                n_steps=nt_steps,
                method="riemann_trapezoid",
                internal_batch_size=b,
            )

        return run

    gradient_case(
        f"VarGrad of IG, {nt_samples} samples x {nt_steps} steps",
        nt_samples * nt_steps,
        lambda: vg.attribute(forward, x, target, Context(**context, seed=3)),
        vargrad_reference,
        "captum NoiseTunnel(IG), best batch {batch}",
        diff="compare" if device.type == "cpu" else None,
    )

    # Gradient SHAP: captum draws every sample in one batch (no batch option, so the same
    # call at each size); the maps are random draws of the same estimator: times only.
    gs = create_method("gradient_shap", {"n_samples": config.samples, "distribution": "noisy"})
    distribution = torch.cat([torch.zeros_like(x), 0.1 * torch.randn_like(x)])
    gradient_case(
        f"gradient SHAP, {config.samples} samples",
        config.samples,
        lambda: gs.attribute(forward, x, target, Context(**context)),
        lambda b: (
            lambda: GradientShap(score).attribute(
                x, baselines=distribution, n_samples=config.samples
            )
        ),
        "captum GradientShap",
        diff=None,
    )

    window, stride = config.occlusion
    occ = create_method("occlusion", {"window": window, "stride": stride, "cover_edges": False})
    windows = 1
    for n in config.size:
        windows *= (n - window) // stride + 1
    r = compare(
        lambda: occ.attribute(forward, x, target, Context(**context)),
        lambda b: (
            lambda: Occlusion(score).attribute(
                x,
                sliding_window_shapes=(1, window, window, window),
                strides=(1, stride, stride, stride),
                baselines=0.0,
                perturbations_per_eval=b,
            )
        ),
        floor.forward,
        batches,
        device,
        repeat,
    )
    print(f"floor: forward {r['floor'] * 1e3:.1f} ms/sample", flush=True)
    table.add(
        f"occlusion, window {window} stride {stride} ({windows} windows)",
        r["ours_s"],
        r["reference_s"],
        f"captum Occlusion, best batch {r['batch']}",
        windows * r["floor"],
        r["memory"],
        max_rel_diff(r["ours"], r["reference"]),
    )

    class Scores(torch.nn.Module):
        def forward(self, inputs):
            return score(inputs)[:, None]

    monai_occlusion = OcclusionSensitivity(
        Scores(),
        mask_size=window,
        n_batch=max(batches),
        mode=0.0,
        overlap=1 - stride / window,
        activate=False,
        verbose=False,
    )
    t_ref, _, _ = timed(lambda: monai_occlusion(x), device, 1)
    table.add(
        "  same windows",
        r["ours_s"],
        t_ref,
        "MONAI OcclusionSensitivity",
        windows * r["floor"],
        r["memory"],
        None,
    )

    # Reduced precision: the same integrated gradients under autocast, against float32.
    reduced = "float16" if device.type == "cuda" else "bfloat16"
    half = SegmentationForward(network, card, precision=reduced)
    times = race(
        [
            ("half", lambda: ig.attribute(half, x, target, Context(**context))),
            ("full", lambda: ig.attribute(forward, x, target, Context(**context))),
        ],
        device,
        repeat,
    )
    (t_half, ours_half, mem_half), (t_full, ours_full, _) = times["half"], times["full"]
    table.add(
        f"integrated gradients, {reduced} autocast",
        t_half,
        t_full,
        "ours in float32",
        None,
        mem_half,
        max_rel_diff(ours_half, ours_full),
    )
    agreement(f"{reduced} vs float32 map", ours_full, ours_half)
    # The same comparison for the default quadrature rule and for saliency.
    for name, params in (
        ("integrated_gradients", {"n_steps": config.steps}),
        ("saliency", {"abs": False}),
    ):
        method = create_method(name, params)
        agreement(
            f"{reduced} vs float32 map, {name} {params}",
            method.attribute(forward, x, target, Context(**context)),
            method.attribute(half, x, target, Context(**context)),
        )


def agreement(label: str, full: torch.Tensor, reduced: torch.Tensor) -> None:
    """Print how much a reduced-precision map agrees with the float32 one."""
    a, b = full.flatten(), reduced.flatten()
    top = max(1, a.numel() // 100)
    shared = (
        len(set(a.abs().topk(top).indices.tolist()) & set(b.abs().topk(top).indices.tolist())) / top
    )
    pearson = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    print(f"  {label}: Pearson r = {pearson:.3f}, top-1% voxels shared {shared:.0%}", flush=True)


def sliding_window_cases(config: Config, device: torch.device, repeat: int, table: Table) -> None:
    from captum.attr import Occlusion
    from monai.inferers import sliding_window_inference

    network = make_network(config, device)
    roi = (config.roi,) * 3
    card = ModelCard(
        in_channels=1,
        out_channels=2,
        roi_size=roi,
        overlap=0.25,
        sw_batch_size=max(config.batches),
        size_divisible=2 ** (len(config.channels) - 1),
    )
    x = torch.rand((1, 1, *config.sliding_volume), generator=torch.Generator().manual_seed(1)).to(
        device
    )
    target = centred_box(config.sliding_volume, config.local_box, device)

    def full_inferer(v):
        return sliding_window_inference(v, roi, card.sw_batch_size, network, overlap=0.25)

    reference_score = ScoreModel(full_inferer, target)

    def reference_gradient():
        xr = x.detach().requires_grad_(True)
        return torch.autograd.grad(reference_score(xr).sum(), xr)[0]

    t_ref, ref, mem_ref = (
        timed(reference_gradient, device, repeat) if config.sliding_reference else (0.0, None, 0.0)
    )
    reference_name = (
        "autograd through MONAI inferer" if config.sliding_reference else "(reference skipped)"
    )

    def diff(ours):
        return max_rel_diff(ours, ref) if ref is not None else None

    whole = SegmentationForward(network, card)
    saliency = create_method("saliency", {"abs": False})
    t_win, ours_all, mem_win = timed(
        lambda: saliency.attribute(whole, x, target, Context(device=device)), device, repeat
    )
    shape = "x".join(map(str, config.sliding_volume))
    table.add(
        f"gradient, {shape}, {config.roi}^3 windows, window by window",
        t_win,
        t_ref,
        reference_name,
        None,
        mem_win,
        diff(ours_all),
    )
    if config.sliding_reference:
        table.add("  reference memory", t_ref, t_ref, reference_name, None, mem_ref, None)

    # DeepLIFT and LRP pair or share through the inferer window by window too, and Grad-CAM
    # runs one window batch at a time; the reference is the same method through the whole
    # sliding-window inference in one graph.
    for name in ("deeplift", "lrp", "gradcam"):
        method = create_method(name, {})
        t_m, ours_m, mem_m = timed(
            lambda m=method: m.attribute(whole, x, target, Context(device=device)), device, repeat
        )
        if config.sliding_reference:
            if name == "gradcam":  # the per-window maps of the whole pass in one graph
                method.streams = False
                one_graph = whole
            else:
                one_graph = WholeInference(whole)
            t_r, ref_m, mem_r = timed(
                lambda m=method, f=one_graph: m.attribute(f, x, target, Context(device=device)),
                device,
                repeat,
            )
        table.add(
            f"{name}, {shape}, window by window",
            t_m,
            t_r if config.sliding_reference else 0.0,
            f"{name} through the whole inference" if config.sliding_reference else "-",
            None,
            mem_m,
            max_rel_diff(ours_m, ref_m) if config.sliding_reference else None,
        )
        if config.sliding_reference:
            table.add("  reference memory", t_r, t_r, "(one graph)", None, mem_r, None)

    local = SegmentationForward(network, card)
    local.restrict_to(target.region.cpu().numpy())
    t_local, ours_local, mem_local = timed(
        lambda: saliency.attribute(local, x, target, Context(device=device)), device, repeat
    )
    usage = local.window_usage(config.sliding_volume)
    table.add(
        f"gradient, centred {config.local_box}^3 ROI ({usage['used']}/{usage['total']} windows)",
        t_local,
        t_ref,
        reference_name,
        None,
        mem_local,
        diff(ours_local),
    )
    if config.sliding_reference:
        # The exactness claim: zero outside the touched windows, equal inside.
        assert float((ours_local - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    if not config.local_occlusion:
        return

    window, stride = config.sliding_occlusion
    occ = create_method("occlusion", {"window": window, "stride": stride, "cover_edges": False})
    t_occ, ours_occ, mem_occ = timed(
        lambda: occ.attribute(local, x, target, Context(device=device)), device, 1
    )
    if config.occlusion_reference:
        t_ref_occ, ref_occ, _ = timed(
            lambda: Occlusion(reference_score).attribute(
                x,
                sliding_window_shapes=(1, window, window, window),
                strides=(1, stride, stride, stride),
                baselines=0.0,
                perturbations_per_eval=1,
            ),
            device,
            1,
        )
        table.add(
            f"occlusion, centred ROI, window {window} stride {stride}",
            t_occ,
            t_ref_occ,
            "captum Occlusion through inferer",
            None,
            mem_occ,
            max_rel_diff(ours_occ, ref_occ),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="timed runs per case after one warm-up (1: no warm-up)",
    )
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="folder keeping the exhaustive occlusion maps of the adaptive rows for later runs",
    )
    parser.add_argument(
        "--adaptive-networks",
        default="demo,unet",
        help="the networks of the adaptive rows, comma-separated: demo, unet (the exhaustive "
        "map of each costs 4,096 passes at 128^3)",
    )
    parser.add_argument(
        "--skip-occlusion-reference",
        action="store_true",
        help="skip captum occlusion through the full inferer (the slowest reference)",
    )
    parser.add_argument(
        "--cases",
        choices=("all", "window-reuse", "nnunet-reuse"),
        default="all",
        help="window-reuse: only the rows of exact window reuse on MONAI sliding windows (issue "
        "22, goals 1 and 3); nnunet-reuse: the same on the nnU-Net example folder (goal 2)",
    )
    parser.add_argument(
        "--nnunet-folder",
        type=Path,
        default=None,
        help="with --cases nnunet-reuse: a folder written by python -m "
        "TorchEsegetaLib.models.nnunet.example (default: built in a temporary folder)",
    )
    parser.add_argument(
        "--nnunet-input-shape",
        default=None,
        help="with --cases nnunet-reuse: explain a synthetic vessel volume of this shape "
        "(I,J,K) at the example input's spacing instead of the folder's own 64x64x40 input",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    config = CONFIGS[args.config]
    if args.skip_occlusion_reference:
        config.occlusion_reference = False
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"TorchEsegeta benchmark, config {args.config}, device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}",
        flush=True,
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    table = Table()
    adaptive = []
    if args.cases == "window-reuse":
        print(Table.header(), flush=True)
        window_reuse_cases(device, table, smoke=args.config == "smoke")
    elif args.cases == "nnunet-reuse":
        print(Table.header(), flush=True)
        shape = args.nnunet_input_shape
        nnunet_reuse_cases(
            device,
            table,
            args.nnunet_folder,
            smoke=args.config == "smoke",
            shape=tuple(int(n) for n in shape.split(",")) if shape else None,  # type: ignore[arg-type]
        )
    else:
        if config.whole_volume or config.sliding:
            print(Table.header(), flush=True)
        if config.whole_volume:
            whole_volume_cases(config, device, args.repeat, table)
        if config.sliding:
            sliding_window_cases(config, device, args.repeat, table)
        if config.adaptive_size:
            adaptive = adaptive_rows(
                config.adaptive_size,
                config.adaptive_window,
                config.adaptive_unet,
                device,
                args.cache,
                networks=tuple(args.adaptive_networks.split(",")),
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "config": args.config,
                    "device": str(device),
                    "device_name": name,
                    "rows": table.rows,
                    "adaptive_rows": adaptive,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
