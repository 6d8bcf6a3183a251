"""A MONAI bundle's preprocessing, split where explanations need it.

The card's ``preprocessing`` list holds the bundle's steps in order. The geometric ones
(Orientation, Spacing, Resize, CropForeground, SpatialPad, DivisiblePad) are run by MONAI's own
dictionary transforms, built from the step's arguments, on the image with the RAS affine that
MONAI's LoadImage gives it: the network's input grid is exactly MONAI's. Outputs and maps come
back through the same transforms' inverses, as MONAI's ``Invertd`` brings back a prediction.
The intensity steps run inside the differentiable forward pass (:mod:`.intensity`), so that
attributions refer to raw intensities.

The split reorders: every geometric step runs before every intensity step. To keep the
network's input exactly MONAI's, :func:`model_input` first runs the steps *in the bundle's
order* on the unperturbed image: a foreground crop gets its box from the image as MONAI sees it
at that point, and each intensity step takes its statistics (mean and std, percentiles) from
that stage. Then it checks, on this input, that the reordered pipeline gives the same
network input: where a step does not commute (a clipping before a linear resampling, a zero
padding after an intensity shift), the difference is measured and the run stops before it
starts, unless the card allows preprocessing that is not applied as the bundle says.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from ..errors import UserInputError
from . import intensity
from .card import GEOMETRIC_STEPS, INTENSITY_STEPS, ModelCard
from .grids import resample_to_model_grid

if TYPE_CHECKING:
    from ..io.volume import Volume

#: The key the image has in the MONAI dictionaries (the bundles' convention).
IMAGE_KEY = "image"
#: Relative difference between the bundle's order and ours that still counts as equal
#: (float32 rounding of the same arithmetic in another order).
TOLERANCE = 1e-5

_CLASSES = {
    "orientation": "Orientationd",
    "spacing": "Spacingd",
    "resize": "Resized",
    "crop_foreground": "CropForegroundd",
    "spatial_pad": "SpatialPadd",
    "divisible_pad": "DivisiblePadd",
}


@dataclass
class TransformGrid:
    """How the input grid maps onto the network's grid through MONAI transforms.

    Attributes:
        transforms: the MONAI dictionary transforms, in order (their inverses undo them).
        crops: index in ``transforms`` -> the (start, end) box of a foreground crop, fixed on
            the unperturbed image.
        input_affine: RAS affine of the input grid.
        input_shape, model_shape: spatial shapes of the two grids.
        trace: MONAI's record of the transforms applied (what ``Invertd`` reads).
        model_affine: RAS affine of the network's grid.
    """

    transforms: list[Any]
    crops: dict[int, tuple[Any, Any]]
    input_affine: np.ndarray
    input_shape: tuple[int, int, int]
    model_shape: tuple[int, int, int] = (0, 0, 0)
    trace: list[Any] = field(default_factory=list)
    model_affine: Any = None

    @property
    def identity(self) -> bool:
        return not self.transforms

    def to_model_grid(self, t: torch.Tensor) -> torch.Tensor:
        """(B, K, *input shape) -> (B, K, *model shape), by the same transforms."""
        mapped = [self._forward(sample.cpu()).as_tensor() for sample in t]
        return torch.stack(mapped).to(device=t.device, dtype=t.dtype)

    def to_input_grid(self, t: torch.Tensor, mode: str = "trilinear") -> torch.Tensor:
        """(B, K, *model shape) -> (B, K, *input shape) by the transforms' inverses; ``mode``
        "trilinear" keeps each transform's own interpolation, "nearest" uses nearest
        neighbours (labels), as ``Invertd(nearest_interp=True)``."""
        from monai.data import MetaTensor
        from monai.transforms.utils import convert_applied_interp_mode

        if self.identity:
            return t
        trace = self.trace
        if mode == "nearest":
            trace = convert_applied_interp_mode(trace, mode="nearest", align_corners=None)
        elif mode != "trilinear":
            raise UserInputError(f"unknown resampling mode {mode!r}; use 'trilinear' or 'nearest'")
        restored = []
        for sample in t:  # on the CPU, where the transforms and their affines live
            data = MetaTensor(sample.detach().float().cpu(), affine=self.model_affine)
            data.applied_operations = copy.deepcopy(trace)
            for transform in reversed(self.transforms):
                data = transform.inverse({IMAGE_KEY: data})[IMAGE_KEY]
            restored.append(data.as_tensor())
        out = torch.stack(restored).to(t.device)
        return out.round().to(t.dtype) if not t.dtype.is_floating_point else out.to(t.dtype)

    def _forward(self, sample: torch.Tensor) -> Any:
        data = self.meta_tensor(sample.float())
        for index, transform in enumerate(self.transforms):
            data = run_geometric(transform, data, self.crops.get(index))
        return data

    def meta_tensor(self, sample: torch.Tensor) -> Any:
        """A (C, *input shape) tensor as MONAI's LoadImage gives it: with its RAS affine."""
        from monai.data import MetaTensor

        return MetaTensor(
            sample,
            affine=torch.as_tensor(self.input_affine, dtype=torch.float64),
            meta={"space": "RAS"},
        )


@dataclass
class ModelInput:
    """The raw image on the network's grid, how to get back, and the intensity statistics.

    Attributes:
        x: (1, C, *model shape) raw intensities on the network's grid.
        grid: :class:`TransformGrid` or the card-spacing resample (:class:`~.grids.ResampleInfo`).
        statistics: per intensity step of the card, its statistics on the unperturbed image.
        fills: zero padding the bundle adds after intensity steps (see :func:`~.intensity.apply_all`).
        warnings: what differs from the model's own preprocessing (only when the card allows it).
    """

    x: torch.Tensor
    grid: Any
    statistics: list[Any]
    fills: dict[int, torch.Tensor] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def model_input(volume: Volume, card: ModelCard) -> ModelInput:
    """The network's input for ``volume``, with its grid and frozen intensity statistics."""
    if not card.preprocessing:
        x, info = resample_to_model_grid(volume, card)
        return ModelInput(x, info, staged_statistics(card.intensity_steps(), x))
    image = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))
    grid = TransformGrid([], {}, volume.geometry.affine_ras(), volume.spatial_shape)
    processed = grid.meta_tensor(image)
    # marker: 1 on voxels of the image, 0 on padding added since the last intensity step, -k
    # on padding added between intensity steps k - 1 and k (zeros MONAI feeds to step k)
    marker = grid.meta_tensor(torch.ones_like(image[:1]))
    statistics: list[Any] = []
    first_intensity: str | None = None
    reordered: list[str] = []
    for step in card.preprocessing:
        if step["kind"] in INTENSITY_STEPS:
            first_intensity = first_intensity or step["kind"]
            marker = _with_values(marker, _mark(marker.as_tensor(), -len(statistics) or 1))
            stats = intensity.statistics(step, processed.as_tensor()[None])
            statistics.append(stats)
            values = intensity.apply(step, processed.as_tensor()[None], stats)[0]
            processed = _with_values(processed, values)
            continue
        transform = build_transform(step)
        box = None
        if step["kind"] == "crop_foreground":
            box = transform.cropper.compute_bounding_box(img=processed)
            grid.crops[len(grid.transforms)] = box
        processed = run_geometric(transform, processed, box)
        marker = run_geometric(transform, marker, box)
        grid.transforms.append(transform)
        if first_intensity is not None:
            reordered.append(f"{step['kind']} after {first_intensity}")
    raw = grid._forward(image)
    grid.trace = copy.deepcopy(raw.applied_operations)
    grid.model_affine = raw.affine.clone()
    grid.model_shape = cast("tuple[int, int, int]", tuple(int(n) for n in raw.shape[1:]))
    x = raw.as_tensor()[None].float()
    fills: dict[int, torch.Tensor] = {}
    if statistics:
        marked = _mark(marker.as_tensor(), -len(statistics))[None]
        for index in range(1, len(statistics) + 1):
            if bool((marked == -index).any()):
                fills[index] = marked == -index
    result = ModelInput(x, grid, statistics, fills)
    if reordered:
        _check_reordering(card, result, processed.as_tensor()[None], reordered)
    return result


def _mark(marker: torch.Tensor, value: int) -> torch.Tensor:
    return torch.where(marker == 0, torch.full_like(marker, float(value)), marker)


def staged_statistics(steps: list[dict[str, Any]], x: torch.Tensor) -> list[Any]:
    """Each intensity step's statistics of ``x`` after the steps before it."""
    statistics = []
    for step in steps:
        stats = intensity.statistics(step, x)
        statistics.append(stats)
        x = intensity.apply(step, x, stats)
    return statistics


def build_transform(step: dict[str, Any]) -> Any:
    """The MONAI dictionary transform of a geometric step, for the image key."""
    import monai.transforms as transforms

    kind = step["kind"]
    if kind not in GEOMETRIC_STEPS:
        raise UserInputError(f"{kind!r} is not a geometric step; use one of {GEOMETRIC_STEPS}")
    args = {k: v for k, v in step.items() if k != "kind"}
    if "dtype" in args:
        args["dtype"] = _dtype(args["dtype"])
    if kind == "crop_foreground":
        threshold = float(args.pop("threshold", 0.0))
        args["select_fn"] = lambda image: image > threshold
        args.update(source_key=IMAGE_KEY, start_coord_key=None, end_coord_key=None)
    try:
        with warnings.catch_warnings():
            # MONAI's notice about a future default of Orientationd's labels (RAS either way)
            warnings.simplefilter("ignore", FutureWarning)
            return getattr(transforms, _CLASSES[kind])(keys=[IMAGE_KEY], **args)
    except (TypeError, ValueError) as error:
        raise UserInputError(
            f"cannot build MONAI's {_CLASSES[kind]} from the model card step {step} ({error}); "
            "fix the step's arguments"
        ) from error


def run_geometric(transform: Any, data: Any, box: tuple[Any, Any] | None = None) -> Any:
    """One geometric transform on a MetaTensor; a foreground crop uses the fixed ``box``."""
    if box is not None:
        return transform.cropper.crop_pad(
            img=data, box_start=box[0], box_end=box[1], mode=transform.mode[0]
        )
    return transform({IMAGE_KEY: data})[IMAGE_KEY]


def _check_reordering(
    card: ModelCard, result: ModelInput, processed: torch.Tensor, reordered: list[str]
) -> None:
    """Compare the network's input the bundle's order gives with ours (see module doc)."""
    ours = intensity.apply_all(card.intensity_steps(), result.x, result.statistics, result.fills)
    if ours.shape != processed.shape:
        difference, scale = float("inf"), 1.0
    else:
        difference = float((ours - processed).abs().max())
        scale = float(processed.abs().max()) or 1.0
    if difference <= TOLERANCE * scale:
        return
    what = (
        f"the bundle applies {', '.join(reordered)}; applied first, the geometric steps give a "
        f"network input that differs from MONAI's by up to {difference:.3g} "
        f"(largest value {scale:.3g})"
    )
    if not card.allow_unapplied_preprocessing:
        raise UserInputError(
            f"{what}; move the intensity steps after the geometric ones in the card's "
            "preprocessing (--card), or accept the difference with "
            "--allow-unapplied-preprocessing"
        )
    result.warnings.append(what)


def _with_values(meta: Any, values: torch.Tensor) -> Any:
    from monai.data import MetaTensor

    out = MetaTensor(values.detach(), meta=dict(meta.meta))
    out.applied_operations = meta.applied_operations
    return out


def _dtype(name: Any) -> Any:
    if name is None:
        return None
    return np.dtype(str(name).replace("torch.", ""))
