"""What uncertainty costs next to the segmentation it comes with.

    python benchmarks/uncertainty.py            # long on 2 cores: tta-nnunet is most of it
    python benchmarks/uncertainty.py --quick    # tiny sizes, one repeat: checks that it runs
    python benchmarks/uncertainty.py --only tta-demo --only ensemble   # some of the questions

Three questions, each timed in one run as the best of ``--repeat`` on the same threads:

* ``ensemble``: on nnU-Net (a 2-fold, mirrored model folder made by nnU-Net's own code, the
  anisotropic oblique image of benchmarks/nnunet.py): the segmentation with the 16 members
  recorded from its own passes against the segmentation alone, and writing the three maps. The
  goal is no overhead beyond writing files: the network passes are the segmentation's; what is
  added is each member's sum over the windows and its resampling back to the input grid.
* ``tta-demo``, ``tta-nnunet``: ``tta`` with 8 members (7 passes beyond the segmentation,
  member 0 is the segmentation) on the built-in demo (64^3) and on the nnU-Net model, against
  the segmentation.

All are computed as a run computes them (``explain_job``): denormal floats flushed to zero on
every thread, the flushing checked once on the first segmentation (not timed), the scope held
around everything.

Printed: seconds of each and the ratio to the segmentation.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from TorchEsegetaLib.engine.denormals import DenormalFlush  # noqa: E402
from TorchEsegetaLib.io.volume import Geometry, Volume  # noqa: E402
from TorchEsegetaLib.models.demo.synthetic import make_vessel_volume  # noqa: E402
from TorchEsegetaLib.models.inference import segment  # noqa: E402
from TorchEsegetaLib.models.loading import LoadedModel, load_model  # noqa: E402
from TorchEsegetaLib.models.uncertainty import UncertaintySpec  # noqa: E402
from TorchEsegetaLib.runs.case import prepare_case  # noqa: E402
from TorchEsegetaLib.runs.uncertainty import (  # noqa: E402
    QUANTITIES,
    compute_uncertainty,
    plan_members,
    segment_recording_members,
)
from TorchEsegetaLib.targets.spec import TargetSpec  # noqa: E402


def best_of(repeat: int, *functions):
    """The best time of each function over ``repeat`` rounds, the functions taking turns in
    each round (so a machine whose load changes weighs on them alike), and their last results."""
    times: list[list[float]] = [[] for _ in functions]
    results: list = [None] * len(functions)
    for _ in range(repeat):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            results[index] = function()
            times[index].append(time.perf_counter() - start)
    return [min(t) for t in times], results


def nnunet_volume(shape: tuple[int, int, int]) -> Volume:
    image, _ = make_vessel_volume(shape, 11)
    image[:3] = 0
    c, s = np.cos(0.4), np.sin(0.4)
    direction = (c, 0, s, 0, 1, 0, -s, 0, c)
    return Volume(image, Geometry(shape, (2.2, 0.7, 0.62), (10.0, -4.0, 2.5), direction))


CPU = torch.device("cpu")
#: what --only picks: the ensemble on nnU-Net, tta on nnU-Net, tta on the demo
QUESTIONS = ("ensemble", "tta-nnunet", "tta-demo")


def checked_flush(model: LoadedModel, volume: Volume) -> DenormalFlush:
    """A run's denormal flushing, checked on a first segmentation (not timed)."""
    flush = DenormalFlush(True, CPU)
    segment(model, volume, CPU, flush_denormals=flush)
    return flush


def ensemble_overhead(model: LoadedModel, volume: Volume, repeat: int, out: Path) -> None:
    from TorchEsegetaLib.io.images import write_volume

    flush = checked_flush(model, volume)

    def recorded():
        return segment_recording_members(model, volume, CPU, 1, flush)[1]

    with flush.scope():
        (plain_s, recorded_s), (_, statistics) = best_of(
            repeat, lambda: segment(model, volume, CPU, flush_denormals=flush), recorded
        )
    maps = statistics.maps()

    def write():
        for quantity in QUANTITIES:
            write_volume(maps[quantity], volume.geometry, out / f"{quantity}.nii.gz")

    (write_s,), _ = best_of(repeat, write)
    print(
        f"ensemble, nnU-Net ({statistics.count} members: 2 folds x 8 mirrorings): segmentation "
        f"{plain_s:.2f} s; with the members recorded {recorded_s:.2f} s (ratio "
        f"{recorded_s / plain_s:.2f}, +{recorded_s - plain_s:.2f} s); writing the three maps "
        f"{write_s:.2f} s; network passes beyond the segmentation's: 0"
    )


def tta_overhead(name: str, model: LoadedModel, volume: Volume, repeat: int) -> None:
    spec = UncertaintySpec("tta", members=8)
    flush = checked_flush(model, volume)
    case = prepare_case(volume, model, TargetSpec(), CPU, flush, uncertainty=[spec])

    def run():
        planned = plan_members([spec], case, model, 0)
        return compute_uncertainty(planned, case, model)

    with flush.scope():
        (segment_s, tta_s), (_, (found,)) = best_of(
            repeat, lambda: segment(model, volume, CPU, flush_denormals=flush), run
        )
    print(
        f"tta, 8 members, {name}: segmentation {segment_s:.2f} s; the maps {tta_s:.2f} s "
        f"(ratio {tta_s / segment_s:.2f}; 7 passes beyond the segmentation's); mean entropy "
        f"in the class {found.summary['mean_entropy_in_target']:.3g} nats"
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    from TorchEsegetaLib.models.demo import demo_volume
    from TorchEsegetaLib.models.nnunet.example import build_model_folder, vessel_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument(
        "--only",
        choices=QUESTIONS,
        action="append",
        help="measure only this question (repeatable; default all three)",
    )
    args = parser.parse_args(argv)
    asked = args.only or QUESTIONS
    repeat = 1 if args.quick else args.repeat
    shape = (12, 16, 18) if args.quick else (24, 40, 44)
    features = (2, 8) if args.quick else (8, 32)
    print(f"{torch.get_num_threads()} threads, CPU, best of {repeat}")
    if "ensemble" in asked or "tta-nnunet" in asked:
        with tempfile.TemporaryDirectory() as work:
            folder = build_model_folder(
                Path(work),
                vessel_cases(
                    3 if args.quick else 4,
                    (10, 16, 18) if args.quick else (20, 32, 36),
                    (2.0, 0.7, 0.6),
                ),
                folds=(0, 1),
                base_features=features[0],
                max_features=features[1],
            )
            nnunet = load_model({"kind": "nnunet", "path": str(folder), "folds": [0, 1]})
            volume = nnunet_volume(shape)
            print(f"nnU-Net image {shape} at (2.2, 0.7, 0.62) mm, oblique")
            if "ensemble" in asked:
                ensemble_overhead(nnunet, volume, repeat, Path(work))
            if "tta-nnunet" in asked:
                tta_overhead(f"nnU-Net {shape}", nnunet, volume, repeat)
    if "tta-demo" in asked:
        demo, _ = demo_volume()
        if args.quick:
            demo = Volume(demo.array[:, :32, :32, :32].copy(), Geometry((32, 32, 32)))
        tta_overhead(f"demo {demo.spatial_shape}", load_model({"kind": "demo"}), demo, repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
