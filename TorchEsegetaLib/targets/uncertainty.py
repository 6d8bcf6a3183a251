"""Explaining the uncertainty: a target whose score is the mean predictive entropy over a region.

``--target uncertainty:REGION`` (REGION any target form: ``class:vessel``, ``roi:...``,
``mask:FILE``, ``voxel:...``) fixes the region as that target would, then scores the predictive
entropy of the members' mean prediction (:func:`~TorchEsegetaLib.models.uncertainty.statistics.predictive_entropy`)
instead of a class's logit: the forward it scores is a
:class:`~TorchEsegetaLib.models.uncertainty.members.MemberForward`, whose output holds every
member's logits side by side. Every attribution method then answers "which voxels make the
model unsure here", through the same members as the uncertainty maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import UserInputError
from .bound import BoundTarget

if TYPE_CHECKING:
    import torch

    from ..models.card import ModelCard
    from ..models.uncertainty import UncertaintySpec
    from .spec import TargetSpec


class EntropyTarget(BoundTarget):
    """``target(member logits (B, M * K, *S)) -> (B,)``: the predictive entropy of the members'
    mean prediction, reduced over the region of ``bound`` (the mean by default)."""

    #: why LRP cannot explain this target (read by its preflight)
    relevance_refused = (
        "LRP passes a class logit's relevance back through the network, and the predictive "
        "entropy of several members is no logit; use a gradient, DeepLIFT or perturbation method"
    )

    def __init__(self, bound: BoundTarget, kind: str, members: int, exclusive: bool) -> None:
        super().__init__(
            bound.class_index, bound.region, bound.output, bound.activation, bound.reduction
        )
        self.kind = kind
        self.members = members
        self.exclusive = exclusive

    def voxel_scores(
        self, logits: torch.Tensor, box: tuple[slice, ...] | None = None
    ) -> torch.Tensor:
        from ..models.uncertainty.statistics import predictive_entropy

        batch, channels = logits.shape[:2]
        if channels % self.members:
            raise ValueError(f"{channels} channels are not {self.members} members' outputs")
        per_member = logits.reshape(batch, self.members, -1, *logits.shape[2:])
        values = predictive_entropy(per_member, self.activation, self.exclusive)
        weights = self.region_weights(values.device, values.dtype)
        return values * (weights if box is None else weights[box])  # the entropy is voxelwise

    def output_gradient(
        self, channels: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor | None:
        return None  # the entropy is not linear in the logits

    def describe(self, card: ModelCard) -> dict[str, Any]:
        return {**super().describe(card), "uncertainty": self.kind, "members": self.members}


def resolve_members(target: TargetSpec, specs: Sequence[UncertaintySpec]) -> TargetSpec:
    """``target`` with its ``uncertainty`` made a whole spec: "auto" becomes the first of
    ``specs`` (the job's uncertainty list), a kind's name that kind's entry of ``specs`` (or its
    defaults), so the target's members are those of the maps."""
    from ..models.uncertainty import UncertaintySpec

    value = target.uncertainty
    if value is None:
        return target
    if value == "auto":
        if not specs:
            raise UserInputError(
                "an uncertainty target scores the predictive entropy of the members of the "
                "job's first uncertainty kind, and the job lists none; add --uncertainty tta "
                "(or ensemble, dropout)"
            )
        chosen = specs[0]
    else:
        asked = UncertaintySpec.from_any(value)
        listed = [s for s in specs if s.kind == asked.kind]
        chosen = listed[0] if isinstance(value, str) and listed else asked
    target.uncertainty = chosen.to_dict(every=True)
    return target
