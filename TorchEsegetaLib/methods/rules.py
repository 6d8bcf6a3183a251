"""Modified backward passes by operation: the machinery of DeepLIFT and LRP.

Both methods keep the forward pass exact and change how the gradient goes back through chosen
operations (an activation, a normalisation, a convolution). MONAI networks call one activation
module twice (SegResNet's residual blocks), run activations in place, and add residuals with
``+``; hooks on modules (captum's DeepLift and LRP, zennit) mis-handle or miss those. A
:class:`RuleMode` intercepts the *function calls* instead (``torch.overrides.TorchFunctionMode``):
every call of a chosen function, whether a module makes it (reused or not) or the network's code
does, goes to a handler that computes the true output and attaches its own backward rule.
Nothing on the model is changed; leaving the block ends the interception.

This module imports torch at the top: the methods import it lazily, when they run.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import UserInputError

Handler = Callable[[Callable, tuple, dict], Any]

#: Below this input difference a rescale rule falls back to the gradient (captum's threshold).
RESCALE_EPS = 1e-10

ACTIVATIONS = (
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "gelu",
    "silu",
    "mish",
    "softplus",
    "hardtanh",
    "hardswish",
    "hardsigmoid",
    "prelu",
    "sigmoid",
    "tanh",
    "logsigmoid",
    "softsign",
    "tanhshrink",
)
# Operations that are linear (or affine) in their tensor inputs, or only move values around:
# their gradient is already the right multiplier, so they need no rule of their own.
_LINEAR = set(
    "conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear bilinear "
    "add add_ __add__ __radd__ __iadd__ sub sub_ __sub__ __rsub__ __isub__ neg __neg__ "
    "cat concat concatenate stack hstack vstack pad interpolate upsample __getitem__ __setitem__ "
    "view view_as reshape reshape_as permute transpose movedim flatten unflatten squeeze "
    "unsqueeze contiguous clone to type_as float double half expand expand_as repeat "
    "repeat_interleave narrow split chunk unbind select index_select flip roll dropout "
    "dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout avg_pool1d avg_pool2d "
    "avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d sum mean "
    "pixel_shuffle pixel_unshuffle copy_ detach adaptive_max_pool1d adaptive_max_pool2d "
    "adaptive_max_pool3d mul mul_ __mul__ __rmul__ __imul__ div div_ __truediv__ __itruediv__".split()
)
# max pooling passes its gradient to the winner, which DeepLIFT and LRP rule separately or accept;
# F.max_poolNd are dispatch wrappers named "fn", hence by identity
_WINNERS = {F.max_pool1d, F.max_pool2d, F.max_pool3d}
_PRODUCTS = {"mul", "mul_", "__mul__", "__rmul__", "__imul__"}
_QUOTIENTS = {"div", "div_", "__truediv__", "__itruediv__"}


def name_of(func: Callable) -> str:
    return getattr(func, "__name__", None) or repr(func)


def functions(*names: str, inplace: bool = True) -> list[Callable]:
    """Every torch function, ``Tensor`` method and ``torch.nn.functional`` function of ``names``
    (and their in-place variants)."""
    found = []
    for name in names:
        for variant in (name, name + "_") if inplace else (name,):
            for owner in (torch, torch.Tensor, F):
                func = getattr(owner, variant, None)
                if callable(func) and func not in found:
                    found.append(func)
    return found


def bind(func: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of a Python-level call by parameter name, defaults included."""
    bound = inspect.signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def first_tensor(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    """Split a call into its first (tensor) argument and the rest."""
    if args:
        return args[0], tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    return kwargs.pop("input"), (), kwargs


def out_of_place(func: Callable, rest: tuple, kwargs: dict) -> Callable[[torch.Tensor], Any]:
    """``func`` applied to a copy, so its in-place variants leave their input (saved for the
    backward rule) unchanged; the caller uses the returned tensor, as modules do."""
    return lambda x: func(x.clone(), *rest, **kwargs)


@dataclass
class Normalisation:
    """An instance, group or layer normalisation call, split into its groups: ``(x - mean) /
    std`` over the last axis of ``x.reshape(shape)``, then ``* weight + bias``."""

    input: torch.Tensor
    shape: tuple[int, ...]
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float
    call: Callable[[torch.Tensor], torch.Tensor]  # the original call on another input

    def centred(self, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(self.shape)
        return t - t.mean(dim=-1, keepdim=True)

    def std(self, t: torch.Tensor) -> torch.Tensor:
        c = self.centred(t)
        return ((c * c).mean(dim=-1, keepdim=True) + self.eps).sqrt()

    def affine(self, normalised: torch.Tensor) -> torch.Tensor:
        y = normalised.reshape(self.input.shape)
        if self.weight is not None:
            y = y * self.weight
        return y + self.bias if self.bias is not None else y


def normalisation(func: Callable, args: tuple, kwargs: dict) -> Normalisation | None:
    """The groups of an ``instance_norm``, ``group_norm`` or ``layer_norm`` call; None when it
    normalises with running statistics (an affine map)."""
    kind = name_of(func)
    call = bind(func, args, kwargs)
    x, weight, bias = call["input"], call["weight"], call["bias"]
    if kind == "instance_norm" and not call["use_input_stats"]:
        return None
    if kind == "layer_norm":
        size = math.prod(x.shape[x.dim() - len(call["normalized_shape"]) :])
        shape = (-1, 1, size)
    else:
        shape = (x.shape[0], call.get("num_groups") or x.shape[1], -1)
        per_channel = (1, -1, *[1] * (x.dim() - 2))
        weight = weight.reshape(per_channel) if weight is not None else None
        bias = bias.reshape(per_channel) if bias is not None else None
    return Normalisation(
        x, shape, weight, bias, call["eps"], lambda t: func(**{**call, "input": t})
    )


class _Modified(torch.autograd.Function):
    @staticmethod
    def forward(ctx, output_fn, backward, keep_inputs, *inputs):
        out = output_fn(*inputs)
        ctx.backward = backward
        ctx.save_for_backward(*(inputs if keep_inputs else ()), out)
        return out

    @staticmethod
    def backward(ctx, grad):
        *inputs, out = ctx.saved_tensors
        return (None, None, None, *ctx.backward(grad, tuple(inputs), out))


def modified(
    output_fn: Callable[..., torch.Tensor],
    backward: Callable[[torch.Tensor, tuple, torch.Tensor], Iterable[torch.Tensor | None]],
    *inputs: torch.Tensor,
    keep_inputs: bool = True,
) -> torch.Tensor:
    """``output_fn(*inputs)`` whose backward pass is ``backward(grad_output, inputs, output)``
    (one gradient per input) instead of the chain rule.

    ``keep_inputs=False`` hands ``backward`` no inputs (an empty tuple): for rules that keep
    their own copies, when the network later writes into the inputs in place (MONAI's
    sliding-window accumulation), which autograd's saved tensors do not allow.
    """
    return _Modified.apply(output_fn, backward, keep_inputs, *inputs)


def vjp(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor):
    """The vector-Jacobian product ``v^T d fn / dx`` at ``x``."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(x), x, v)
    return grad


class RuleMode(TorchFunctionMode):
    """Within the block, each call of a function in ``handlers`` goes to
    ``handlers[func](func, args, kwargs)``; other calls, and calls the handler declines by
    returning ``NotImplemented``, run unchanged.

    ``unhandled`` collects the names of differentiable, non-linear operations that went through
    by their plain gradient: the rule has no say there, so they explain a gap in conservation.
    """

    def __init__(self, handlers: dict[Callable, Handler]):
        super().__init__()
        self.handlers = handlers
        self.unhandled: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            handler = self.handlers.get(func)
        except TypeError:  # an unhashable callable: never one of ours
            handler = None
        if handler is not None:
            out = handler(func, args, kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if (
            isinstance(out, torch.Tensor)
            and out.requires_grad
            and not _is_linear(func, args, kwargs)
        ):
            self.unhandled.add(name_of(func))
        return out


def _is_linear(func: Callable, args: tuple, kwargs: dict) -> bool:
    if any(func is winner for winner in _WINNERS):
        return True
    name = name_of(func)
    if name == "batch_norm":  # affine unless it normalises with the batch's own statistics
        return not bind(func, args, kwargs)["training"]
    if name not in _LINEAR:
        return False
    if name in _PRODUCTS or name in _QUOTIENTS:
        grads = [a for a in args[:2] if isinstance(a, torch.Tensor) and a.requires_grad]
        # x * c and x / c are linear in x; x * y is not, nor is c / x
        return len(grads) <= 1 and (name in _PRODUCTS or not grads or grads[0] is args[0])
    return True


def scripted_refusal(network: torch.nn.Module, method: str) -> str | None:
    """TorchScript runs its operations in C++, out of reach of the interception and of
    module hooks: why ``method`` cannot explain ``network``, or None when nothing is scripted."""
    if not any(isinstance(m, torch.jit.ScriptModule) for m in network.modules()):
        return None
    return (
        f"{method} needs an eager PyTorch model: a TorchScript model runs its operations "
        "outside Python and refuses module hooks, so its propagation rules cannot be "
        "applied; choose a gradient or perturbation method, or load the model "
        "from its network definition and weights (a MONAI network name + checkpoint or a "
        "bundle) instead"
    )


def refuse_scripted(forward: torch.nn.Module, method: str) -> None:
    """Raise the :func:`scripted_refusal` of ``method`` on ``forward``, if any."""
    refused = scripted_refusal(forward, method)
    if refused:
        raise UserInputError(refused)


def unhandled_note(method: str, mode_unhandled: set[str], what: str) -> str:
    ops = ", ".join(sorted(mode_unhandled)) or "none found"
    return (
        f"{method}: {what}; operations without a {method} rule went through by their plain "
        f"gradient: {ops}"
    )
