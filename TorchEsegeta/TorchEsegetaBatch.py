"""Explain many cases without the panel; one run folder (and optionally one .mrb scene) per case.

Inside Slicer's batch mode::

    Slicer --no-splash --no-main-window --python-script <module folder>/TorchEsegetaBatch.py \\
        --input case1.nii.gz --input case2_t1.nii.gz,case2_t2.nii.gz \\
        --model demo --method saliency --method integrated_gradients:n_steps=16 \\
        --out results --mrb

It also runs with a plain Python interpreter where the ``slicer-core`` wheel is installed.
A case whose run folder already holds the same job is skipped (so a rerun finishes what is
missing); ``--overwrite`` recomputes it. Exit status: 0 when every case succeeded, 1 when some
case failed (the others still run), 2 for invalid arguments.
"""

import argparse
import sys
import tempfile
import traceback
from pathlib import Path

# Slicer runs this file as a script: make the module's packages importable from here too.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import slicer  # noqa: E402
from TorchEsegetaSlicer import enginePath  # noqa: E402

enginePath.ensureEngineImportable()

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
EXIT_OK, EXIT_CASE_FAILED, EXIT_USAGE = 0, 1, 2


def parseArguments(argv):
    parser = argparse.ArgumentParser(
        prog="TorchEsegetaBatch.py",
        description="Explain a segmentation model on many cases: run folders and .mrb scenes.",
    )
    parser.add_argument(
        "--input",
        action="append",
        required=True,
        help="one case: an image file, or comma-separated files (one per model input channel); "
        "a folder adds each image file in it as a case; repeat for more cases",
    )
    parser.add_argument(
        "--model",
        default="demo",
        help="demo, a TorchScript file, a MONAI bundle folder, or a checkpoint with --network",
    )
    parser.add_argument("--network", help="monai.networks.nets class name for a checkpoint")
    parser.add_argument("--network-kwargs", default="{}", help="the network's arguments (JSON)")
    parser.add_argument(
        "--trust-model",
        "--trust-bundle",
        dest="trust_model",
        action="store_true",
        help="run the code a MONAI bundle or nnU-Net folder names (only for a folder from a "
        "source you trust; see docs/safety.md)",
    )
    parser.add_argument(
        "--method",
        action="append",
        help="method to run, repeatable (default: saliency); parameters as NAME:key=value,key=value",
    )
    parser.add_argument(
        "--target", default="class", help="class, class:NAME, roi:i0,j0,k0:i1,j1,k1 or voxel:i,j,k"
    )
    parser.add_argument("--out", required=True, help="folder receiving one run folder per case")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--budget", type=float, help="time budget per method, in seconds")
    parser.add_argument("--mrb", action="store_true", help="also save a styled .mrb scene per case")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute cases that have a run folder (default: skip those of the same job)",
    )
    return parser.parse_args(argv)


def cases(inputs):
    """``{case name: [image files]}`` from the --input values."""
    found = {}
    for value in inputs:
        path = Path(value)
        if path.is_dir():
            groups = [[str(p)] for p in sorted(path.iterdir()) if _isImage(p)]
        else:
            groups = [[part.strip() for part in value.split(",") if part.strip()]]
        for files in groups:
            name = _stem(Path(files[0]))
            unique, index = name, 1
            while unique in found:
                index += 1
                unique = f"{name}-{index}"
            found[unique] = files
    return found


def methodEntries(values):
    """--method values as Job method entries."""
    entries = []
    for value in values or ["saliency"]:
        name, _, params = value.partition(":")
        pairs = [pair.split("=", 1) for pair in params.split(",") if pair.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"method {value!r}: write parameters as NAME:key=value,key=value")
        entries.append({"name": name.strip(), "params": {k.strip(): v.strip() for k, v in pairs}})
    return entries


def explainCase(name, files, args, scene):
    """Run one case; returns its run folder (and writes ``<name>.mrb`` with --mrb)."""
    from TorchEsegetaSlicer import loadRunFolder, saveSceneBundle, volumeNodeFromArray

    from TorchEsegetaLib.cli.common import model_from_args
    from TorchEsegetaLib.io.images import read_volume
    from TorchEsegetaLib.runs.job import Job
    from TorchEsegetaLib.runs.runner import run_job

    out = Path(args.out).expanduser().absolute()
    job = Job(
        images=files,
        model=model_from_args(args),  # --trust-model: "trust" for a bundle or nnU-Net folder
        target=args.target,
        methods=methodEntries(args.method),
        output=str(out / name),
        device=args.device,
        figures=not args.no_figures,
        overwrite=args.overwrite,
        method_budget_s=args.budget,
    )
    runFolder = out / name
    if args.overwrite or not doneBefore(runFolder, job):
        runFolder = run_job(
            job, progress=lambda event: print(f"{name}: {event.get('message', '')}")
        )
    else:
        print(f"{name}: done before (its run folder holds this job), skipped")
    if args.mrb:
        channels = []
        for index, path in enumerate(files):
            volume = read_volume(path)
            suffix = "" if len(files) == 1 else f" channel {index + 1}"
            channels.append(
                volumeNodeFromArray(scene, volume.array[0], volume.geometry, f"{name}{suffix}")
            )
        loadRunFolder(scene, runFolder, channels[0])
        saveSceneBundle(scene, out / f"{name}.mrb")
    return runFolder


def doneBefore(runFolder, job):
    """Whether ``runFolder`` is a run of ``job`` (as ``torchesegeta batch`` resumes); a folder of
    another job is an error naming what differs, never replaced without --overwrite."""
    from TorchEsegetaLib.cohort.plan import differences
    from TorchEsegetaLib.runs.evaluation import read_record

    if not runFolder.exists():
        return False
    changed = differences(read_record(runFolder), {"job": job.to_dict()})
    if changed:
        raise ValueError(
            f"{runFolder} holds a run of another job ({', '.join(changed)} differ); pass "
            "--overwrite to replace it"
        )
    return True


def main(argv=None):
    from TorchEsegetaSlicer.sceneSetup import hasApplication, newScene

    args = parseArguments(sys.argv[1:] if argv is None else argv)
    try:
        methodEntries(args.method)
        found = cases(args.input)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not found:
        print(
            "error: no input image found; give image files or folders with --input", file=sys.stderr
        )
        return EXIT_USAGE
    failed = []
    for name, files in found.items():
        if hasApplication():
            slicer.mrmlScene.Clear(0)
            scene = slicer.mrmlScene
        else:
            scene, _ = newScene(tempfile.mkdtemp(prefix="TorchEsegeta-batch-"))
        try:
            runFolder = explainCase(name, files, args, scene)
            print(f"{name}: done -> {runFolder}")
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            print(f"{name}: FAILED: {e}", file=sys.stderr)
            failed.append(name)
    print(f"{len(found) - len(failed)} of {len(found)} case(s) explained")
    return EXIT_CASE_FAILED if failed else EXIT_OK


def _isImage(path):
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _stem(path):
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


if __name__ == "__main__":
    status = main()
    from TorchEsegetaSlicer.sceneSetup import hasApplication

    if hasApplication():
        slicer.util.exit(status)
    else:
        sys.exit(status)
