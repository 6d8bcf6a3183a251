"""The cost estimate printed before a run against the measured time of the methods, on the demo.

    python benchmarks/estimate.py [--device cpu|cuda] [--method saliency,integrated_gradients,occlusion]

Prints each method's declared passes, its estimate, its measured time and their ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from TorchEsegetaLib.models.demo import demo_volume  # noqa: E402
from TorchEsegetaLib.models.loading import load_model  # noqa: E402
from TorchEsegetaLib.runs.job import MethodSpec  # noqa: E402
from TorchEsegetaLib.runs.runner import explain_volume  # noqa: E402
from TorchEsegetaLib.targets.spec import TargetSpec  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--method", default="saliency,integrated_gradients,occlusion")
    args = parser.parse_args(argv)
    volume, _ = demo_volume()
    specs = [MethodSpec(name) for name in args.method.split(",")]
    result = explain_volume(
        volume, load_model({"kind": "demo"}), TargetSpec(), specs, device=args.device
    )
    print(f"demo volume {'x'.join(map(str, volume.spatial_shape))} on {result.device}")
    print(
        f"{'method':<22} {'passes (fwd + fwd/bwd)':>22} {'estimate s':>11} {'measured s':>11} {'ratio':>6}"
    )
    for method in result.methods:
        estimate = method.estimate
        passes = f"{estimate['forward_passes']} + {estimate['backward_passes']}"
        ratio = estimate["seconds"] / method.seconds
        print(
            f"{method.spec.label:<22} {passes:>22} {estimate['seconds']:11.2f} "
            f"{method.seconds:11.2f} {ratio:6.2f}"
        )
    print(f"time spent measuring the passes: {result.timings['estimate']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
