"""The members of each kind, as one differentiable forward on the model's grid.

A :class:`MemberForward` wraps the case's frozen
:class:`~TorchEsegetaLib.models.inference.SegmentationForward` and computes every member's logits
from the same raw input ``x`` (B, C, *S) on the model's grid: ``member(m, x)`` one of them,
``forward(x)`` all of them side by side as (B, M * K, *S), member-major, which is what an
uncertainty target scores. Each member is a deterministic function of ``x`` (random draws are
fixed by the seed when the members are built), so attribution methods explain one function.

* ``tta`` (:class:`AugmentedMembers`): member 0 is the prediction itself; member m > 0 scales the
  raw intensities by a factor drawn from [1 - s, 1 + s], adds Gaussian noise (a fixed draw of
  ``noise`` standard deviations of the image per channel) and flips the result along a
  combination of the allowed axes (cycling through every combination, no flip first), runs the
  model and flips its prediction back: the inverse of a flip is the flip, exactly, on the
  model's grid; the way back to the input grid is the segmentation's.
* ``dropout`` (:class:`DropoutMembers`): the network's dropout layers (``p > 0``) drop with a
  mask drawn from (seed, member, layer): the same for every example of a batch and every
  sliding window, so one member is one network.
* ``ensemble``: nnU-Net's folds x mirror combinations (:class:`FoldMirrorMembers`), or the
  model's checkpoint and the extra checkpoints its reference lists (:class:`CheckpointMembers`).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...errors import UserInputError
from . import UncertaintySpec

if TYPE_CHECKING:
    from ..inference import SegmentationForward
    from ..loading import LoadedModel

_DROPOUT_LAYERS = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d)


class MemberForward(torch.nn.Module):
    """(B, C, *S) raw intensities -> (B, M * K, *S): every member's logits (see module doc).

    Attributes:
        kind: the kind of members.
        names: one name per member, for the record.
        reused: members whose logits are the segmentation's own (no extra pass for the maps).
    """

    reused: tuple[int, ...] = ()
    #: why layer methods cannot explain through members (read by their preflight)
    layer_maps_refused = (
        "an uncertainty target's members run the network's layers on flipped, rescaled or "
        "noisy inputs, or with dropped units, so a layer has no one map on the input grid; use "
        "a gradient, DeepLIFT or perturbation method"
    )

    def __init__(self, kind: str, base: SegmentationForward, names: list[str]) -> None:
        super().__init__()
        self.kind = kind
        self.base = base
        self.names = list(names)
        if len(self.names) < 2:
            raise UserInputError(
                f"uncertainty {kind} has {len(self.names)} member here: a spread needs at least "
                "two; use more members, or another kind"
            )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def precision(self) -> str:
        return self.base.precision

    @precision.setter
    def precision(self, value: str) -> None:
        for forward in self.forwards():
            forward.precision = value

    def forwards(self) -> list[SegmentationForward]:
        """The segmentation forwards the members run (one, or one per checkpoint)."""
        return [self.base]

    def member(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``index``'s logits (B, K, *S) on the model's grid."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.member(index, x) for index in range(len(self))], dim=1)

    def restrict_to(self, region: np.ndarray | None) -> None:
        """Run only the sliding windows every member needs for scores on ``region``."""
        region = None if region is None else self.region_needed(region)
        for forward in self.forwards():
            forward.restrict_to(region)

    def region_needed(self, region: np.ndarray) -> np.ndarray:
        """The model-grid voxels whose prediction some member's score on ``region`` reads."""
        return region

    @property
    def extra_passes(self) -> int:
        """Whole-volume passes the maps cost beyond the segmentation's (nnU-Net's ensemble:
        none when the segmentation recorded the members, see :mod:`~TorchEsegetaLib.runs.uncertainty`)."""
        return len(self) - len(self.reused)


class AugmentedMembers(MemberForward):
    """Test-time augmentation (see the module doc)."""

    def __init__(
        self,
        base: SegmentationForward,
        x: torch.Tensor,
        count: int,
        flip_axes: tuple[int, ...],
        scale: float,
        noise: float,
        seed: int,
    ) -> None:
        flips = [c for n in range(len(flip_axes) + 1) for c in itertools.combinations(flip_axes, n)]
        plan: list[tuple[tuple[int, ...], float, torch.Tensor | None]] = [((), 1.0, None)]
        spread = x[:1].detach().flatten(2).std(dim=2).reshape(1, -1, *([1] * (x.ndim - 2)))
        for member in range(1, count):
            draw = np.random.default_rng([seed % 2**32, member])
            factor = float(1.0 + scale * draw.uniform(-1.0, 1.0)) if scale else 1.0
            added = None
            if noise:
                values = draw.standard_normal(tuple(x.shape[1:]), dtype=np.float32)
                added = torch.from_numpy(values)[None].to(x.device) * (noise * spread)
            plan.append((tuple(flips[member % len(flips)]), factor, added))
        names = ["original"] + [
            f"flip {''.join('ijk'[a] for a in f) or 'none'}, scale {s:.3f}"
            + (", noise" if n is not None else "")
            for f, s, n in plan[1:]
        ]
        super().__init__("tta", base, names)
        self.plan = plan
        self.reused = (0,)

    def member(self, index: int, x: torch.Tensor) -> torch.Tensor:
        flip, scale, noise = self.plan[index]
        dims = [a + 2 for a in flip]
        augmented = x * scale if scale != 1.0 else x
        if noise is not None:
            augmented = augmented + noise.to(x.dtype)
        if dims:
            augmented = torch.flip(augmented, dims)
        logits = self.base(augmented)
        return torch.flip(logits, dims) if dims else logits

    def region_needed(self, region: np.ndarray) -> np.ndarray:
        needed = np.zeros_like(region, dtype=bool)
        for flip in {flip for flip, _, _ in self.plan}:
            needed |= np.flip(region, axis=flip) if flip else region
        return needed


class DropoutMembers(MemberForward):
    """Monte-Carlo dropout with fixed masks (see the module doc)."""

    def __init__(self, base: SegmentationForward, count: int, seed: int) -> None:
        layers = dropout_layers(base.network)
        super().__init__("dropout", base, [f"dropout sample {m}" for m in range(count)])
        self.layers = layers  # a plain list: the network's own modules, not ours
        self.seed = seed

    def member(self, index: int, x: torch.Tensor) -> torch.Tensor:
        handles = [
            layer.register_forward_hook(self._dropping(index, number))
            for number, layer in enumerate(self.layers)
        ]
        try:
            return self.base(x)
        finally:
            for handle in handles:
                handle.remove()

    def _dropping(self, member: int, number: int) -> Any:
        layer: Any = self.layers[number]
        channels = not isinstance(layer, torch.nn.Dropout)  # Dropout1d/2d/3d drop channels
        p = float(layer.p)

        def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            shape = (1, output.shape[1], *([1] * (output.ndim - 2))) if channels else output.shape
            mask = dropout_mask(tuple(shape[1:]), p, self.seed, member, number)
            return output * mask.to(output.device, output.dtype)

        return hook


def dropout_mask(
    shape: tuple[int, ...], p: float, seed: int, member: int, layer: int
) -> torch.Tensor:
    """The (1, *shape) keep mask, scaled by 1 / (1 - p), of one member at one layer."""
    state = np.random.SeedSequence([seed % 2**32, member, layer]).generate_state(1)[0]
    generator = torch.Generator().manual_seed(int(state))
    keep = torch.rand((1, *shape), generator=generator) >= p
    return keep.float() / (1.0 - p)


def dropout_layers(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The network's dropout layers that drop something (``p > 0``); a clear error if none."""
    if isinstance(network, torch.jit.ScriptModule):
        raise UserInputError(
            "Monte-Carlo dropout needs the network's Python modules, and this is a TorchScript "
            "model; give the network and its checkpoint (--network), or use tta"
        )
    layers: list[torch.nn.Module] = [
        m for m in network.modules() if isinstance(m, _DROPOUT_LAYERS) and m.p > 0
    ]
    if not layers:
        raise UserInputError(
            "the network has no dropout layers (with p > 0), so Monte-Carlo dropout has nothing "
            "to sample; use tta or ensemble for this model"
        )
    return layers


class CheckpointMembers(MemberForward):
    """The model's checkpoint and the extra checkpoints of its reference, one member each."""

    def __init__(self, base: SegmentationForward, networks: list[torch.nn.Module]) -> None:
        names = ["checkpoint 0 (the model's)"] + [
            f"checkpoint {n}" for n in range(1, len(networks) + 1)
        ]
        super().__init__("ensemble", base, names)
        self.others = torch.nn.ModuleList([base.with_network(n) for n in networks])
        self.reused = (0,)

    def forwards(self) -> list[SegmentationForward]:
        return [self.base, *self.others]

    def member(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.forwards()[index](x)


class FoldMirrorMembers(MemberForward):
    """nnU-Net's ensemble: each fold with each mirror combination (nnU-Net's own order)."""

    def __init__(self, base: SegmentationForward, folds: list[Any]) -> None:
        pipeline: Any = base.network
        super().__init__("ensemble", base, fold_mirror_names(pipeline, folds))
        self.pairs = pipeline.member_pairs()

    def member(self, index: int, x: torch.Tensor) -> torch.Tensor:
        from ..inference import PRECISIONS

        fold, flip = self.pairs[index]
        pipeline: Any = self.base.network
        x = self.base.preprocess(x)
        if self.base.precision == "float32":
            return pipeline.member_forward(x, fold, flip)
        with torch.autocast(device_type=x.device.type, dtype=PRECISIONS[self.base.precision]):
            return pipeline.member_forward(x, fold, flip).float()


def fold_mirror_names(pipeline: Any, folds: list[Any]) -> list[str]:
    """ "fold 0, no mirror", "fold 1, mirror 0,2": the names of nnU-Net's members (``folds``:
    the model's fold names, in the pipeline's order)."""
    return [
        f"fold {folds[fold] if fold < len(folds) else fold}, "
        + (f"mirror {','.join(str(a) for a in flip)}" if flip else "no mirror")
        for fold, flip in pipeline.member_pairs()
    ]


def check_available(spec: UncertaintySpec | str | dict[str, Any], model: LoadedModel) -> None:
    """Raise :class:`UserInputError` now, before any work, when ``model`` has no members of
    this kind (no dropout layers; no ensemble of its own)."""
    spec = UncertaintySpec.from_any(spec)
    if spec.kind == "dropout":
        dropout_layers(model.network)
    elif spec.kind == "ensemble" and not hasattr(model.network, "member_pairs"):
        if not model.ensemble:
            raise UserInputError(
                f"{model.card.name} has no ensemble of its own (nnU-Net folds and mirrorings, or "
                'extra checkpoints listed under "ensemble" in the model reference); use tta or '
                "dropout"
            )


def build_members(
    spec: UncertaintySpec,
    model: LoadedModel,
    base: SegmentationForward,
    x: torch.Tensor,
    seed: int,
) -> MemberForward:
    """The members ``spec`` asks for, on ``base`` (the case's frozen forward) and its input ``x``."""
    check_available(spec, model)
    network: Any = model.network
    members: MemberForward
    if spec.kind == "tta":
        if spec.flip_axes is not None:
            axes = tuple(spec.flip_axes)
        elif hasattr(network, "input_mirror_axes"):  # nnU-Net: the mirroring it was trained for
            axes = tuple(network.input_mirror_axes())
        else:
            axes = tuple(range(x.ndim - 2))
        members = AugmentedMembers(
            base, x, spec.count, axes, spec.intensity_scale, spec.noise, seed
        )
    elif spec.kind == "dropout":
        members = DropoutMembers(base, spec.count, seed)
    elif hasattr(network, "member_pairs"):
        members = FoldMirrorMembers(base, list(model.source.get("folds") or []))
    else:
        members = CheckpointMembers(base, model.ensemble)
    return members.to(x.device)
