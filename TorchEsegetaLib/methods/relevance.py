"""Layer-wise relevance propagation (LRP) for 3D segmentation networks.

The score's relevance, ``R = region weight x scored value`` per voxel of the target class,
goes back layer by layer and is redistributed onto each layer's inputs in proportion to their
contributions, so that it is conserved (up to what biases and the stabiliser absorb).

Why our own propagation rather than zennit or captum's LRP: both attach rules to *modules*.
captum's LRP accepts a fixed list of layer types (no Conv3d rule by default, no instance or
group normalisation, refuses unknown modules) and, like zennit, stores state on each module,
which a module called twice (SegResNet's activation) overwrites. Neither has a rule for a
residual ``a + b`` written as Python code (MONAI's residual units, SegResNet), so the relevance
reaching both branches in full is counted twice: zennit 0.5 (which also pulls in torchvision)
gives a relevance sum of -12.4 for a score of 0.51 on a bias-free MONAI UNet, and fails on
SegResNet. Here the rules are attached to the operations (:mod:`.rules`), wherever they are
called from:

- convolutions, transposed convolutions and linear layers, by the ``composite``: the epsilon
  rule ``R_in = x * W^T (R / (z + eps sign z))`` (bias included in ``z``, so it absorbs its
  share), or z+ / alpha-beta (``alpha - beta = 1``, biases ignored) on all but the output layer
  (the last convolution of each pass through the network), which keeps epsilon. z+ and
  alpha-beta conserve only where each unit with relevance has positive (and, for alpha-beta,
  negative) contributions; a unit without them drops (or, alpha-beta, inflates) its share, as
  in zennit and captum (measured on the bias-free MONAI UNet: 0.53 and 0.52 for a score of
  0.58; epsilon: exact);
- additions and subtractions of tensors (residuals, skip sums, sliding-window accumulation):
  the epsilon rule over their terms; a constant term (a bias) absorbs its share;
- average pooling, interpolation, sums and means, and batch normalisation in eval mode (an
  affine map per channel): the epsilon rule, which for batch normalisation equals merging it
  into the preceding convolution;
- instance, group and layer normalisation: the epsilon rule through the normalisation with its
  standard deviation frozen (held at its value for this input), which makes it linear: the
  "LN-rule" of Ali et al. 2022 (arXiv:2202.07304). It conserves relevance (the affine bias
  absorbs its share) and, unlike passing relevance through unchanged, it divides by the
  centred value ``x - mean`` rather than by the preceding convolution's raw output, which
  can be near zero where the normalised output is not: with identity, epsilon-LRP on the
  demo UNet summed to 6851 for a score of 0.41; with this rule it stays bounded;
- activations (ReLU, PReLU, sigmoid, softmax, ...), scaling by a constant and the model's
  intensity preprocessing: relevance passes unchanged (a voxel-wise map of one input);
- max pooling, concatenation, padding, cropping: their gradient, which routes relevance to the
  winner or the source and conserves it.

Any other differentiable non-linear operation (a product of two activations, an exponential)
goes through by its gradient and is named in the run's notes; TorchScript models are refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .base import Method, Param, Passes, register

if TYPE_CHECKING:
    import torch

COMPOSITES = ("epsilon", "epsilon_plus", "epsilon_alpha_beta")
#: Stabiliser of the z+ and alpha-beta denominators (sums of non-negative contributions).
_TINY = 1e-9


@register
class LRP(Method):
    name = "lrp"
    title = "Layer-wise Relevance Propagation"
    summary = (
        "The score's relevance redistributed layer by layer onto the input voxels in proportion "
        "to their contributions (conserved up to what biases absorb)."
    )
    family = "gradient"
    signed = True
    quantity = "relevance (share of the score)"
    cost = "1 forward + 1 backward (a few more convolutions per layer)"
    reference = "Bach et al. 2015, doi:10.1371/journal.pone.0130140; Montavon et al. 2019"
    params = (
        Param(
            "composite",
            "choice",
            "epsilon_plus",
            "Rule of the convolutions: epsilon everywhere, or z+ (epsilon_plus) / alpha-beta "
            "(epsilon_alpha_beta) everywhere but the output layer, which keeps epsilon.",
            choices=COMPOSITES,
        ),
        Param(
            "epsilon",
            "float",
            1e-6,
            "Stabiliser of the epsilon rule; larger values keep only the strongest evidence.",
            minimum=0.0,
            maximum=1e6,
        ),
        Param(
            "alpha",
            "float",
            2.0,
            "Weight of positive contributions in the alpha-beta rule (beta = alpha - 1).",
            minimum=1.0,
            maximum=100.0,
        ),
    )

    def passes(self, shape, forward=None):
        return Passes(backward=1)

    def refusal(self, network):
        from . import rules

        return rules.scripted_refusal(network, self.name)

    def target_refusal(self, target):
        if getattr(target, "uncertainty", None) is None:
            return None
        from ..targets.uncertainty import EntropyTarget

        return f"{self.name} cannot explain this target: {EntropyTarget.relevance_refused}"

    def preflight(self, forward, inputs, target):
        from ..errors import UserInputError

        refused = getattr(target, "relevance_refused", None)  # a score that is not a logit
        if refused:
            raise UserInputError(f"{self.name} cannot explain this target: {refused}")

    def attribute(self, forward, inputs, target, context):
        import torch

        from . import rules

        rules.refuse_scripted(forward, self.name)
        out = torch.empty_like(inputs)
        unhandled: set[str] = set()

        def compute(start: int, stop: int) -> None:
            relevance, missed = propagate(forward, inputs[start:stop], target, self.config)
            unhandled.update(missed)
            out[start:stop] = relevance

        context.map_batches(inputs.shape[0], compute, self.name)
        if unhandled:
            note = rules.unhandled_note(self.name, unhandled, "relevance may not be conserved")
            if note not in context.notes:
                context.notes.append(note)
        return out


def propagate(forward, inputs, target, config) -> tuple[torch.Tensor, set[str]]:
    """Relevance of each input voxel (inputs.shape), and the operations that had no rule."""
    import torch

    relevance = _Relevance(config)
    windowed = getattr(forward, "window_relevance", None)
    with _network_input(forward) as preprocess:
        network_input = preprocess(inputs).detach()
        if windowed is not None:
            # Sliding-window models: window by window, memory bounded by the window batch.
            unhandled: set[str] = set()

            def call(network, windows):
                with relevance.mode() as mode:
                    prediction = network(windows)
                unhandled.update(mode.unhandled)
                return prediction

            with _marking_output_layers(forward, relevance):
                result = windowed(
                    network_input,
                    target.channel_scores,
                    call,
                    lambda z: relevance.stabilise(z, relevance.epsilon),
                )
            if result is not None:
                return result.detach(), unhandled
        with torch.enable_grad(), _marking_output_layers(forward, relevance):
            x = network_input.requires_grad_(True)
            with relevance.mode() as mode:
                logits = forward(x)
            start = target.channel_scores(logits.detach())
            (result,) = torch.autograd.grad(logits, x, start)
    return result.detach(), mode.unhandled


@contextlib.contextmanager
def _network_input(forward: torch.nn.Module) -> Iterator:
    """Within the block, ``forward`` skips its intensity preprocessing (yielded): a voxel-wise
    map, through which each voxel's relevance passes unchanged. Restored on exit."""
    preprocess = getattr(forward, "preprocess", None)
    if preprocess is None or "preprocess" in vars(forward):
        yield lambda x: x
        return
    setattr(forward, "preprocess", lambda x: x)  # noqa: B010  (a method, shadowed on the instance)
    try:
        yield preprocess
    finally:
        del forward.preprocess


@contextlib.contextmanager
def _marking_output_layers(forward: torch.nn.Module, relevance: _Relevance) -> Iterator[None]:
    """Marks the last linear layer of each pass through the network (several passes for a
    sliding window) as an output layer; the hooks are removed on exit."""
    network = getattr(forward, "network", forward)
    first = []

    def before(_module, _args):
        first.append(len(relevance.layers))

    def after(_module, _args, _output):
        if relevance.layers and len(relevance.layers) > first.pop():
            relevance.layers[-1]["output"] = True

    handles = [network.register_forward_pre_hook(before), network.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Relevance:
    """The rules of one LRP pass (see the module docstring)."""

    def __init__(self, config: dict) -> None:
        self.composite = config["composite"]
        self.epsilon = config["epsilon"]
        self.alpha = config["alpha"]
        self.layers: list[dict] = []

    def mode(self):
        from . import rules

        handlers = {}
        pairs = [
            (rules.ACTIVATIONS + ("softmax",), self._pass),
            (("instance_norm", "group_norm", "layer_norm"), self._normalisation),
            (("conv1d", "conv2d", "conv3d", "linear"), self._layer),
            (("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"), self._layer),
            (("avg_pool1d", "avg_pool2d", "avg_pool3d", "interpolate"), self._linear),
            (("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"), self._linear),
            (("sum", "mean"), self._linear),
            (("batch_norm",), self._batch_norm),
            (("add", "sub", "__add__", "__radd__", "__iadd__"), self._sum),
            (("__sub__", "__rsub__", "__isub__"), self._sum),
            (("mul", "div", "__mul__", "__rmul__", "__imul__"), self._scale),
            (("__truediv__", "__itruediv__"), self._scale),
        ]
        for names, handler in pairs:
            for func in rules.functions(*names):
                handlers[func] = handler
        return rules.RuleMode(handlers)

    def stabilise(self, z: torch.Tensor, epsilon: float) -> torch.Tensor:
        import torch

        return z + epsilon * torch.where(z >= 0, 1.0, -1.0)

    def _epsilon(self, fn, x, relevance, z):
        """The epsilon rule through the linear map ``fn`` (output ``z``)."""
        from .rules import vjp

        return x * vjp(fn, x, relevance / self.stabilise(z, self.epsilon))

    def _pass(self, func, args, kwargs):
        from .rules import first_tensor, modified, out_of_place

        x, rest, kw = first_tensor(args, kwargs)
        if not x.requires_grad:
            return NotImplemented
        return modified(out_of_place(func, rest, kw), lambda r, _inputs, _y: (r,), x)

    def _linear(self, func, args, kwargs):
        from .rules import first_tensor, modified

        x, rest, kw = first_tensor(args, kwargs)
        if not x.requires_grad:
            return NotImplemented

        def fn(t):
            return func(t, *rest, **kw)

        return modified(fn, lambda r, inputs, z: (self._epsilon(fn, inputs[0], r, z),), x)

    def _normalisation(self, func, args, kwargs):
        """The epsilon rule through the normalisation with its std frozen (a linear map)."""
        from .rules import modified, normalisation

        norm = normalisation(func, args, kwargs)
        if norm is None:  # running statistics: affine
            return self._linear(func, args, kwargs)
        if not norm.input.requires_grad:
            return NotImplemented
        std = norm.std(norm.input).detach()

        def frozen(t):
            return norm.affine(norm.centred(t) / std)

        return modified(
            norm.call, lambda r, inputs, z: (self._epsilon(frozen, inputs[0], r, z),), norm.input
        )

    def _batch_norm(self, func, args, kwargs):
        from .rules import bind

        if bind(func, args, kwargs)["training"]:  # statistics of the batch: a normalisation
            return self._pass(func, args, kwargs)
        return self._linear(func, args, kwargs)

    def _layer(self, func, args, kwargs):
        """Convolution, transposed convolution or linear layer: the composite's rule."""
        import torch

        from .rules import modified, vjp

        x, rest, kwargs = args[0], list(args[1:]), dict(kwargs)
        if not x.requires_grad:
            return NotImplemented
        weight = rest.pop(0) if rest else kwargs.pop("weight")
        bias = rest.pop(0) if rest else kwargs.pop("bias", None)

        def apply(t, w, b=None):
            return func(t, w, b, *rest, **kwargs)

        layer = {"output": False}
        self.layers.append(layer)

        def backward(relevance, inputs, z):
            (x,) = inputs
            if self.composite == "epsilon" or layer["output"]:
                return (self._epsilon(lambda t: apply(t, weight, bias), x, relevance, z),)
            alpha = 1.0 if self.composite == "epsilon_plus" else self.alpha
            positive, negative = x.clamp(min=0), x.clamp(max=0)
            w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)

            def share(w_a, w_b):  # relevance of the contributions x+ w_a + x- w_b
                z = apply(positive, w_a) + apply(negative, w_b)
                s = relevance / (z + _TINY * torch.where(z >= 0, 1.0, -1.0))
                grad_a = vjp(lambda t: apply(t, w_a), positive, s)
                grad_b = vjp(lambda t: apply(t, w_b), negative, s)
                return positive * grad_a + negative * grad_b

            result = alpha * share(w_pos, w_neg)
            if alpha != 1.0:
                result = result - (alpha - 1.0) * share(w_neg, w_pos)
            return (result,)

        return modified(lambda t: apply(t, weight, bias), backward, x)

    def _sum(self, func, args, kwargs):
        """a + b (or a - b): each term's share of the sum, by the epsilon rule."""
        import torch

        from .rules import modified, name_of

        name = name_of(func)
        a = args[0]
        b = args[1] if len(args) > 1 else kwargs.get("other")
        sign = -1.0 if "sub" in name else 1.0
        coefficients = (-1.0, 1.0) if name == "__rsub__" else (1.0, sign * kwargs.get("alpha", 1))
        terms = [
            (t, c)
            for t, c in zip((a, b), coefficients)
            if isinstance(t, torch.Tensor) and t.requires_grad
        ]
        if not terms or set(kwargs) - {"other", "alpha"}:
            return NotImplemented

        def total(*_inputs):
            return coefficients[0] * a + coefficients[1] * b

        # copies: the sliding-window inferer adds into slices of its output buffer in place
        contributions = [(c * t).detach() for t, c in terms]

        def backward(relevance, _inputs, z):
            s = relevance / self.stabilise(z, self.epsilon)
            return tuple(
                (share * s).sum_to_size(t.shape) for share, (t, _) in zip(contributions, terms)
            )

        return modified(total, backward, *(t for t, _ in terms), keep_inputs=False)

    def _scale(self, func, args, kwargs):
        """x * c or x / c with a constant c: the relevance passes to x unchanged."""
        import torch

        from .rules import modified

        a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
        grads = [t for t in (a, b) if isinstance(t, torch.Tensor) and t.requires_grad]
        name = getattr(func, "__name__", "")
        if len(grads) != 1 or ("div" in name and grads[0] is not a):
            return NotImplemented
        (x,) = grads
        other = b if x is a else a
        operation = torch.div if "div" in name else torch.mul
        extra = {k: v for k, v in kwargs.items() if k != "other"}
        return modified(
            lambda t: operation(t, other, **extra),
            lambda r, _inputs, _y: (r.sum_to_size(x.shape),),
            x,
            keep_inputs=False,
        )
