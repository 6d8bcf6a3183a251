"""Feature masks: the regions of the input's spatial grid that feature methods switch on and off.

A feature is one region in all channels at once (like an occlusion box), so a mask is one
(*S) integer tensor with the values 0..F-1. Three kinds, declared as parameters shared by every
feature method:

- ``grid``: regular 3D blocks of ``feature_size`` voxels;
- ``supervoxels``: a 3D SLIC clustering of the image on intensity and position (Achanta et al.
  2012), followed by the usual clean-up that makes every supervoxel one connected region;
- ``labels``: the labels of a user segmentation on the input grid, one feature per label value.

SLIC is written here (torch for the clustering, scipy.ndimage for connectivity) instead of
taken from scikit-image: it is ~100 lines, runs on the input's device, and spares the Slicer
Python environment a heavy dependency.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserInputError
from .base import Param

if TYPE_CHECKING:
    import torch

FEATURE_KINDS = ("grid", "supervoxels", "labels")
#: Above this many features every feature method is either absurdly slow (one or more forward
#: passes per feature) or fits a regression with more unknowns than it can sample.
MAX_FEATURES = 65536
SLIC_ITERATIONS = 10
SLIC_CHUNK = 1 << 16  # voxels compared with their 27 candidate centres at once

FEATURE_PARAMS = (
    Param(
        "features",
        "choice",
        "grid",
        "Regions switched on and off together: a regular grid of blocks, supervoxels of the "
        "image, or the labels of a segmentation file.",
        choices=FEATURE_KINDS,
    ),
    Param(
        "feature_size",
        "int",
        16,
        "Edge length in voxels of the grid blocks, or the approximate supervoxel size.",
        minimum=1,
        maximum=1024,
    ),
    Param(
        "compactness",
        "float",
        0.2,
        "Supervoxels only: weight of position against intensity (intensities scaled to [0, 1]); "
        "higher gives more cube-like supervoxels, lower follows intensity edges more closely.",
        minimum=0.001,
        maximum=100.0,
    ),
    Param(
        "feature_labels",
        "str",
        "",
        "Labels only: path of a label map on the input grid; each label value is one feature.",
        file=True,
    ),
)


def feature_mask(
    config: dict[str, Any], image: torch.Tensor, owner: str
) -> tuple[torch.Tensor, int]:
    """The feature of every voxel of one example.

    Args:
        config: a method's configuration holding the :data:`FEATURE_PARAMS`.
        image: one example (C, *S).
        owner: the method's name, for error messages.

    Returns:
        (mask, count): a long tensor of shape (*S) on ``image.device`` with values 0..count-1,
        every value present.

    Raises:
        UserInputError: missing or mismatched label file, or more than :data:`MAX_FEATURES`.
    """
    import torch

    kind, size = config["features"], config["feature_size"]
    spatial = tuple(image.shape[1:])
    if kind == "labels":
        path = config["feature_labels"]
        mask = torch.as_tensor(_label_features(path, spatial, owner)).to(image.device)
        count = int(mask.max()) + 1
        _check_count(count, owner, f"feature_labels {path}")
        return mask, count
    count = math.prod(math.ceil(n / size) for n in spatial)
    _check_count(count, owner, f"feature_size {size} on a {_shape(spatial)} image")
    if kind == "grid":
        return grid_features(spatial, size, image.device), count
    mask = supervoxels(image, size, config["compactness"])
    return mask, int(mask.max()) + 1


def features_refusal(config: dict[str, Any], owner: str) -> str | None:
    """Why a features configuration cannot run at all, known before any pass: label features
    without their label map, or a label map that is not there."""
    return (
        _labels_problem(config["feature_labels"], owner) if config["features"] == "labels" else None
    )


def _labels_problem(path: str, owner: str) -> str | None:
    if not path:
        return f"method {owner!r} with features=labels needs a label map: set feature_labels to its path"
    if not Path(path).is_file():
        return f"feature_labels {path} of method {owner!r} does not exist; check the path"
    return None


def feature_count(config: dict[str, Any], spatial: tuple[int, ...], owner: str) -> int:
    """How many features a method's configuration makes of an image of ``spatial`` shape
    (supervoxels: the number of seeds, about the number SLIC keeps)."""
    if config["features"] == "labels":
        return int(_label_features(config["feature_labels"], spatial, owner).max()) + 1
    return math.prod(math.ceil(n / config["feature_size"]) for n in spatial)


def feature_cells(spatial: tuple[int, ...], size: int) -> list[tuple[slice, ...]]:
    """The blocks of :func:`grid_features` (and the seed cells of :func:`supervoxels`) as
    boxes, in the features' order."""
    return [
        tuple(slice(s, min(s + size, n)) for s, n in zip(corner, spatial))
        for corner in itertools.product(*[range(0, n, size) for n in spatial])
    ]


def grid_features(spatial: tuple[int, ...], size: int, device: Any = "cpu") -> torch.Tensor:
    """Regular blocks of ``size`` voxels (the last block along an axis may be smaller)."""
    import torch

    cells = [torch.arange(n, device=device) // size for n in spatial]
    counts = [math.ceil(n / size) for n in spatial]
    mask = torch.zeros(spatial, dtype=torch.long, device=device)
    for axis, (cell, stride) in enumerate(zip(cells, _strides(counts))):
        shape = [1] * len(spatial)
        shape[axis] = -1
        mask += cell.reshape(shape) * stride
    return mask


def supervoxels(image: torch.Tensor, size: int, compactness: float) -> torch.Tensor:
    """3D SLIC supervoxels of one example (C, *S): a (*S) long mask, every feature connected.

    Each voxel joins the nearest of the cluster centres seeded in its grid cell and the 26
    neighbouring cells, by the distance ``sum_c (I_c - I_c(k))^2 + (compactness / size)^2 *
    |p - p(k)|^2`` with intensities scaled to [0, 1] per channel and positions in voxels (the
    method sees the tensor, not the spacing); the centres move to the mean of their voxels,
    ten times. Fragments of a cluster smaller than a
    quarter of a cell are then merged into the neighbour they share most faces with.
    """
    import torch

    spatial = tuple(image.shape[1:])
    values = image.detach().reshape(image.shape[0], -1).float()
    low, high = values.amin(dim=1, keepdim=True), values.amax(dim=1, keepdim=True)
    values = (values - low) / (high - low).clamp(min=1e-12)
    axes = [torch.arange(n, device=image.device, dtype=torch.float32) for n in spatial]
    position = torch.stack([a.flatten() for a in torch.meshgrid(*axes, indexing="ij")])
    counts = torch.tensor([math.ceil(n / size) for n in spatial], device=image.device)
    home = (position // size).long()
    strides = torch.tensor(_strides(counts.tolist()), device=image.device)
    clusters = int(counts.prod())
    labels = (home * strides[:, None]).sum(dim=0)
    centre_position, centre_value = _cluster_means(labels, clusters, position, values)
    weight = (compactness / size) ** 2
    offsets = torch.tensor(
        list(itertools.product((-1, 0, 1), repeat=len(spatial))), device=image.device
    )[:, :, None]
    for _ in range(SLIC_ITERATIONS):
        for start in range(0, labels.numel(), SLIC_CHUNK):
            part = slice(start, start + SLIC_CHUNK)
            cell = home[None, :, part] + offsets  # (27, 3, voxels): the neighbouring cells
            valid = ((cell >= 0) & (cell < counts[:, None])).all(dim=1)
            k = (cell.clamp(min=0) * strides[:, None]).sum(dim=1).clamp(max=clusters - 1)
            distance = ((values[:, None, part] - centre_value[:, k]) ** 2).sum(dim=0)
            distance += weight * ((position[:, None, part] - centre_position[:, k]) ** 2).sum(dim=0)
            distance[~valid] = math.inf
            labels[part] = k.gather(0, distance.argmin(dim=0, keepdim=True))[0]
        centre_position, centre_value = _cluster_means(
            labels, clusters, position, values, centre_position, centre_value
        )
    connected = _connected(labels.reshape(spatial).cpu().numpy(), max(1, size**3 // 4))
    return torch.as_tensor(connected, device=image.device)


def _cluster_means(labels, clusters, position, values, old_position=None, old_value=None):
    """Mean position and intensity of each cluster (clusters left empty keep their old centre)."""
    import torch

    count = torch.bincount(labels, minlength=clusters).float()

    def mean(data, old):
        total = torch.zeros((data.shape[0], clusters), dtype=data.dtype, device=data.device)
        total.index_add_(1, labels, data)
        averaged = total / count.clamp(min=1)
        return averaged if old is None else torch.where(count > 0, averaged, old)

    return mean(position, old_position), mean(values, old_value)


def _connected(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Split every label into its 6-connected components, merge the small non-largest ones
    into their most-bordering neighbour, and number the resulting regions 0..F-1."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(labels.ndim, 1)
    regions = np.zeros(labels.shape, dtype=np.int64)
    clusters, count = [-1], 0  # clusters[r]: the cluster that region r (numbered from 1) came from
    for cluster, box in enumerate(ndimage.find_objects(labels + 1)):
        if box is None:
            continue
        components, n = ndimage.label(labels[box] == cluster, structure)
        inside = components > 0
        regions[box][inside] = components[inside] + count
        clusters += [cluster] * n
        count += n
    sizes = np.bincount(regions.ravel(), minlength=count + 1)
    owner = np.asarray(clusters)
    by_size = np.lexsort((sizes, owner))  # grouped by cluster, largest region last
    largest = np.zeros(count + 1, dtype=bool)
    largest[by_size[np.r_[owner[by_size][1:] != owner[by_size][:-1], True]]] = True
    pending = ~largest & (sizes < min_size)
    while pending.any():
        # Every face between two regions, both ways; a pending fragment joins the settled
        # region it shares most faces with (two adjacent connected regions stay connected).
        faces_from: list[np.ndarray] = []
        faces_to: list[np.ndarray] = []
        for axis in range(regions.ndim):
            along = np.moveaxis(regions, axis, 0)
            low, high = along[:-1], along[1:]
            differ = low != high
            faces_from += [low[differ], high[differ]]
            faces_to += [high[differ], low[differ]]
        fragment, neighbour = np.concatenate(faces_from), np.concatenate(faces_to)
        settled = pending[fragment] & ~pending[neighbour]
        if not settled.any():  # fragments that only touch each other: keep them as regions
            break
        keys, faces = np.unique(
            fragment[settled] * (count + 1) + neighbour[settled], return_counts=True
        )
        fragment, neighbour = keys // (count + 1), keys % (count + 1)
        order = np.lexsort((faces, fragment))  # per fragment, the most faces last
        fragment, neighbour = fragment[order], neighbour[order]
        last = np.r_[fragment[1:] != fragment[:-1], True]
        relabel = np.arange(count + 1)
        relabel[fragment[last]] = neighbour[last]
        regions = relabel[regions]
        pending[fragment[last]] = False
    return np.unique(regions, return_inverse=True)[1].reshape(labels.shape)


def _label_features(path: str, spatial: tuple[int, ...], owner: str) -> np.ndarray:
    """One feature per label value of the file at ``path``, checked against the input's shape."""
    from ..io.images import read_label, read_volume

    problem = _labels_problem(path, owner)
    if problem:
        raise UserInputError(problem)
    # The method sees the input tensor, not the image's geometry: the label map is read on its
    # own grid (with read_label's checks: one channel, integer values) and checked by shape.
    labels = read_label(path, like=read_volume(path).geometry)
    if labels.shape != spatial:
        raise UserInputError(
            f"feature_labels {path} has shape {_shape(labels.shape)} but the model's input has "
            f"{_shape(spatial)}; resample the labels onto the image grid (nearest neighbour), "
            "or use the model's grid when the model resamples the image"
        )
    return np.unique(labels, return_inverse=True)[1].reshape(spatial).astype(np.int64)


def _check_count(count: int, owner: str, what: str) -> None:
    if count > MAX_FEATURES:
        raise UserInputError(
            f"{what} makes {count} features, more than method {owner!r} handles "
            f"({MAX_FEATURES}); raise feature_size or use fewer labels"
        )


def _strides(counts: list[int]) -> list[int]:
    return [math.prod(counts[axis + 1 :]) for axis in range(len(counts))]


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)
