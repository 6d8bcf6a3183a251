"""Where the stripes of integrated gradients and DeepLIFT and the checkerboard of LRP on the demo
come from: experiments that separate the network, the integration rule, the baseline and our code.

    python benchmarks/artefacts.py                 # the demo network: a few minutes on 2 cores
    python benchmarks/artefacts.py --train         # + 5 down/up-sampling variants, trained as the demo
    python benchmarks/artefacts.py --variants-only --iterations 100   # table 5 alone, as quoted
    python benchmarks/artefacts.py --quick         # the checks the test suite runs (DeepLIFT only)

The measure: a **stripe index** along an axis is the Pearson correlation, over a set of voxels,
between a map and (-1)^index along that axis: 0 when the map has no period-2 pattern tied to the
voxel grid, +-1 for pure alternating stripes. It is taken inside the predicted vessels (where
the stripes show) and over the background (where LRP's checkerboard shows). For LRP the
**odd/even ratio** is the mean |relevance| of background voxels with an odd index along an
axis over that of voxels with an even one (1: no checkerboard).

What each table tests (the findings are written up in docs/artefacts.md):
1. the integration rule, the number of steps and the baseline (integrated gradients), and
   captum's integrated gradients on the same model (is it our code?);
2. the gradient on the images along the path (where does the pattern enter the integral?);
3. the input shifted by one voxel (does the pattern follow the anatomy or the network's grid?);
4. LRP's background relevance by the parity of the voxel index;
5. (--train) the same methods on networks that differ only in how they down- and up-sample
   (trained networks are kept in --cache, so a second run only explains).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from TorchEsegetaLib.engine.context import Context  # noqa: E402
from TorchEsegetaLib.methods import ScoreModel, create_method, input_gradients  # noqa: E402
from TorchEsegetaLib.models.demo import demo_card, demo_volume  # noqa: E402
from TorchEsegetaLib.models.loading import LoadedModel, load_model  # noqa: E402
from TorchEsegetaLib.runs.case import PreparedCase, prepare_case  # noqa: E402
from TorchEsegetaLib.targets.spec import TargetSpec  # noqa: E402


def stripe_index(values: np.ndarray, voxels: np.ndarray) -> list[float]:
    """Pearson r between ``values`` and (-1)^index along each axis, over the ``voxels`` mask."""
    indices = np.indices(values.shape)
    picked = values[voxels].astype(np.float64)
    if picked.std() == 0:
        return [0.0, 0.0, 0.0]
    return [
        float(np.corrcoef(picked, ((-1.0) ** indices[axis])[voxels])[0, 1]) for axis in range(3)
    ]


def odd_even_ratio(values: np.ndarray, voxels: np.ndarray) -> list[float]:
    """Mean |value| of the ``voxels`` with an odd index along each axis over those with an even one."""
    indices = np.indices(values.shape)
    magnitude = np.abs(values)
    return [
        float(
            magnitude[voxels & (indices[axis] % 2 == 1)].mean()
            / magnitude[voxels & (indices[axis] % 2 == 0)].mean()
        )
        for axis in range(3)
    ]


def prepare(model: LoadedModel | None = None) -> PreparedCase:
    volume, _ = demo_volume()
    model = model or load_model({"kind": "demo"})
    return prepare_case(volume, model, TargetSpec(), torch.device("cpu"))


def attribute(
    case: PreparedCase, method: str, params: dict | None = None, x=None, target=None
) -> np.ndarray:
    x = case.x if x is None else x
    target = case.bound if target is None else target
    result = create_method(method, params or {}).attribute(case.forward, x, target, Context())
    return result[0, 0].detach().double().numpy()


def fmt(values: list[float], digits: int = 2) -> str:
    return " ".join(f"{v:+.{digits}f}" for v in values)


#: Table 1: the maps whose stripes are compared, and how each is made.
MAPS: list[tuple[str, str, dict[str, Any]]] = [
    ("gradient (saliency, signed)", "saliency", {"abs": False}),
    ("input x gradient", "input_x_gradient", {}),
    ("integrated gradients (default: Gauss-Legendre, 32 steps, zero baseline)", "integrated_gradients", {}),
    ("  trapezoid rule, 32 steps", "integrated_gradients", {"method": "riemann_trapezoid"}),
    ("  trapezoid rule, 128 steps", "integrated_gradients", {"method": "riemann_trapezoid", "n_steps": 128}),
    ("  left Riemann rule, 32 steps", "integrated_gradients", {"method": "riemann_left"}),
    ("  blurred baseline", "integrated_gradients", {"baseline": "blur"}),
    ("DeepLIFT (zero baseline)", "deeplift", {}),
    ("DeepLIFT (blurred baseline)", "deeplift", {"baseline": "blur"}),
    ("LRP (epsilon-plus)", "lrp", {}),
]  # fmt: skip


def table_methods(case: PreparedCase, quick: bool) -> dict[str, np.ndarray]:
    region = case.bound.region.cpu().numpy()
    print(
        "\n1. Stripe index (r with (-1)^index along i, j, k) in the vessels and in the background"
    )
    print("| map | vessels i j k | background i j k | s |\n|---|---|---|---|")
    maps = {}
    rows = [row for row in MAPS if row[1] == "deeplift"] if quick else MAPS
    for label, method, params in rows:
        start = time.perf_counter()
        maps[label] = values = attribute(case, method, params)
        seconds = time.perf_counter() - start
        print(
            f"| {label} | {fmt(stripe_index(values, region))} | "
            f"{fmt(stripe_index(values, ~region))} | {seconds:.1f} |",
            flush=True,
        )
    if not quick:
        from captum.attr import IntegratedGradients

        score = ScoreModel(case.forward, case.bound)
        start = time.perf_counter()
        with torch.enable_grad():
            reference = IntegratedGradients(score).attribute(
                case.x, torch.zeros_like(case.x), n_steps=32, method="gausslegendre"
            )
        seconds = time.perf_counter() - start
        reference = reference[0, 0].detach().double().numpy()
        ours = maps[MAPS[2][0]]
        difference = np.abs(ours - reference).max() / np.abs(reference).max()
        print(
            f"| captum IntegratedGradients, same settings (max difference to ours "
            f"{difference:.1e} of its largest value) | {fmt(stripe_index(reference, region))} | "
            f"{fmt(stripe_index(reference, ~region))} | {seconds:.1f} |"
        )
    return maps


def table_path(case: PreparedCase) -> None:
    region = case.bound.region.cpu().numpy()
    print("\n2. The gradient at points alpha * x of the path from the zero baseline to the input")
    print("| alpha | gradient norm | stripe index in the vessels i j k |\n|---|---|---|")
    score = ScoreModel(case.forward, case.bound)
    for alpha in (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0):
        _, gradient = input_gradients(score, case.x * alpha)
        values = gradient[0, 0].double().numpy()
        print(
            f"| {alpha:.2f} | {np.linalg.norm(values):.2e} | {fmt(stripe_index(values, region))} |"
        )


def shifted(case: PreparedCase, method: str, params: dict, axis: int) -> tuple[list, list]:
    """The map of the input moved by one voxel along ``axis``: its stripe index on the grid the
    network saw (the shifted one) and on the anatomy's grid (the map moved back)."""
    region = case.bound.region.cpu().numpy()
    x = torch.roll(case.x, 1, dims=2 + axis)
    target = case.bound.replace(region=torch.roll(case.bound.region, 1, dims=axis))
    on_network_grid = attribute(case, method, params, x, target)
    on_anatomy = np.roll(on_network_grid, -1, axis=axis)
    return stripe_index(on_network_grid, np.roll(region, 1, axis=axis)), stripe_index(
        on_anatomy, region
    )


def table_shift(case: PreparedCase, quick: bool) -> list[dict[str, Any]]:
    print(
        "\n3. The input and the target region rolled by one voxel along an axis: stripe index "
        "on the network's grid and on the anatomy's"
    )
    print("| map | shift along | network's grid i j k | anatomy's grid i j k |\n|---|---|---|---|")
    rows = []
    methods = [("DeepLIFT", "deeplift", {})]
    if not quick:
        methods.append(("integrated gradients", "integrated_gradients", {}))
    for label, method, params in methods:
        for axis in (1,) if quick else (0, 1, 2):
            grid, anatomy = shifted(case, method, params, axis)
            rows.append({"method": method, "axis": axis, "grid": grid, "anatomy": anatomy})
            print(f"| {label} | {'ijk'[axis]} | {fmt(grid)} | {fmt(anatomy)} |", flush=True)
    return rows


def table_lrp(case: PreparedCase, lrp: np.ndarray) -> None:
    region = case.bound.region.cpu().numpy()
    background = ~region
    odd = (np.indices(region.shape) % 2).sum(axis=0)
    means = [np.abs(lrp[background & (odd == n)]).mean() for n in range(4)]
    print("\n4. LRP over the background: mean |relevance| by the number of odd voxel indices")
    print("| odd indices | 0 | 1 | 2 | 3 |\n|---|---|---|---|---|")
    print("| mean / mean at 0 | " + " | ".join(f"{m / means[0]:.2f}" for m in means) + " |")
    print(f"odd/even ratio along i, j, k: {fmt(odd_even_ratio(lrp, background))}")


# --- 5. the same methods on networks that differ only in their down- and up-sampling ---------


class SamplingUNet(torch.nn.Module):
    """The demo UNet's topology (channels 8-16-32, two levels, instance norm, ReLU; the first
    layer already down-samples, the last one up-samples to full resolution and a 3^3 convolution
    follows each up-sampling), with the down- and up-sampling chosen:

    down: "conv3s2" (a 3^3 convolution of stride 2, as MONAI's UNet), "conv2s2" (2^3, stride 2:
    every voxel seen by exactly one output), "pool" (2^3 max pooling, then a 3^3 convolution),
    "avgpool" (2^3 average pooling, then a 3^3 convolution).
    up: "convT3s2" (a 3^3 transposed convolution of stride 2, as MONAI's UNet), "convT2s2",
    "linear" (trilinear interpolation, then a 3^3 convolution).
    """

    def __init__(self, down: str, up: str):
        super().__init__()
        self.down0 = self._down(down, 1, 8)
        self.down1 = self._down(down, 8, 16)
        self.bottom = self._block(torch.nn.Conv3d(16, 32, 3, padding=1), 32)
        self.up1 = self._up(up, 48, 8)
        self.up0 = self._up(up, 16, 8)
        self.head = torch.nn.Conv3d(8, 2, 3, padding=1)

    @staticmethod
    def _block(layer: torch.nn.Module, channels: int) -> torch.nn.Sequential:
        return torch.nn.Sequential(layer, torch.nn.InstanceNorm3d(channels), torch.nn.ReLU())

    def _down(self, kind: str, cin: int, cout: int) -> torch.nn.Module:
        if kind == "conv3s2":
            return self._block(torch.nn.Conv3d(cin, cout, 3, stride=2, padding=1), cout)
        if kind == "conv2s2":
            return self._block(torch.nn.Conv3d(cin, cout, 2, stride=2), cout)
        pool = torch.nn.MaxPool3d(2) if kind == "pool" else torch.nn.AvgPool3d(2)
        return torch.nn.Sequential(
            pool, self._block(torch.nn.Conv3d(cin, cout, 3, padding=1), cout)
        )

    def _up(self, kind: str, cin: int, cout: int) -> torch.nn.Module:
        if kind == "convT3s2":
            layer: torch.nn.Module = torch.nn.ConvTranspose3d(
                cin, cout, 3, stride=2, padding=1, output_padding=1
            )
        elif kind == "convT2s2":
            layer = torch.nn.ConvTranspose3d(cin, cout, 2, stride=2)
        else:
            layer = torch.nn.Sequential(
                torch.nn.Upsample(scale_factor=2, mode="trilinear"),
                torch.nn.Conv3d(cin, cout, 3, padding=1),
            )
        return torch.nn.Sequential(
            self._block(layer, cout), self._block(torch.nn.Conv3d(cout, cout, 3, padding=1), cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.down0(x)
        quarter = self.down1(half)
        up_half = self.up1(torch.cat([self.bottom(quarter), quarter], dim=1))
        return self.head(self.up0(torch.cat([up_half, half], dim=1)))


#: The most telling first: the up-sampling changed, the down-sampling changed, both, the demo's
#: sampling without MONAI's residual units, kernels the size of the stride (each voxel seen once).
VARIANTS = [
    ("conv3s2", "linear"),
    ("pool", "convT3s2"),
    ("avgpool", "linear"),
    ("conv3s2", "convT3s2"),
    ("conv2s2", "convT2s2"),
]


def trained_variant(down: str, up: str, cache: Path, iterations: int) -> torch.nn.Module:
    """The variant trained as the demo (its data, loss, seed, iterations), cached on disk."""
    from TorchEsegetaLib.models.demo import train

    path = cache / f"{down}-{up}-{iterations}.pt"
    train.seed_training()
    torch.set_num_threads(1)  # a busy machine trains faster on one thread than on two
    network = SamplingUNet(down, up)
    if path.is_file():
        network.load_state_dict(torch.load(path, weights_only=True))
    else:
        print(f"training {down}/{up} ({iterations} iterations) ...", flush=True)
        seconds = train.fit(network, iterations)
        print(f"trained {down}/{up} in {seconds:.0f} s", flush=True)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(network.state_dict(), path)
    return network.eval()


def table_variants(cache: Path, iterations: int) -> None:
    from TorchEsegetaLib.models.demo import train

    print(
        "\n5. Networks that differ only in their sampling, trained as the demo "
        f"({iterations} iterations): stripe index in the vessels along i j k, and LRP's "
        "odd/even ratio over the background"
    )
    print(
        "| down / up | demo Dice | integrated gradients | DeepLIFT | gradient | LRP odd/even |\n"
        "|---|---|---|---|---|---|"
    )
    rows: list[tuple[str, Any]] = [("MONAI UNet of the demo (its weights)", None)]
    rows += [(f"{down} / {up}", (down, up)) for down, up in VARIANTS]
    for label, variant in rows:
        if variant is None:
            model = load_model({"kind": "demo"})
        else:
            network = trained_variant(*variant, cache, iterations)
            torch.use_deterministic_algorithms(False)
            model = LoadedModel(network, demo_card(), {"kind": "variant"}, None)
        dice = train.evaluate(model.network, [7])[7]
        case = prepare(model)
        region = case.bound.region.cpu().numpy()
        cells = [label, f"{dice:.3f}"]
        for method, params in (
            ("integrated_gradients", {}),
            ("deeplift", {}),
            ("saliency", {"abs": False}),
        ):
            cells.append(fmt(stripe_index(attribute(case, method, params), region)))
        cells.append(fmt(odd_even_ratio(attribute(case, "lrp"), ~region)))
        print("| " + " | ".join(cells) + " |", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="DeepLIFT only (the test suite's run)")
    parser.add_argument("--train", action="store_true", help="also train and compare the variants")
    parser.add_argument(
        "--variants-only", action="store_true", help="only table 5 (implies --train)"
    )
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--cache", type=Path, default=Path("artefact-variants"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.variants_only:
        table_variants(args.cache, args.iterations)
        return {}
    case = prepare()
    maps = table_methods(case, args.quick)
    shifts = table_shift(case, args.quick)
    if not args.quick:
        table_path(case)
        table_lrp(case, maps["LRP (epsilon-plus)"])
    if args.train:
        table_variants(args.cache, args.iterations)
    region = case.bound.region.cpu().numpy()
    return {
        "deeplift": stripe_index(maps["DeepLIFT (zero baseline)"], region),
        "shifts": shifts,
    }


if __name__ == "__main__":
    main()
