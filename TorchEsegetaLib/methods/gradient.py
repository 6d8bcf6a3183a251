"""Gradient methods: saliency, input x gradient, integrated gradients, guided backpropagation,
deconvolution, and SmoothGrad (noise tunnel) over any of them.

They are written on one primitive, :func:`~.base.input_gradients`, batched by the engine, so they
get progress, cancellation and out-of-memory recovery for free; tests prove each equals captum's
implementation on the same model, input and target.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .base import Method, Param, Passes, ScoreModel, input_gradients, register
from .baselines import BASELINE, BLUR_SIGMA, intensity_range, make_baseline

if TYPE_CHECKING:
    import torch

    from ..engine.context import Context

RULES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def n_steps_param(default: int) -> Param:
    """The ``n_steps`` parameter of the path methods."""
    return Param(
        "n_steps",
        "int",
        default,
        "Number of points on the path from the baseline to the input.",
        minimum=1,
        maximum=4096,
    )


def quadrature_param(default: str) -> Param:
    """The ``method`` parameter of the path methods: captum's quadrature rules."""
    return Param(
        "method",
        "choice",
        default,
        "Quadrature rule for the path integral (as captum).",
        choices=RULES,
    )


#: How a ReLU passes the gradient back: guided backpropagation keeps the positive part of its
#: ordinary gradient (zero where the forward input was negative); deconvolution keeps the positive
#: part of the incoming gradient, whatever the forward input was.
RELU_RULES = ("guided", "deconvolution")


@contextlib.contextmanager
def relu_rule(module: torch.nn.Module, rule: str) -> Iterator[int]:
    """Within the block, every ``nn.ReLU`` of ``module`` passes back gradients by ``rule``
    (one of :data:`RELU_RULES`); yields the number of ReLUs changed.

    In-place ReLUs are switched to out-of-place for the duration (backward hooks cannot see an
    in-place output); the hooks and the flags are restored on exit, whatever happens.
    """
    import torch

    if rule not in RELU_RULES:
        raise ValueError(f"unknown ReLU rule {rule!r}")
    keep = 0 if rule == "guided" else 1  # guided: ReLU of grad_input; deconvolution: of grad_output
    relus = [m for m in module.modules() if isinstance(m, torch.nn.ReLU)]
    inplace = [relu.inplace for relu in relus]
    handles = []

    def rule_of(_module: Any, grad_in: Any, grad_out: Any) -> tuple[torch.Tensor]:
        return (torch.relu((grad_in, grad_out)[keep][0]),)

    try:
        for relu in relus:
            relu.inplace = False
            handles.append(relu.register_full_backward_hook(rule_of))
        yield len(relus)
    finally:
        for handle in handles:
            handle.remove()
        for relu, flag in zip(relus, inplace):
            relu.inplace = flag


class _PerSampleGradient(Method):
    """A method computed from the input gradient of each example on its own."""

    family = "gradient"
    quantity = "d score / d intensity"

    def passes(self, shape, forward=None):
        return Passes(backward=1)

    def combine(self, inputs: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gradients(self, score: ScoreModel, inputs: torch.Tensor, context: Context) -> torch.Tensor:
        return input_gradients(score, inputs)[1]

    def attribute(self, forward, inputs, target, context):
        import torch

        score = ScoreModel(forward, target)
        out = torch.empty_like(inputs)

        def compute(start: int, stop: int) -> None:
            batch = inputs[start:stop]
            out[start:stop] = self.combine(batch, self.gradients(score, batch, context))

        context.map_batches(inputs.shape[0], compute, self.name)
        return out


@register
class Saliency(_PerSampleGradient):
    name = "saliency"
    title = "Saliency"
    summary = (
        "Gradient of the target score with respect to each input voxel (absolute value by default)."
    )
    signed = False
    quantity = "|d score / d intensity|"
    cost = "1 forward + 1 backward"
    reference = "Simonyan et al. 2014, arXiv:1312.6034"
    params = (
        Param(
            "abs", "bool", True, "Take the absolute value of the gradient (false keeps its sign)."
        ),
    )

    def __init__(self, **values):
        super().__init__(**values)
        self.signed = not self.config["abs"]
        if not self.config["abs"]:
            self.quantity = _PerSampleGradient.quantity

    def combine(self, inputs, grads):
        return grads.abs() if self.config["abs"] else grads


@register
class InputXGradient(_PerSampleGradient):
    name = "input_x_gradient"
    title = "Input x Gradient"
    summary = "Input intensity times the gradient of the target score (first-order contribution)."
    signed = True
    quantity = "intensity x d score / d intensity"
    cost = "1 forward + 1 backward"
    reference = "Shrikumar et al. 2016, arXiv:1605.01713"

    def combine(self, inputs, grads):
        return inputs * grads


class _ReluRuleGradient(_PerSampleGradient):
    """The input gradient with every ``nn.ReLU`` passing gradients back by ``relu_rule``."""

    relu_rule: str

    def refusal(self, network):
        from .rules import scripted_refusal

        return scripted_refusal(network, self.name)  # its ReLUs cannot take backward hooks

    def gradients(self, score, inputs, context):
        with relu_rule(score.forward, self.relu_rule) as count:
            note = f"the model has no nn.ReLU: {self.title} equals the plain gradient"
            if count == 0 and note not in context.notes:
                context.notes.append(note)
            return super().gradients(score, inputs, context)

    def combine(self, inputs, grads):
        return grads


@register
class GuidedBackprop(_ReluRuleGradient):
    name = "guided_backprop"
    title = "Guided Backpropagation"
    summary = (
        "Gradient where every ReLU passes back only positive gradients (needs ReLU activations)."
    )
    signed = True
    cost = "1 forward + 1 backward"
    reference = "Springenberg et al. 2015, arXiv:1412.6806"
    relu_rule = "guided"
    quantity = "guided d score / d intensity"


@register
class Deconvolution(_ReluRuleGradient):
    name = "deconvolution"
    title = "Deconvolution"
    summary = (
        "Backward pass where every ReLU passes back the positive part of the incoming gradient, "
        "whatever its forward input (needs ReLU activations)."
    )
    signed = True
    cost = "1 forward + 1 backward"
    reference = "Zeiler & Fergus 2014, arXiv:1311.2901"
    relu_rule = "deconvolution"
    quantity = "deconvolved d score / d intensity"


@register
class IntegratedGradients(Method):
    name = "integrated_gradients"
    title = "Integrated Gradients"
    summary = "Path integral of gradients from a baseline to the input; attributions sum to the score difference."
    family = "gradient"
    signed = True
    quantity = "contribution to the score"
    cost = "n_steps forward + n_steps backward"
    reference = "Sundararajan et al. 2017, arXiv:1703.01365"
    needs_baseline = True
    params = (
        n_steps_param(32),
        quadrature_param("gausslegendre"),
        BASELINE,
        BLUR_SIGMA,
    )

    def passes(self, shape, forward=None):
        return Passes(backward=self.config["n_steps"])

    def cheaper(self):
        return ["fewer path points (integrated_gradients.n_steps=8 or 16)"]

    def attribute(self, forward, inputs, target, context):
        import torch
        from captum.attr._utils.approximation_methods import approximation_parameters

        step_sizes_fn, alphas_fn = approximation_parameters(self.config["method"])
        steps = self.config["n_steps"]
        alphas = torch.tensor(alphas_fn(steps), dtype=inputs.dtype, device=inputs.device)
        step_sizes = torch.tensor(step_sizes_fn(steps), dtype=inputs.dtype, device=inputs.device)
        baselines = make_baseline(self.config["baseline"], inputs, self.config["blur_sigma"])
        score = ScoreModel(forward, target)
        out = torch.empty_like(inputs)
        examples = inputs.shape[0]
        shape = (-1,) + (1,) * (inputs.dim() - 1)
        for index in range(examples):
            x, base = inputs[index : index + 1], baselines[index : index + 1]
            total = torch.zeros_like(x)

            def compute(start: int, stop: int, x=x, base=base, total=total) -> None:
                a = alphas[start:stop].reshape(shape)
                path = base + a * (x - base)
                _, grads = input_gradients(score, path)
                total.add_((grads * step_sizes[start:stop].reshape(shape)).sum(dim=0, keepdim=True))

            context.map_batches(steps, compute, f"{self.name} example {index + 1}/{examples} step")
            out[index : index + 1] = total * (x - base)
        return out


_NOISE_STATISTIC = {"smoothgrad": "mean", "smoothgrad_sq": "mean square", "vargrad": "variance"}


@register
class SmoothGrad(Method):
    name = "smoothgrad"
    title = "SmoothGrad (noise tunnel)"
    summary = "Averages another gradient method over noisy copies of the input (SmoothGrad, SmoothGrad-squared or VarGrad)."
    family = "gradient"
    signed = False
    quantity = "d score / d intensity, mean over noise"
    cost = "samples x the base method"
    reference = "Smilkov et al. 2017, arXiv:1706.03825; Adebayo et al. 2018 (VarGrad)"
    params = (
        Param(
            "base",
            "choice",
            "saliency",
            "The gradient method to smooth.",
            choices=(
                "saliency",
                "input_x_gradient",
                "integrated_gradients",
                "guided_backprop",
                "deconvolution",
                "deeplift",
                "lrp",
            ),
        ),
        Param("samples", "int", 16, "Number of noisy copies.", minimum=1, maximum=10000),
        Param(
            "noise_level",
            "float",
            0.1,
            "Noise standard deviation as a fraction of each channel's intensity range (max - min).",
            minimum=0.0,
            maximum=10.0,
        ),
        Param(
            "nt_type",
            "choice",
            "smoothgrad",
            "smoothgrad (mean), smoothgrad_sq (mean of squares) or vargrad (variance).",
            choices=("smoothgrad", "smoothgrad_sq", "vargrad"),
        ),
    )
    base_prefix = "base_"

    def __init__(self, **values):
        from . import create_method

        # Parameters of the base method are given with a "base_" prefix (base_n_steps=16).
        own = {p.name for p in self.params}
        base_params = {
            key[len(self.base_prefix) :]: value
            for key, value in values.items()
            if key.startswith(self.base_prefix) and key not in own
        }
        super().__init__(
            **{k: v for k, v in values.items() if k in own or not k.startswith(self.base_prefix)}
        )
        if self.config["base"] == "saliency":
            base_params.setdefault("abs", False)
        self.base = create_method(self.config["base"], base_params)
        self.config.update({self.base_prefix + k: v for k, v in self.base.config.items()})
        self.signed = self.config["nt_type"] == "smoothgrad" and self.base.signed
        self.quantity = (
            f"{self.base.quantity}, {_NOISE_STATISTIC[self.config['nt_type']]} over noise"
        )

    def refusal(self, network):
        return self.base.refusal(network)

    def preflight(self, forward, inputs, target):
        self.base.preflight(forward, inputs, target)

    def passes(self, shape, forward=None):
        return self.base.passes(shape, forward) * self.config["samples"]

    def cheaper(self):
        return ["fewer noisy copies (smoothgrad.samples=4 or 8)"] + self.base.cheaper()

    def noise_std(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.config["noise_level"] * intensity_range(inputs)

    def attribute(self, forward, inputs, target, context):
        import torch

        samples = self.config["samples"]
        squares = self.config["nt_type"] != "smoothgrad"
        generator = context.generator()
        out = torch.empty_like(inputs)
        for example in range(inputs.shape[0]):
            x = inputs[example : example + 1]
            std = self.noise_std(x).expand_as(x).cpu()
            total, total_sq = torch.zeros_like(x), torch.zeros_like(x)

            def compute(
                start: int, stop: int, x=x, std=std, total=total, total_sq=total_sq
            ) -> None:
                # One draw per sample, in order (chunks arrive in order and are never retried:
                # the base method recovers from out-of-memory inside its fixed-size chunk), so
                # the result does not depend on the chunk size.
                noise = torch.cat(
                    [torch.normal(0.0, std, generator=generator) for _ in range(stop - start)]
                )
                attribution = self.base.attribute(
                    forward, x + noise.to(x.device), target, context.fixed(stop - start)
                )
                total.add_(attribution.sum(dim=0, keepdim=True))
                if squares:
                    total_sq.add_((attribution * attribution).sum(dim=0, keepdim=True))

            context.map_batches(samples, compute, f"{self.name} sample")
            out[example : example + 1] = self.smooth(total / samples, total_sq / samples)
        return out

    def smooth(self, mean: torch.Tensor, mean_sq: torch.Tensor) -> torch.Tensor:
        if self.config["nt_type"] == "smoothgrad":
            return mean
        if self.config["nt_type"] == "smoothgrad_sq":
            return mean_sq
        return mean_sq - mean * mean
