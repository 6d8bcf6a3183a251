"""Every refusal that the model, the methods and the target as asked decide, before any network
pass.

A run segments the volume first (minutes on a large model), so what can be known without it is
asked first, in one place: the input against the model card (channels, size), the target
against the card and the image's grid (an unknown class, an empty mask, an ROI or voxel outside
the image) and each method against the loaded network (:meth:`Method.refusal
<TorchEsegetaLib.methods.base.Method.refusal>`: a TorchScript model for a method that must see
into it, a layer the network lacks or cannot map, a parameter naming a missing file). The
methods and the network say whether they can run; nothing here knows a method or a model kind,
so a method that learns to explain a model passes here without a change.

What needs the prediction (a class the model does not predict in this image, the default layer
found on the input) is checked right after the segmentation, by each method's ``preflight``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UserInputError

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
    from ..targets.bound import region_in_input_grid, target_class

    check_input(volume, model.card)
    target_class(target, model.card)  # an unknown class name or index
    if target.kind != "class":
        region_in_input_grid(target, volume.geometry)  # an empty mask, a place outside the image
    refused = [
        (spec.label, reason)
        for spec, method in zip(specs, methods)
        if (reason := method.refusal(model.network))
    ]
    if refused:
        others = [label for label, _ in refused[1:]]
        also = f" (also refused: {', '.join(others)})" if others else ""
        raise UserInputError(f"{refused[0][1]}{also}")
