"""Object targets: regions made from the predicted segmentation itself, on the input grid.

* ``component``: the connected component of a predicted class that holds a voxel (a click in
  Slicer), 26-connected (faces, edges and corners) as MONAI's ``KeepLargestConnectedComponent``
  counts components: "why this vessel, this lesion".
* ``boundary``: the band of ``width`` voxels each side of a predicted class's surface, counted in
  face steps (``width`` layers inside the class and ``width`` outside): "why is the edge here".
  The image's own border is not a surface: a class cut off by it has no band there.

(``contrast`` needs no region of its own: class A's predicted region, as a class target's; its
score differs, see :class:`~.bound.BoundTarget`.) Each builder returns the region and the facts
``run.json`` keeps about it; :data:`REGIONS` lists them by kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserInputError
from .bound import nothing_predicted, target_class, voxel_index
from .spec import TargetSpec

if TYPE_CHECKING:
    from ..io.volume import Geometry
    from ..models.card import ModelCard
    from ..models.inference import SegmentationResult

#: A region builder: (spec, card, segmentation, geometry) -> (bool (I, J, K) region, facts).
RegionBuilder = Callable[
    [TargetSpec, "ModelCard", "SegmentationResult", "Geometry"], tuple[np.ndarray, dict[str, Any]]
]


def component_region(
    spec: TargetSpec, card: ModelCard, segmentation: SegmentationResult, geometry: Geometry
) -> tuple[np.ndarray, dict[str, Any]]:
    """The connected component of the predicted class that holds the spec's voxel."""
    from scipy import ndimage

    index = voxel_index(spec, geometry)
    where = f"voxel {tuple(int(v) for v in index)}"
    if spec.class_ is None:
        label = int(segmentation.labelmap[index])
        if label == 0:
            raise UserInputError(
                f"the {where} lies in the background of the segmentation: there is no object "
                "there to explain; place the point inside a segmented object"
            )
        class_index = label if card.exclusive else label - 1
    else:
        class_index = target_class(spec, card)
    mask = segmentation.class_mask(card, class_index)
    name = card.class_names[class_index]
    if not mask.any():
        raise nothing_predicted(card, class_index)
    if not mask[index]:
        raise UserInputError(
            f"the {where} is not in the predicted {name} mask, so it holds no {name} "
            f"component; place the point inside a {name} object (or choose its class)"
        )
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    region = labels == labels[index]
    facts = {
        "class_index": class_index,  # the class clicked on: resolve_target takes it out
        "component": {
            "seed": [int(v) for v in index],
            "voxels": int(region.sum()),
            "components_of_class": int(count),
        },
    }
    return region, facts


def boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """The voxels within ``width`` face steps of ``mask``'s surface, on either side of it."""
    from scipy import ndimage

    cross = ndimage.generate_binary_structure(3, 1)
    # border_value=1: the image's border is not a surface of the class
    inner = mask & ~ndimage.binary_erosion(mask, cross, iterations=width, border_value=1)
    outer = ndimage.binary_dilation(mask, cross, iterations=width) & ~mask
    return inner | outer


def boundary_region(
    spec: TargetSpec, card: ModelCard, segmentation: SegmentationResult, geometry: Geometry
) -> tuple[np.ndarray, dict[str, Any]]:
    """The band of ``spec.width`` voxels each side of the predicted class's surface."""
    class_index = target_class(spec, card)
    mask = segmentation.class_mask(card, class_index)
    if not mask.any():
        raise nothing_predicted(card, class_index)
    width = spec.width or 1
    region = boundary_band(mask, width)
    if not region.any():
        raise UserInputError(
            f"the predicted {card.class_names[class_index]} mask fills the whole image, so it has "
            "no surface inside it; explain the class (--target class) instead"
        )
    return region, {"width": width}


#: kind -> builder of its region on the input grid.
REGIONS: dict[str, RegionBuilder] = {
    "component": component_region,
    "boundary": boundary_region,
}
