"""Class activation maps weighted by gradients: Grad-CAM, Grad-CAM++, HiResCAM, XGrad-CAM,
LayerCAM, Eigen-CAM, Eigen-Grad-CAM and Guided Grad-CAM, on any 3D feature map.

Each combines a layer's channels A_k, with weights or per-voxel factors computed from the
gradient g_k = dS/dA_k of the target score S, on the shared mechanism of
:class:`~.layer.LayerMethod` (capture, channel reduction, trilinear upsampling, and on windowed
models one map per window brought back as the predictions are). The map is never rescaled: not
to [0, 1], not per window. The score-weighted CAMs (Score-CAM, Ablation-CAM) are in
:mod:`.cam_scores`.

The CAMs of pytorch-grad-cam that are left out, and why: FullGrad min-max normalises each
layer's and each channel's bias-gradient map before summing them (on windows that would be
per window) and is input gradient x input plus those terms; ShapleyCAM needs second-order
gradients (a Hessian-vector product) through the whole pass, which window-by-window passes do
not give for a non-linear target; FinerCAM is Grad-CAM of a different score (the target class
minus its most similar classes), which belongs to the target, not to the method; KPCA-CAM's
kernel matrix grows with the square of a layer's voxels (a 64^3 layer: 7e10 entries).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .base import Param, Passes, register
from .gradient import GuidedBackprop
from .layer import LAYER, NONNEGATIVE_LAYER, REDUCE, LayerMethod

if TYPE_CHECKING:
    import torch

RELU = Param(
    "relu", "bool", True, "Keep only positive evidence (the ReLU of the original Grad-CAM)."
)


def divided_or_zero(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` where the denominator is not zero, 0 where it is (a channel
    with no activation or no gradient gets no weight), without a division by zero."""
    import torch

    nonzero = denominator != 0
    return torch.where(nonzero, numerator / denominator.where(nonzero, 1), 0)


class _ClassActivationMap(LayerMethod):
    """A per-channel map from the layer's activations and gradients, summed, then a ReLU."""

    signed = False
    page_group = "cam"
    quantity = "gradient-weighted layer activation"
    cost = "1 forward + 1 backward"
    params: ClassVar[tuple[Param, ...]] = (LAYER, REDUCE, RELU)

    def __init__(self, **values):
        super().__init__(**values)
        self.signed = not self.config.get("relu", True)

    streams = True

    def channel_weights(self, activation: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """(b, K, 1, ...) weights of the channels."""
        raise NotImplementedError

    def channel_map(self, activation: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """(b, K, *s): each channel's contribution; by default its weight times its activation."""
        return self.channel_weights(activation, grads) * activation

    def map_from(self, probe, activation, grads, context):
        if self.nonnegative_layer and bool(activation.min() < 0):
            note = (
                f"{self.name}: layer {probe.name!r} has negative activations, which its weights "
                "assume away; choose an activation's output if the map vanishes"
            )
            if note not in context.notes:
                context.notes.append(note)
        return self.channel_map(activation, grads)

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
    params = (NONNEGATIVE_LAYER, REDUCE, RELU)

    def channel_weights(self, activation, grads):
        import torch

        spatial = tuple(range(2, grads.dim()))
        grads2 = grads * grads
        denominator = 2 * grads2 + activation.sum(dim=spatial, keepdim=True) * grads2 * grads
        # Where the gradient is zero the numerator is zero too: alpha is 0 there (as the authors' code).
        alpha = divided_or_zero(grads2, denominator)
        return (alpha * torch.relu(grads)).sum(dim=spatial, keepdim=True)


@register
class HiResCAM(_ClassActivationMap):
    """HiResCAM: the gradient times the activation voxel by voxel, summed over the channels.

    Grad-CAM averages each channel's gradient over space before multiplying; HiResCAM keeps it
    per voxel, so the map (before the ReLU) is exactly the layer's first-order contribution to
    the score, sum_k g_k A_k. With a region target (a class over its mask, a user mask, an ROI
    box) it is Seg-XRes-CAM (Hasany et al. 2023, arXiv:2303.17806) at full resolution: the
    gradient of the region's score, not of one voxel's.
    """

    name = "hirescam"
    title = "HiResCAM"
    summary = "Gradient times activation of a layer, voxel by voxel, summed over channels (over a region target: Seg-XRes-CAM)."
    quantity = "layer activation x d score / d activation, summed over channels"
    reference = (
        "Draelos & Carin 2020, arXiv:2011.08891; Seg-XRes-CAM: Hasany et al. 2023, arXiv:2303.17806"
    )

    def channel_map(self, activation, grads):
        return grads * activation


@register
class XGradCAM(_ClassActivationMap):
    """XGrad-CAM: each channel weighted by its gradient averaged with the channel's own
    activations as weights, w_k = sum(g_k A_k) / sum(A_k) (sums over the three spatial axes),
    the weights that make the map satisfy the paper's sensitivity and conservation axioms for
    ReLU feature maps. A channel whose activations sum to zero gets weight 0."""

    name = "xgradcam"
    title = "XGrad-CAM"
    summary = "Grad-CAM whose channel weights are gradients averaged with the channel's activations as weights (axiom-based)."
    quantity = "axiom-weighted layer activation"
    reference = "Fu et al. 2020, arXiv:2008.02312"
    nonnegative_layer = True
    params = (NONNEGATIVE_LAYER, REDUCE, RELU)

    def channel_weights(self, activation, grads):
        spatial = tuple(range(2, grads.dim()))
        total = activation.sum(dim=spatial, keepdim=True)
        weighted = (grads * activation).sum(dim=spatial, keepdim=True)
        return divided_or_zero(weighted, total)


@register
class LayerCAM(_ClassActivationMap):
    """LayerCAM: each voxel's activation weighted by its own positive gradient, relu(g_k) A_k,
    summed over the channels; reliable on shallow, high-resolution layers too."""

    name = "layercam"
    title = "LayerCAM"
    summary = "Activations weighted voxel by voxel by their positive gradients, summed over channels; works on early, fine layers too."
    quantity = "layer activation x positive d score / d activation"
    reference = "Jiang et al. 2021, IEEE TIP 30:5875 (doi:10.1109/TIP.2021.3089943)"
    nonnegative_layer = True
    params = (NONNEGATIVE_LAYER, REDUCE, RELU)

    def channel_map(self, activation, grads):
        import torch

        return torch.relu(grads) * activation


def first_component(values: torch.Tensor) -> torch.Tensor:
    """(b, K, *s) -> (b, 1, *s): each example's projection on the first principal component of
    its voxels' K-vectors (centred over the voxels), as pytorch-grad-cam's
    ``get_2d_projection`` (an SVD) computes it, in float64. The sign, which an SVD leaves
    arbitrary, is fixed so that the component's channel weights sum to a non-negative number: a
    voxel whose channels sum to more than the mean scores positive."""
    import torch

    flat = values.flatten(2).transpose(1, 2).double()  # (b, voxels, K)
    centred = flat - flat.mean(dim=1, keepdim=True)
    _, vectors = torch.linalg.eigh(centred.transpose(1, 2) @ centred)
    first = vectors[..., -1:]  # eigenvalues ascend: the largest comes last
    first = torch.where(first.sum(dim=1, keepdim=True) < 0, -first, first)
    projection = (centred @ first).transpose(1, 2)
    return projection.reshape(values.shape[0], 1, *values.shape[2:]).to(values.dtype)


class _EigenCAM(_ClassActivationMap):
    params = (LAYER, RELU)
    signed = False

    def combine_channels(self, layer_map):
        import torch

        return torch.relu(layer_map) if self.config["relu"] else layer_map


@register
class EigenCAM(_EigenCAM):
    """Eigen-CAM: the layer's activations projected on their first principal component (over
    the voxels of each example, or of each window). It does not depend on the target: it shows
    what the layer represents most strongly, not why the class was chosen."""

    name = "eigencam"
    title = "Eigen-CAM"
    summary = "The layer's activations projected on their first principal component (target-independent, no gradient)."
    quantity = "first principal component of the layer's activations (target-independent)"
    cost = "1 forward"
    reference = "Muhammad & Yeasin 2020, arXiv:2008.00299"
    needs_gradients = False

    def channel_map(self, activation, grads):
        return first_component(activation)


@register
class EigenGradCAM(_EigenCAM):
    """Eigen-Grad-CAM: HiResCAM's per-voxel products g_k A_k projected on their first principal
    component: class-specific like HiResCAM, smoothed like Eigen-CAM."""

    name = "eigengradcam"
    title = "Eigen-Grad-CAM"
    summary = "Gradient x activation of a layer projected on its first principal component (class-specific Eigen-CAM)."
    quantity = "first principal component of layer activation x d score / d activation"
    reference = "pytorch-grad-cam's EigenGradCAM (Gildenblat et al.), after Muhammad & Yeasin 2020, arXiv:2008.00299"

    def channel_map(self, activation, grads):
        return first_component(grads * activation)


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
