"""What ``crop_margin`` costs in accuracy and saves in time, on whole-volume models.

    python benchmarks/crop.py            # about a minute on 2 cores

For untrained 64^3 MONAI UNets (channels 8-16-32, batch or instance normalisation) and the demo
model on its own input, a small ROI target is explained on the whole volume and on crops with
margins 8 and 16 voxels. Printed per row: the share of the volume kept, what the run records
(target score change, saliency relative L2 and Pearson r inside the box against the whole
volume), and, on the demo, integrated gradients' own deviation and speed-up.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from TorchEsegetaLib.io.volume import Geometry, Volume  # noqa: E402
from TorchEsegetaLib.models.card import ModelCard  # noqa: E402
from TorchEsegetaLib.models.loading import LoadedModel  # noqa: E402
from TorchEsegetaLib.runs.api import explain  # noqa: E402

MARGINS = (8, 16)


def row(label: str, margin: int, crop: dict, extra: str = "") -> None:
    saliency = crop["saliency"]
    print(
        f"| {label:<22} | {margin:>6} | {crop['share_of_volume']:>5.0%} "
        f"| {crop['score']['relative_change']:>12.4f} | {saliency['relative_l2']:>11.3f} "
        f"| {saliency['pearson_in_box']:>9.4f} | {extra}",
        flush=True,
    )


def untrained(norm: str) -> None:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    network = UNet(3, 1, 2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1, norm=norm)
    model = LoadedModel(
        network.eval(), ModelCard(in_channels=1, out_channels=2, size_divisible=4), {}, None
    )
    array = np.random.default_rng(0).random((1, 64, 64, 64)).astype(np.float32)
    volume = Volume(array, Geometry((64, 64, 64)))
    for margin in MARGINS:
        result = explain(
            volume,
            model=model,
            target="roi:30,30,30:33,33,33",
            methods=["saliency"],
            device="cpu",
            crop_margin=margin,
        )
        row(f"UNet, {norm.lower()} norm", margin, result.target["crop"])


def demo() -> None:
    from TorchEsegetaLib.models.demo import demo_volume

    volume, truth = demo_volume()
    vessels = np.argwhere(truth > 0)
    centre = vessels[np.argmin(((vessels - np.asarray(truth.shape) / 2) ** 2).sum(axis=1))]
    low, high = centre - 2, centre + 2
    target = f"roi:{','.join(map(str, low))}:{','.join(map(str, high))}"

    def run(margin):
        started = time.perf_counter()
        result = explain(
            volume,
            model="demo",
            target=target,
            methods=["integrated_gradients"],
            device="cpu",
            crop_margin=margin,
        )
        return result, time.perf_counter() - started

    exact, exact_s = run(None)
    reference = exact.maps["integrated_gradients"].ravel()
    for margin in MARGINS:
        result, seconds = run(margin)
        ig = result.maps["integrated_gradients"].ravel()
        deviation = np.linalg.norm(ig - reference) / np.linalg.norm(reference)
        pearson = np.corrcoef(ig, reference)[0, 1]
        method_s = [m.seconds for m in result.methods][0]
        exact_method_s = [m.seconds for m in exact.methods][0]
        row(
            "demo",
            margin,
            result.target["crop"],
            f"IG: relative L2 {deviation:.3f}, r {pearson:.3f}, "
            f"{exact_method_s / method_s:.0f}x faster ({exact_method_s:.2f} s -> {method_s:.2f} s)",
        )


def main() -> int:
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(
        "| model                  | margin | kept  | score change | saliency L2 | saliency r | "
        "notes\n|---|---|---|---|---|---|---|",
        flush=True,
    )
    untrained("BATCH")
    untrained("INSTANCE")
    demo()
    return 0


if __name__ == "__main__":
    sys.exit(main())
