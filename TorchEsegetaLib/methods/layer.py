"""Layer methods: attributions computed on an inner layer, brought back to the input grid.

Every layer method is the same four steps, written once in :class:`LayerMethod`: run the score
model while a :class:`LayerProbe` captures one layer's output (and, for most methods, the score's
gradient with respect to it); compute a map per channel on the layer's grid; reduce the channels
to one map; upsample it trilinearly to the network's input grid and crop off the padding the
forward pass added. This module holds that mechanism (the probe itself is in :mod:`.probe`), the
layer discovery and the two simplest methods; Grad-CAM and its relatives are in :mod:`.cam`, the
methods relative to a baseline input in :mod:`.layer_reference`.

Windowed models (MONAI's sliding windows; nnU-Net's windows under each mirror combination, in
each fold) run the network several times per pass, so a layer has one feature map per network
input. Each window's map is computed in that window's frame as for a whole input (the gradients
are those of the target score of the whole blended prediction, so a window's Grad-CAM weights
say how that window's channels drive the model's actual decision), upsampled to the window and
brought back exactly as the window predictions are: flipped back, blended with the inferer's
own weights, averaged over mirror combinations and folds and, for nnU-Net, resampled back to the
input grid (:mod:`~TorchEsegetaLib.models.windowed`). A local target (ROI, voxel) runs only the
windows that touch it on MONAI models, and the map is zero where none of them reaches. Methods
whose map needs only the layer's output and gradient on the input (:attr:`streams`) run one
batch of network inputs at a time (:meth:`LayerMethod.attribute_by_window`); path methods take
their points one at a time (:meth:`LayerProbe.points`), each batch on its own graph.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

from ..errors import UserInputError
from .base import Method, Param, Passes, ScoreModel, register
from .probe import LayerProbe

if TYPE_CHECKING:
    import torch

    from ..engine.context import Context
    from ..targets.bound import BoundTarget

REDUCTIONS = ("sum", "mean", "max")
LAYER = Param(
    "layer",
    "str",
    "",
    "Layer name (empty: the last feature map with more channels than classes, the output of "
    "a U-Net decoder's last block; `torchesegeta layers` lists them).",
)
#: The layer of methods whose weights assume non-negative activations (a ReLU's output).
NONNEGATIVE_LAYER = Param(
    "layer",
    "str",
    "",
    "Layer name (empty: the last feature map without negative values with more channels than "
    "classes, e.g. the ReLU closing a U-Net decoder's last block, else the last wide one; "
    "`torchesegeta layers` lists them).",
)
REDUCE = Param(
    "reduce",
    "choice",
    "sum",
    "How the layer's channels become one map: their sum, mean or maximum.",
    choices=REDUCTIONS,
)


def layer_networks(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The networks a model calls, whose layers a layer method reads: the network itself, or
    (nnU-Net) each explained fold's network. Layer names are those of the first."""
    return list(getattr(network, "layer_networks", None) or [network])


def blank_input(
    network: torch.nn.Module, card: Any, side: int = 32
) -> tuple[Any, torch.Tensor, str]:
    """What to trace a model's layers on without an image: (the module to run, a blank input,
    what that input is). One window of a sliding-window model, a cube of ``side`` voxels
    (rounded up to ``size_divisible``) otherwise; for a pipeline that calls networks of its own
    (nnU-Net), one fold's network on one patch, since the pipeline needs an image's geometry."""
    import torch

    from ..models.inference import SegmentationForward

    networks = layer_networks(network)
    if networks[0] is not network:
        size = tuple(cast(Any, network).window_size)  # such a pipeline knows its patch
        blank = torch.zeros((1, card.in_channels, *size))
        return networks[0], blank, "one fold's network on one patch"
    multiple = max(1, int(card.size_divisible))
    side = -(-max(side, multiple) // multiple) * multiple
    size = tuple(card.roi_size or (side, side, side))
    return SegmentationForward(network, card), torch.zeros((1, card.in_channels, *size)), "a"


def list_layers(network: torch.nn.Module) -> list[dict[str, Any]]:
    """Convolution layers, in definition order (no forward pass needed)."""
    import torch

    network = layer_networks(network)[0]
    if isinstance(network, torch.jit.ScriptModule):
        return []
    conv = (torch.nn.modules.conv._ConvNd,)
    return [
        {"name": name, "type": type(module).__name__, "channels": module.out_channels}
        for name, module in network.named_modules()
        if isinstance(module, conv)
    ]


class _FirstCallTraced(Exception):
    """Ends a traced pass after the network's first call."""


def trace_layers(forward: torch.nn.Module, inputs: torch.Tensor) -> list[dict[str, Any]]:
    """Every named module of the network with its output shape, in the order they run.

    Only the network's first call is traced (the pass stops there): a sliding-window pass calls
    the network once per window batch, and each call runs the same layers. A module that runs
    several times in one call (reused by the network) is listed once per run.
    """
    import torch

    network = layer_networks(getattr(forward, "network", forward))[0]
    if isinstance(network, torch.jit.ScriptModule):
        return []
    seen: list[dict[str, Any]] = []
    calls = [0]

    def count(_module: Any, _args: Any) -> None:
        calls[0] += 1

    def stop(_module: Any, _args: Any, _output: Any) -> None:
        raise _FirstCallTraced  # the other window batches would run the same layers

    def record(name: str, module: torch.nn.Module, output: Any) -> None:
        if calls[0] == 1 and isinstance(output, torch.Tensor) and output.dim() == inputs.dim():
            seen.append(
                {
                    "name": name,
                    "type": type(module).__name__,
                    "channels": int(output.shape[1]),
                    "shape": list(output.shape[2:]),
                    "nonnegative": bool(output.min() >= 0),
                }
            )

    handles = [network.register_forward_pre_hook(count), network.register_forward_hook(stop)]
    handles += [
        module.register_forward_hook(lambda m, _i, o, name=name: record(name, m, o))
        for name, module in network.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            forward(inputs[:1])
    except _FirstCallTraced:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return seen


def default_layer(
    forward: torch.nn.Module,
    inputs: torch.Tensor,
    out_channels: int,
    nonnegative: bool = False,
    traced: list[dict[str, Any]] | None = None,
) -> str:
    """The last feature map computed with more channels than the model has classes.

    Execution order matters: in a U-Net that is the decoder's last wide feature map, just
    before the output block. Taking a module's *output* after its normalisation matters too: a
    convolution feeding an instance normalisation has gradients with zero spatial mean, which
    would make Grad-CAM's channel weights vanish. Modules that run more than once per network
    call (reused activations) are skipped: a layer map needs one feature map per input. With
    ``nonnegative``, the last such map without negative values (an activation's output) is
    preferred, for methods that assume one. ``traced``: :func:`trace_layers`'s answer, when known.
    """
    traced = trace_layers(forward, inputs) if traced is None else traced
    runs = Counter(layer["name"] for layer in traced)
    once = [layer for layer in traced if runs[layer["name"]] == 1]
    wide = [layer for layer in once if layer["channels"] > out_channels]
    if not traced:
        raise UserInputError(
            "this model exposes no layer for a layer method (TorchScript models hide their "
            "layers); load the network by name with its checkpoint, or choose a gradient method"
        )
    if not once:
        raise UserInputError(
            "every layer of this model runs several times per network call (modules reused by "
            "the network); name a layer with the method's layer parameter, or choose a "
            "gradient method"
        )
    positive = [layer for layer in wide if layer["nonnegative"]] if nonnegative else []
    return (positive or wide or once)[-1]["name"]


def resolve_layers(network: torch.nn.Module, name: str) -> list[torch.nn.Module]:
    """The module named ``name`` in each network the model calls (see :func:`layer_networks`)."""
    found = []
    for scope in layer_networks(network):
        modules = dict(scope.named_modules())
        if name not in modules or not name:
            names = [layer["name"] for layer in list_layers(network)]
            shown = ", ".join(names[-6:]) if names else "none"
            raise UserInputError(
                f"the model has no layer named {name!r}; convolution layers include: {shown} "
                "(`torchesegeta layers --model ...` lists them all)"
            )
        found.append(modules[name])
    return found


class LayerMethod(Method):
    """Base class: subclasses compute a per-channel map on the layer's grid (:meth:`layer_map`)."""

    family = "layer"
    quantity = "layer contribution to the score"
    needs_layer = True
    shared_channels = True
    params: ClassVar[tuple[Param, ...]] = (LAYER, REDUCE)

    #: the default layer must be non-negative (an activation's output), see :func:`default_layer`
    nonnegative_layer = False
    #: the map is :meth:`map_from` the layer's output (and its gradient) on the input alone:
    #: on a sliding-window model it is computed one window batch at a time
    streams = False
    #: :meth:`map_from` needs the score's gradient with respect to the layer
    needs_gradients = True

    def passes(self, shape, forward=None):
        # finding the default layer traces one forward pass
        found = Passes() if self.config.get("layer") else Passes(forward=1)
        return found + self.layer_passes(shape)

    def layer_passes(self, shape: tuple[int, ...]) -> Passes:
        """The passes of the map itself, once the layer is known."""
        return Passes(backward=1) if self.needs_gradients else Passes(forward=1)

    def layer_name(
        self,
        forward: torch.nn.Module,
        inputs: torch.Tensor,
        traced: list[dict[str, Any]] | None = None,
    ) -> str:
        import torch

        if self.config["layer"]:
            return self.config["layer"]
        out_channels = getattr(getattr(forward, "card", None), "out_channels", None)
        if out_channels is None:
            with torch.no_grad():
                out_channels = int(forward(inputs[:1]).shape[1])
        return default_layer(forward, inputs, out_channels, self.nonnegative_layer, traced)

    def target_refusal(self, target):
        if getattr(target, "uncertainty", None) is None:
            return None
        from ..models.uncertainty.members import MemberForward

        return f"{self.name} cannot explain this target: {MemberForward.layer_maps_refused}"

    def refusal(self, network):
        import torch

        # a network that tiles or resamples its input before its layers says why it cannot
        refused = getattr(network, "layer_maps_refused", None)
        if refused:
            return f"{self.name} cannot explain this model: {refused}"
        if isinstance(network, torch.jit.ScriptModule):
            return (
                f"{self.name} cannot explain this model: TorchScript models hide their layers; "
                "load the network by name with its checkpoint, or choose a gradient method"
            )
        if self.config["layer"]:
            try:
                resolve_layers(network, self.config["layer"])
            except UserInputError as error:
                return f"{self.name}: {error}"
        return None

    def preflight(self, forward, inputs, target):
        self.probe(forward, inputs, target)  # finds and checks the (default) layer

    def probe(
        self, forward: torch.nn.Module, inputs: torch.Tensor, target: BoundTarget
    ) -> LayerProbe:
        network = getattr(forward, "network", forward)
        name = self.layer_name(forward, inputs)
        return LayerProbe(ScoreModel(forward, target), network, resolve_layers(network, name), name)

    def attribute(self, forward, inputs, target, context):
        import torch

        probe = self.probe(forward, inputs, target)
        if self.streams and probe.windowed and forward.windows_per_pass(inputs.shape[2:]) > 1:
            return self.attribute_by_window(probe, forward, inputs, target, context)
        out = torch.empty(
            (inputs.shape[0], 1, *inputs.shape[2:]), dtype=inputs.dtype, device=inputs.device
        )

        def emit(start: int, stop: int, layer_map: torch.Tensor) -> None:
            cam = self.combine_channels(layer_map.to(inputs.dtype))
            out[start:stop] = probe.to_input_grid(cam, inputs.shape)

        self.compute(probe, inputs, context, emit)
        return out.expand(inputs.shape).contiguous()

    def attribute_by_window(self, probe, forward, inputs, target, context):
        """The map of a windowed model, one batch of network inputs at a time
        (:mod:`~TorchEsegetaLib.models.windowed`): each row's map from its feature map and
        the gradient of the whole pass's score, brought back as the predictions are. Equal to
        the maps of the whole pass in one graph (tested), with peak memory set by the batch."""
        import torch

        from ..models.windowed import layer_outputs, windowed_pass

        out = torch.empty(
            (inputs.shape[0], 1, *inputs.shape[2:]), dtype=inputs.dtype, device=inputs.device
        )

        def run(start: int, stop: int) -> None:
            passes = windowed_pass(forward, inputs[start:stop], target)
            for rows in passes.row_batches():
                context.check()
                activation, grads, _ = layer_outputs(
                    passes, rows, probe.layers, self.needs_gradients
                )
                layer_map = self.map_from(probe, activation, grads, context)
                passes.add_maps(rows, self.combine_channels(layer_map).to(inputs.dtype))
            out[start:stop] = passes.maps().to(out.device)

        context.map_batches(inputs.shape[0], run, self.name)
        return out.expand(inputs.shape).contiguous()

    def compute(
        self,
        probe: LayerProbe,
        inputs: torch.Tensor,
        context: Context,
        emit: Callable[[int, int, torch.Tensor], None],
    ) -> None:
        """Hand ``emit(start, stop, layer map)`` the map of every example; by default one pass
        per batch of examples (path methods override this to batch their steps instead)."""

        def run(start: int, stop: int) -> None:
            emit(start, stop, self.layer_map(probe, inputs[start:stop], context))

        context.map_batches(inputs.shape[0], run, self.name)

    def layer_map(self, probe: LayerProbe, inputs: torch.Tensor, context: Context) -> torch.Tensor:
        """(b, K, *s): the attribution of each channel of the layer, for a batch of inputs."""
        if self.needs_gradients:
            _, activation, grads = probe.gradients(inputs)
        else:
            activation, grads = probe.activations(inputs), None
        return self.map_from(probe, activation, grads, context)

    def map_from(
        self,
        probe: LayerProbe,
        activation: torch.Tensor,
        grads: torch.Tensor | None,
        context: Context,
    ) -> torch.Tensor:
        """The per-channel map from the layer's output and the score's gradient with respect
        to it (None unless :attr:`needs_gradients`), for methods that need nothing else."""
        raise NotImplementedError

    def combine_channels(self, layer_map: torch.Tensor) -> torch.Tensor:
        how = self.config["reduce"]
        if how == "max":
            return layer_map.amax(dim=1, keepdim=True)
        return getattr(layer_map, how)(dim=1, keepdim=True)


@register
class LayerActivation(LayerMethod):
    name = "layer_activation"
    title = "Layer Activation"
    summary = (
        "The layer's output itself, channels reduced and upsampled (independent of the target)."
    )
    signed = True
    quantity = "layer activation (target-independent)"
    cost = "1 forward"
    reference = "captum LayerActivation; Erhan et al. 2009 (activation maps)"
    streams = True
    needs_gradients = False

    def map_from(self, probe, activation, grads, context):
        return activation


@register
class LayerGradientXActivation(LayerMethod):
    name = "layer_gradient_x_activation"
    title = "Layer Gradient x Activation"
    summary = "The layer's output times the gradient of the target score with respect to it, voxel by voxel."
    signed = True
    quantity = "layer activation x d score / d activation"
    cost = "1 forward + 1 backward"
    reference = "Shrikumar et al. 2016, arXiv:1605.01713 (applied to a layer, as captum)"
    streams = True

    def map_from(self, probe, activation, grads, context):
        return grads * activation
