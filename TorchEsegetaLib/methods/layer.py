"""Layer methods: attributions computed on an inner layer, brought back to the input grid."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UserInputError
from .base import Method, Param, ScoreModel, register

if TYPE_CHECKING:
    import torch


def _conv_types() -> tuple[type, ...]:
    import torch

    return (
        torch.nn.Conv1d,
        torch.nn.Conv2d,
        torch.nn.Conv3d,
        torch.nn.ConvTranspose1d,
        torch.nn.ConvTranspose2d,
        torch.nn.ConvTranspose3d,
    )


def list_layers(network: torch.nn.Module) -> list[dict[str, Any]]:
    """Convolution layers a layer method can use, in forward-definition order."""
    import torch

    if isinstance(network, torch.jit.ScriptModule):
        return []
    return [
        {"name": name, "type": type(module).__name__, "out_channels": module.out_channels}
        for name, module in network.named_modules()
        if isinstance(module, _conv_types())
    ]


def default_layer(network: torch.nn.Module, out_channels: int) -> str:
    """The last convolution with more channels than the model has classes (a decoder feature map)."""
    layers = list_layers(network)
    wide = [layer for layer in layers if layer["out_channels"] > out_channels]
    if not (wide or layers):
        raise UserInputError(
            "this model exposes no convolution layer for a layer method (TorchScript models hide "
            "their layers); load the network by name with its checkpoint, or choose a gradient method"
        )
    return (wide or layers)[-1]["name"]


def resolve_layer(network: torch.nn.Module, name: str) -> torch.nn.Module:
    modules = dict(network.named_modules())
    if name not in modules or not name:
        names = [layer["name"] for layer in list_layers(network)]
        shown = ", ".join(names[-8:]) if names else "none"
        raise UserInputError(
            f"the model has no layer named {name!r}; convolution layers include: {shown} "
            "(`torchesegeta layers --model ...` lists them all)"
        )
    return modules[name]


@register
class GradCAM(Method):
    name = "gradcam"
    title = "Grad-CAM"
    summary = "Channel activations of a layer weighted by their mean gradient, trilinearly upsampled to the input grid."
    family = "layer"
    signed = False
    cost = "1 forward + 1 backward"
    reference = "Selvaraju et al. 2017, arXiv:1610.02391"
    needs_layer = True
    shared_channels = True
    params = (
        Param("layer", "str", "", "Layer name (empty: the last convolution with more channels than classes)."),
        Param("relu", "bool", True, "Keep only positive evidence (the ReLU of the original Grad-CAM)."),
    )

    def layer_name(self, forward: torch.nn.Module) -> str:
        network = getattr(forward, "network", forward)
        if self.config["layer"]:
            return self.config["layer"]
        return default_layer(network, getattr(getattr(forward, "card", None), "out_channels", 1))

    def attribute(self, forward, inputs, target, context):
        import torch
        import torch.nn.functional as F

        network = getattr(forward, "network", forward)
        layer = resolve_layer(network, self.layer_name(forward))
        score = ScoreModel(forward, target)
        out = torch.empty((inputs.shape[0], 1, *inputs.shape[2:]), dtype=inputs.dtype, device=inputs.device)

        def compute(start: int, stop: int) -> None:
            captured: list[torch.Tensor] = []
            handle = layer.register_forward_hook(lambda _m, _i, output: captured.append(output))
            try:
                with torch.enable_grad():
                    scores = score(inputs[start:stop].detach().requires_grad_(True))
                    activation = captured[-1]
                    (grads,) = torch.autograd.grad(scores.sum(), activation)
            finally:
                handle.remove()
            spatial = tuple(range(2, activation.dim()))
            weights = grads.mean(dim=spatial, keepdim=True)
            cam = (weights * activation.detach()).sum(dim=1, keepdim=True)
            if self.config["relu"]:
                cam = torch.relu(cam)
            mode = "trilinear" if cam.dim() == 5 else "bilinear"
            out[start:stop] = F.interpolate(cam, size=inputs.shape[2:], mode=mode, align_corners=False)

        context.map_batches(inputs.shape[0], compute, self.name)
        return out.expand(inputs.shape).contiguous()
