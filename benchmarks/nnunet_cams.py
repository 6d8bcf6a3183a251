"""Grad-CAM on an nnU-Net v2 folder: TorchEsegeta against nnunetv2-cam, on the same folder and image.

    python benchmarks/nnunet_cams.py --peer-path /work/venv-cams     # about 15 minutes on 2 cores

The folder is the README's example (``python -m TorchEsegetaLib.models.nnunet.example``: 2 folds,
mirroring along 3 axes, a 64 x 64 x 40 image); ``--folder DIR`` reuses one built before. Each
run is its own process (time, and peak memory as the process's maximum resident set), on the
same threads, with the same layer (``--layer``, default: our default, the decoder's last block).

nnunetv2-cam (PyPI) depends on grad-cam, which imports torchvision: torchvision's PyPI wheels are
CUDA builds that replace a CPU torch (and do not load beside it). So the peer is installed apart,
without dependencies, ``pip install --no-deps --target DIR nnunetv2-cam grad-cam ttach
opencv-python-headless``, and run with that folder on its path and a stand-in for torchvision's
image helpers (``Testing/grad_cam_reference.py``; they raise if ever called, and are not on its
CAM path). nnU-Net itself is this environment's.

Printed, per run: seconds of the CAM and of the whole command (loading, preprocessing, the
segmentation or the peer's mask predictions, the CAM, bringing it back), peak memory, the
output's shape, type and geometry, the score it explains, its range, and the Spearman rank
correlation of its map with ours inside nnU-Net's crop. Equal work: both with two folds and no
mirroring (``--disable-tta``; the peer's ``use_mirroring=False``), where each window of each fold
costs one pass without gradients (ours: the blend the score's gradient needs; the peer: the
mask of the window) and one with its backward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_folder(where: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "TorchEsegetaLib.models.nnunet.example", str(where)],
        check=True,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return where


OURS = r"""
import json, resource, sys, time
began = time.perf_counter()
import numpy as np
import TorchEsegetaLib as te
from TorchEsegetaLib.io.images import read_volume
args = json.loads(sys.argv[1])
volume = read_volume(args["image"])
model = {"kind": "nnunet", "path": args["model"], "folds": [0, 1], "mirroring": args["mirroring"],
         "explain_fold": args["explain_fold"]}
params = {"layer": args["layer"]} if args["layer"] else {}
result = te.explain(volume, model=model, target="class:vessel", device="cpu",
                    methods=[{"name": "gradcam", "params": params}])
method = result.methods[0]
np.save(args["out"], method.map)
print(json.dumps({
    "cam_seconds": method.seconds,
    "estimate_seconds": result.timings.get("estimate"),
    "segment_seconds": result.timings.get("segment"),
    "total_seconds": time.perf_counter() - began,
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "cam_peak_mb": method.memory.get("peak_memory_mb"),
    "shape": list(method.map.shape), "dtype": str(method.map.dtype),
    "geometry": "the input's (spacing, origin, direction), written as NIfTI/NRRD with it",
    "score": "mean {output} of class {class!r} over its {region_voxels} predicted voxels".format(**result.target),
    "range": [float(method.map.min()), float(method.map.max())],
}))
"""

PEER = r"""
import json, os, resource, sys, time
began = time.perf_counter()
args = json.loads(sys.argv[1])
sys.path[:0] = [args["peer_path"], args["testing"]]
from grad_cam_reference import pytorch_grad_cam
pytorch_grad_cam()  # imported with torchvision's stand-in where torchvision is absent
import numpy as np, torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2_cam.api import run_cam_for_prediction
predictor = nnUNetPredictor(use_mirroring=args["mirroring"], device=torch.device("cpu"), allow_tqdm=False)
predictor.initialize_from_trained_model_folder(args["model"], (0, 1), "checkpoint_final.pth")
started = time.perf_counter()
[cam] = run_cam_for_prediction(predictor, args["image"], args["work"], args["layer"], target_class=1,
                               method="gradcam", cam_type="3d", device=torch.device("cpu"),
                               save_slices=False)
cam_seconds = time.perf_counter() - started
cam = np.asarray(cam)
np.save(args["out"], cam.astype(np.float32))
print(json.dumps({
    "cam_seconds": cam_seconds,
    "total_seconds": time.perf_counter() - began,
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "shape": list(cam.shape), "dtype": str(cam.dtype),
    "geometry": "none: an array in nnU-Net's (z, y, x) order, no spacing, origin or direction",
    "score": "sum over every class's logits of the window's voxels predicted as class 1 (per window)",
    "range": [float(cam.min()), float(cam.max())],
}))
"""


def run(code: str, arguments: dict, path: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(arguments)],
        env=env,
        capture_output=True,
        text=True,
        cwd=arguments.get("work", None),
    )
    if done.returncode != 0:
        raise RuntimeError(f"run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - began
    return result


def spearman(a, b, inside) -> float:
    import numpy as np
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(a)[inside], np.asarray(b)[inside]).statistic)


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, default=None, help="an example built before")
    parser.add_argument("--peer-path", type=Path, default=None, help="nnunetv2-cam's --target dir")
    parser.add_argument("--layer", default="", help="layer name (default: ours)")
    parser.add_argument("--ours-only", action="store_true")
    parser.add_argument(
        "--equal-work-only",
        action="store_true",
        help="only the two runs at equal work (2 folds, no mirroring): about 5 of the 15 minutes",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        folder = args.folder or build_folder(scratch / "example")
        model = str(folder / "nnUNetTrainer__nnUNetPlans__3d_fullres")
        image = str(folder / "input" / "image.nii.gz")
        layer = args.layer or default_layer(model)
        ours_path, results, maps = [str(ROOT), str(ROOT / "TorchEsegeta")], {}, {}
        settings = [
            ("ours, 2 folds, no mirroring", OURS, True, False, None),
            ("ours, 2 folds x 8 mirrorings", OURS, True, True, None),
            ("ours, --explain-fold 0", OURS, True, True, 0),
        ]
        if not args.ours_only:
            if args.peer_path is None:
                raise SystemExit("give --peer-path (nnunetv2-cam's folder) or --ours-only")
            settings += [
                ("nnunetv2-cam, 2 folds, no mirroring", PEER, False, False, None),
                ("nnunetv2-cam, 2 folds, masks mirrored", PEER, False, True, None),
            ]
        if args.equal_work_only:
            settings = [s for s in settings if s[0].endswith("2 folds, no mirroring")]
        for index, (label, code, ours, mirroring, fold) in enumerate(settings):
            work = scratch / f"run{index}"
            work.mkdir()
            arguments = {
                "image": image,
                "model": model,
                "layer": layer,
                "mirroring": mirroring,
                "explain_fold": fold,
                "out": str(work / "map.npy"),
                "work": str(work),
                "peer_path": str(args.peer_path),
                "testing": str(ROOT / "Testing"),
            }
            path = ours_path if ours else []
            results[label] = run(code, arguments, path)
            found = np.load(work / "map.npy")
            # the peer's array is in nnU-Net's (z, y, x) order: ours is (i, j, k)
            maps[label] = found if ours else found[0].transpose(2, 1, 0)
            print(f"{label}: {results[label]}", flush=True)
        reference = maps["ours, 2 folds, no mirroring"]
        inside = reference != 0
        for label, found in maps.items():
            if found.shape == reference.shape:
                results[label]["spearman_with_ours_no_mirroring"] = spearman(
                    found, reference, inside
                )
    print(f"\nlayer {layer}; image {image}\n")
    print(
        "| run | CAM s | whole command s | peak MB | output | score explained | Spearman vs ours (2 folds, no mirroring) |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, r in results.items():
        output = f"{r['dtype']} {'x'.join(map(str, r['shape']))}; {r['geometry']}"
        rho = r.get("spearman_with_ours_no_mirroring")
        print(
            f"| {label} | {r['cam_seconds']:.1f} | {r['wall_seconds']:.1f} | {r['peak_mb']:.0f} | "
            f"{output} | {r['score']} | {'' if rho is None else f'{rho:.3f}'} |"
        )
    if not args.ours_only:
        ours_s = results["ours, 2 folds, no mirroring"]["cam_seconds"]
        peer_s = results["nnunetv2-cam, 2 folds, no mirroring"]["cam_seconds"]
        print(f"\nequal work (2 folds, no mirroring): ours / peer CAM time = {ours_s / peer_s:.2f}")
    return 0


def default_layer(model: str) -> str:
    """Our default Grad-CAM layer of the folder (what `torchesegeta layers` marks)."""
    done = subprocess.run(
        [sys.executable, "-m", "TorchEsegetaLib.cli", "layers", "--model", model],
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
    )
    for line in done.stdout.splitlines():
        if "default of" in line and "gradcam," in line:
            return line.split()[0]
    raise RuntimeError(f"no default layer in:\n{done.stdout}")


if __name__ == "__main__":
    sys.exit(main())
