"""DeepLIFT's rules, one per kind of non-linear operation, recorded on the baseline's pass and
applied on the input's (see :mod:`.deeplift`):

- element-wise activations (ReLU, PReLU, ELU, sigmoid, tanh, ...): the rescale rule,
  ``(y - y0) / (x - x0)``, with the gradient where ``|x - x0| < 1e-10`` (as captum);
- max pooling: captum's rule (the output change split between the input's and the baseline's
  winners);
- instance, group and layer normalisation ``y = (x - mean) / std``: an exact product rule. The
  centring ``c = x - mean`` is linear; the change of ``c * r`` (``r = 1 / std``) splits exactly
  as ``dc * r + c0 * dr``, and ``dr`` is linear in ``dc`` through
  ``std^2 - std0^2 = 2/n sum((c + c0)/2 * dc)``; it equals the gradient when ``x0 -> x``. The
  scale is anchored at the input's ``r``, not averaged with the baseline's: a constant baseline
  (zeros) has ``std0 = sqrt(eps)``, and its ``1 / std0`` ~ 300 per layer would blow the
  multipliers up to ~1e9 with cancelling signs (measured on SegResNet);
- softmax: the rescale rule along the gradient at the midpoint (for two classes, the rescale
  rule on the logit difference).
"""

from __future__ import annotations

from typing import Any


class RescaleRules:
    """DeepLIFT's rules: recorded on the baseline pass, applied on the input pass."""

    def __init__(self) -> None:
        self.records: list[tuple[Any, Any]] = []
        self.replaying = False
        self.position = 0

    def replay(self) -> None:
        self.replaying, self.position = True, 0

    def check_all_replayed(self) -> None:
        if self.position != len(self.records):
            self._diverged()

    def _diverged(self) -> None:
        from ..errors import UserInputError

        raise UserInputError(
            "deeplift: the network ran different operations on the baseline than on the input "
            "(data-dependent control flow); DeepLIFT pairs each operation of the two passes, "
            "so it cannot explain this model: use integrated_gradients instead"
        )

    def mode(self):
        from . import rules

        handlers = {}
        for func in rules.functions(*rules.ACTIVATIONS):
            handlers[func] = self._paired(_rescale)
        for func in rules.functions("max_pool1d", "max_pool2d", "max_pool3d", inplace=False):
            handlers[func] = self._paired(_max_pool)
        for func in rules.functions("instance_norm", "group_norm", "layer_norm", inplace=False):
            handlers[func] = self._paired(_normalisation)
        for func in rules.functions("softmax", inplace=False):
            handlers[func] = self._paired(_softmax)
        return rules.RuleMode(handlers)

    def _paired(self, rule):
        from .rules import first_tensor

        def handler(func, args, kwargs):
            x = first_tensor(args, kwargs)[0]
            if not self.replaying:
                out = rule(func, args, kwargs, None)
                # copies: the network may later change these tensors in place
                self.records.append((x.detach().clone(), out.detach().clone()))
                return out
            if self.position >= len(self.records):
                self._diverged()
            reference = self.records[self.position]
            self.position += 1
            if reference[0].shape != x.shape:
                self._diverged()
            return rule(func, args, kwargs, reference)

        return handler


def _rescale(func, args, kwargs, reference):
    """Element-wise activation: multiplier (y - y0) / (x - x0), the derivative where x = x0."""
    import torch

    from .rules import RESCALE_EPS, first_tensor, modified, out_of_place, vjp

    x, rest, kw = first_tensor(args, kwargs)
    fn = out_of_place(func, rest, kw)
    if reference is None:
        return fn(x)
    x0, y0 = reference

    def backward(grad, inputs, y):
        (x,) = inputs
        dx = x - x0
        near = dx.abs() < RESCALE_EPS
        multiplier = (y - y0) / torch.where(near, torch.ones_like(dx), dx)
        if bool(near.any()):
            multiplier = torch.where(near, vjp(fn, x, torch.ones_like(x)), multiplier)
        return (grad * multiplier,)

    return modified(fn, backward, x)


def _max_pool(func, args, kwargs, reference):
    """captum's max-pool rule: the change up to max(y, y0) goes to the input's winners, the rest
    to the baseline's winners, each divided by its input change."""
    import torch

    from .rules import RESCALE_EPS, first_tensor, modified, vjp

    x, rest, kw = first_tensor(args, kwargs)

    def pool(t):
        return func(t, *rest, **kw)

    if reference is None:
        return pool(x)
    x0, y0 = reference

    def backward(grad, inputs, y):
        (x,) = inputs
        top = torch.maximum(y, y0)
        change = vjp(pool, x, grad * (top - y0)) + vjp(pool, x0, grad * (y - top))
        dx = x - x0
        near = dx.abs() < RESCALE_EPS
        ratio = change / torch.where(near, torch.ones_like(dx), dx)
        return (torch.where(near, vjp(pool, x, grad), ratio),)

    return modified(pool, backward, x)


def _normalisation(func, args, kwargs, reference):
    """Instance, group or layer normalisation: the exact product rule (this module's docstring)."""
    from .rules import modified, normalisation

    norm = normalisation(func, args, kwargs)
    if norm is None or reference is None:  # running statistics: affine, its gradient is exact
        return func(*args, **kwargs)
    x, x0 = norm.input, reference[0]

    def backward(grad, inputs, _y):
        (x,) = inputs
        g = (grad * norm.weight if norm.weight is not None else grad).reshape(norm.shape)
        c, c0 = norm.centred(x), norm.centred(x0)
        std, std0 = norm.std(x), norm.std(x0)
        # d(1/std) = sum(d_r * dc) exactly, as std^2 - std0^2 = 2/n sum((c + c0)/2 * dc)
        d_r = -(c + c0) / (c.shape[-1] * std * std0 * (std + std0))
        g_c = g / std + d_r * (c0 * g).sum(dim=-1, keepdim=True)
        return ((g_c - g_c.mean(dim=-1, keepdim=True)).reshape(x.shape),)

    return modified(norm.call, backward, x)


def _softmax(func, args, kwargs, reference):
    """Softmax: rescale along the gradient at the midpoint, per output."""
    import torch

    from .rules import RESCALE_EPS, first_tensor, modified

    x, rest, kw = first_tensor(args, kwargs)
    dim = kw.get("dim", rest[0] if rest else None)

    def fn(t):
        return func(t, *rest, **kw)

    if reference is None or dim is None:
        return fn(x) if reference is None else NotImplemented
    x0, y0 = reference

    def backward(grad, inputs, y):
        (x,) = inputs
        s = torch.softmax((x + x0) / 2, dim=dim)
        dx = x - x0

        def jacobian_times(v):  # the softmax Jacobian is symmetric: J v = s v - s (s . v)
            return s * v - s * (s * v).sum(dim=dim, keepdim=True)

        linear = jacobian_times(dx)
        near = linear.abs() < RESCALE_EPS
        v = torch.where(near, grad, grad * (y - y0) / torch.where(near, 1.0, linear))
        return (jacobian_times(v),)

    return modified(fn, backward, x)
