"""Layer methods: attributions computed on an inner layer, brought back to the input grid."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UserInputError
from .base import Method, Param, ScoreModel, register

if TYPE_CHECKING:
    import torch


def list_layers(network: torch.nn.Module) -> list[dict[str, Any]]:
    """Convolution layers, in definition order (no forward pass needed)."""
    import torch

    if isinstance(network, torch.jit.ScriptModule):
        return []
    conv = (torch.nn.modules.conv._ConvNd,)
    return [
        {"name": name, "type": type(module).__name__, "channels": module.out_channels}
        for name, module in network.named_modules()
        if isinstance(module, conv)
    ]


def trace_layers(forward: torch.nn.Module, inputs: torch.Tensor) -> list[dict[str, Any]]:
    """Every named module of the network with its output shape, in the order they run."""
    import torch

    network = getattr(forward, "network", forward)
    if isinstance(network, torch.jit.ScriptModule):
        return []
    seen: list[dict[str, Any]] = []

    def record(name: str, module: torch.nn.Module, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == inputs.dim():
            seen.append(
                {
                    "name": name,
                    "type": type(module).__name__,
                    "channels": int(output.shape[1]),
                    "shape": list(output.shape[2:]),
                }
            )

    handles = [
        module.register_forward_hook(lambda m, _i, o, name=name: record(name, m, o))
        for name, module in network.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            forward(inputs[:1])
    finally:
        for handle in handles:
            handle.remove()
    return seen


def default_layer(forward: torch.nn.Module, inputs: torch.Tensor, out_channels: int) -> str:
    """The last feature map computed with more channels than the model has classes.

    Execution order matters: in a U-Net that is the decoder's last wide feature map, just
    before the output block. Taking a module's *output* after its normalisation matters too: a
    convolution feeding an instance normalisation has gradients with zero spatial mean, which
    would make Grad-CAM's channel weights vanish.
    """
    traced = trace_layers(forward, inputs)
    wide = [layer for layer in traced if layer["channels"] > out_channels]
    if not (wide or traced):
        raise UserInputError(
            "this model exposes no layer for a layer method (TorchScript models hide their "
            "layers); load the network by name with its checkpoint, or choose a gradient method"
        )
    return (wide or traced)[-1]["name"]


def resolve_layer(network: torch.nn.Module, name: str) -> torch.nn.Module:
    modules = dict(network.named_modules())
    if name not in modules or not name:
        names = [layer["name"] for layer in list_layers(network)]
        shown = ", ".join(names[-6:]) if names else "none"
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
        Param(
            "layer",
            "str",
            "",
            "Layer name (empty: the last convolution with more channels than classes).",
        ),
        Param(
            "relu", "bool", True, "Keep only positive evidence (the ReLU of the original Grad-CAM)."
        ),
    )

    def layer_name(self, forward: torch.nn.Module, inputs: torch.Tensor) -> str:
        import torch

        if self.config["layer"]:
            return self.config["layer"]
        out_channels = getattr(getattr(forward, "card", None), "out_channels", None)
        if out_channels is None:
            with torch.no_grad():
                out_channels = int(forward(inputs[:1]).shape[1])
        return default_layer(forward, inputs, out_channels)

    def attribute(self, forward, inputs, target, context):
        import torch
        import torch.nn.functional as F

        network = getattr(forward, "network", forward)
        layer = resolve_layer(network, self.layer_name(forward, inputs))
        score = ScoreModel(forward, target)
        out = torch.empty(
            (inputs.shape[0], 1, *inputs.shape[2:]), dtype=inputs.dtype, device=inputs.device
        )

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
            out[start:stop] = F.interpolate(
                cam, size=inputs.shape[2:], mode=mode, align_corners=False
            )

        context.map_batches(inputs.shape[0], compute, self.name)
        return out.expand(inputs.shape).contiguous()
