"""Agreement of TorchEsegeta's bundle inference with MONAI's own (ConfigParser, its transforms,
inferer and postprocessing) on the demo volume, written with an oblique direction.

    python benchmarks/bundle_agreement.py

Prints, per bundle, the Dice of the two labelmaps, the number of voxels that differ and the
largest difference of the probabilities (both on the input grid).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from TorchEsegetaLib.io.images import read_volume, write_volume  # noqa: E402
from TorchEsegetaLib.io.volume import Geometry  # noqa: E402
from TorchEsegetaLib.models.bundles.reference import dice, reference_inference  # noqa: E402
from TorchEsegetaLib.models.demo import demo_volume  # noqa: E402
from TorchEsegetaLib.models.demo.export import PREPROCESSING, write_bundle  # noqa: E402
from TorchEsegetaLib.models.inference import segment  # noqa: E402
from TorchEsegetaLib.models.loading import load_model  # noqa: E402

#: 30 degrees about the second axis.
OBLIQUE = (0.866025, 0.0, 0.5, 0.0, 1.0, 0.0, -0.5, 0.0, 0.866025)

RESIZE_PERCENTILES = [
    {"_target_": "LoadImaged", "keys": "image"},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "image", "pixdim": [0.7, 0.7, 0.9], "mode": "bilinear"},
    {"_target_": "Resized", "keys": "image", "spatial_size": [64, 64, 64], "mode": "trilinear"},
    {
        "_target_": "ScaleIntensityRangePercentilesd",
        "keys": "image",
        "lower": 1,
        "upper": 99,
        "b_min": -1.5,
        "b_max": 3.5,
        "clip": True,
    },
]
BUNDLES = {
    "Orientation+Spacing+Resize+Percentiles, TorchScript": (RESIZE_PERCENTILES, "ts"),
    "Orientation+Spacing+Resize+Percentiles, network_def": (RESIZE_PERCENTILES, "pt"),
    "demo export (Orientation+Spacing+NormalizeIntensity+DivisiblePad), TorchScript": (
        PREPROCESSING,
        "ts",
    ),
}


def main() -> int:
    volume, _ = demo_volume()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        geometry = Geometry(
            volume.geometry.size, volume.geometry.spacing, (10.0, -20.0, 5.0), OBLIQUE
        )
        image = root / "mra.nii.gz"
        write_volume(volume.array[0], geometry, image)
        for index, (name, (preprocessing, form)) in enumerate(BUNDLES.items()):
            bundle = write_bundle(root / f"bundle{index}", form, preprocessing)
            model = load_model({"kind": "bundle", "path": str(bundle)})
            reference = reference_inference(model, image)
            ours = segment(model, read_volume(image))
            difference = float(np.abs(ours.probabilities - reference["probabilities"]).max())
            rows.append(
                (
                    name,
                    dice(ours.labelmap, reference["labels"]),
                    int((ours.labelmap != reference["labels"]).sum()),
                    difference,
                    int((ours.labelmap > 0).sum()),
                )
            )
    print(f"{'bundle':<82} {'Dice':>6} {'differ':>7} {'max |dp|':>9} {'vessel voxels':>13}")
    for name, score, differ, difference, vessel in rows:
        print(f"{name:<82} {score:6.4f} {differ:7d} {difference:9.2e} {vessel:13d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
