"""Every refusal that the model, the methods and the target as asked decide, before any network
pass.

A run segments the volume first (minutes on a large model), so what can be known without it is
asked first, in one place: the input against the model card (channels, size), the target
against the card and the image's grid (an unknown class, a contrast of a class with itself, an
empty mask, an ROI, voxel or object's point outside the image) and each method against the
loaded network (:meth:`Method.refusal <TorchEsegetaLib.methods.base.Method.refusal>`: a
TorchScript model for a method that must see into it, a layer the network lacks or cannot map, a
parameter naming a missing file; :meth:`Method.target_refusal`: a target the method cannot
explain whatever the prediction, e.g. a layer map of an uncertainty target). The methods and the
network say whether they can run; nothing here knows a method or a model kind, so a method that
learns to explain a model passes here without a change.

What needs the prediction (a class the model does not predict in this image, the default layer
found on the input) is checked right after the segmentation, by each method's ``preflight``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UserInputError

#: the target kinds whose region the user gives (the others' regions come from the prediction)
GIVEN_REGION_KINDS = ("mask", "roi", "voxel")

if TYPE_CHECKING:
    from ..io.volume import Volume
    from ..models.loading import LoadedModel
    from ..targets.spec import TargetSpec
    from .job import MethodSpec


def preflight(
    volume: Volume,
    model: LoadedModel,
    target: TargetSpec,
    specs: list[MethodSpec],
    methods: list[Any],
) -> None:
    """Raise one :class:`UserInputError` line for the first thing that stops this run before
    any network pass (see the module); ``methods`` are the instances of ``specs``."""
    from ..models.inference import check_input
    from ..targets.bound import region_in_input_grid, target_class, versus_class, voxel_index

    check_input(volume, model.card)
    # an unknown class name or index; a contrast's class B unknown or the same as A
    versus_class(target, model.card, target_class(target, model.card))
    if target.kind in GIVEN_REGION_KINDS:
        region_in_input_grid(target, volume.geometry)  # an empty mask, a place outside the image
    elif target.voxel is not None:  # an object target's point outside the image
        voxel_index(target, volume.geometry)
    refused = [
        (spec.label, reason)
        for spec, method in zip(specs, methods)
        if (reason := method.refusal(model.network) or method.target_refusal(target))
    ]
    if refused:
        others = [label for label, _ in refused[1:]]
        also = f" (also refused: {', '.join(others)})" if others else ""
        raise UserInputError(f"{refused[0][1]}{also}")
