"""MONAI's own inference of a bundle, to check TorchEsegeta's against it.

The bundle's configs are parsed by MONAI's ``ConfigParser`` and run as MONAI runs them: its
``preprocessing`` on ``{"image": path}``, its ``inferer`` with the network, its
``postprocessing`` on the prediction. Parsing runs the config's code, so give only bundles you
trust.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..loading import LoadedModel


def reference_inference(model: LoadedModel, image: str | Path) -> dict[str, Any]:
    """MONAI's labelmap of ``image`` for a loaded bundle, and its probabilities.

    Returns:
        ``labels``: (*S) the postprocessed prediction's first channel; ``probabilities``: the
        prediction just before the first ``AsDiscreted`` (None without one), on the grid the
        bundle's postprocessing has it there.
    """
    import torch
    from monai.bundle import ConfigParser

    root = Path(model.source["path"])
    parser = ConfigParser()
    metadata = root / "configs" / "metadata.json"
    if metadata.is_file():
        parser.read_meta(json.loads(metadata.read_text()))
    parser.read_config(model.source["config"])
    parser.set(str(root), "bundle_root")
    data = parser.get_parsed_content("preprocessing")({"image": str(image)})
    network = model.network.eval()
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    probabilities = None
    for step in parser.get_parsed_content("postprocessing").transforms:
        if type(step).__name__ == "AsDiscreted" and probabilities is None:
            probabilities = np.asarray(data["pred"].detach().cpu())
        data = step(data)
    return {"labels": np.asarray(data["pred"].detach().cpu())[0], "probabilities": probabilities}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of the foregrounds (label > 0) of two labelmaps; 1.0 when both are empty."""
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)
