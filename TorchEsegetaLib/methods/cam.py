"""Class activation maps: Grad-CAM, Grad-CAM++ and Guided Grad-CAM, on any 3D feature map.

Each weights a layer's channels by the gradient of the target score, on the shared mechanism of
:class:`~.layer.LayerMethod` (capture, channel reduction, trilinear upsampling).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .base import Param, Passes, register
from .gradient import GuidedBackprop
from .layer import LAYER, REDUCE, LayerMethod

if TYPE_CHECKING:
    import torch

RELU = Param(
    "relu", "bool", True, "Keep only positive evidence (the ReLU of the original Grad-CAM)."
)


class _ClassActivationMap(LayerMethod):
    """Channel activations times per-channel weights computed from the layer's gradients."""

    signed = False
    quantity = "gradient-weighted layer activation"
    cost = "1 forward + 1 backward"
    params: ClassVar[tuple[Param, ...]] = (LAYER, REDUCE, RELU)

    def __init__(self, **values):
        super().__init__(**values)
        self.signed = not self.config.get("relu", True)

    def channel_weights(self, activation: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """(b, K, 1, ...) weights of the channels."""
        raise NotImplementedError

    streams = True

    def map_from(self, probe, activation, grads, context):
        if self.nonnegative_layer and bool(activation.min() < 0):
            note = (
                f"{self.name}: layer {probe.name!r} has negative activations, which its weights "
                "assume away; choose an activation's output if the map vanishes"
            )
            if note not in context.notes:
                context.notes.append(note)
        return self.channel_weights(activation, grads) * activation

    def combine_channels(self, layer_map):
        import torch

        cam = super().combine_channels(layer_map)
        return torch.relu(cam) if self.config.get("relu", True) else cam


@register
class GradCAM(_ClassActivationMap):
    name = "gradcam"
    title = "Grad-CAM"
    summary = "Channel activations of a layer weighted by their mean gradient, trilinearly upsampled to the input grid."
    reference = "Selvaraju et al. 2017, arXiv:1610.02391"

    def channel_weights(self, activation, grads):
        return grads.mean(dim=tuple(range(2, grads.dim())), keepdim=True)


@register
class GradCAMPlusPlus(_ClassActivationMap):
    """Grad-CAM++ with the sums of its alpha weights over all three spatial axes.

    With g = dS/dA (S the target score, A a channel of the layer), the paper's eq. 19 gives
    alpha = g^2 / (2 g^2 + sum(A) g^3) per voxel, and the channel weight is sum(alpha * relu(g)).
    (MONAI's GradCAMpp sums A g^3 instead of multiplying sum(A) by g^3, which agrees only when g is
    constant over the channel, and scores a segmentation output per voxel, so it fails on
    segmentation networks.) The paper's factor exp(S) is left out: it is one positive number per
    example that only rescales the map, and it overflows for summed scores.

    The derivation assumes non-negative activations (a ReLU's output): every channel weight is
    non-negative, so on a signed feature map (a U-Net's skip concatenation after normalisation)
    the weighted sum can be negative everywhere and vanish after the ReLU. The default layer is
    therefore the last wide feature map without negative values.
    """

    name = "gradcam_pp"
    title = "Grad-CAM++"
    summary = "Grad-CAM whose channel weights sum positive gradients with per-voxel alpha weights (3D sums), favouring several object parts."
    reference = "Chattopadhyay et al. 2018, arXiv:1710.11063"
    nonnegative_layer = True

    def channel_weights(self, activation, grads):
        import torch

        spatial = tuple(range(2, grads.dim()))
        grads2 = grads * grads
        denominator = 2 * grads2 + activation.sum(dim=spatial, keepdim=True) * grads2 * grads
        # Where the gradient is zero the numerator is zero too: alpha is 0 there (as the authors' code).
        alpha = torch.where(denominator != 0, grads2 / denominator.where(denominator != 0, 1), 0)
        return (alpha * torch.relu(grads)).sum(dim=spatial, keepdim=True)


@register
class GuidedGradCAM(GradCAM):
    """Guided backpropagation times the upsampled (ReLU'd) Grad-CAM, as captum's GuidedGradCam."""

    name = "guided_gradcam"
    title = "Guided Grad-CAM"
    summary = "Guided backpropagation times the upsampled Grad-CAM: fine detail limited to the regions Grad-CAM highlights."
    signed = True
    quantity = "guided d score / d intensity x Grad-CAM"
    cost = "2 forward + 2 backward"
    reference = "Selvaraju et al. 2017, arXiv:1610.02391"
    shared_channels = False
    params = (LAYER, REDUCE)

    def layer_passes(self, shape):
        return Passes(backward=2)  # Grad-CAM and guided backpropagation

    def __init__(self, **values):
        super().__init__(**values)
        self.signed = True

    def attribute(self, forward, inputs, target, context):
        cam = super().attribute(forward, inputs, target, context.quiet())
        return GuidedBackprop().attribute(forward, inputs, target, context) * cam
