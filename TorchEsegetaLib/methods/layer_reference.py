"""Layer methods relative to a baseline input: conductance, internal influence, GradientSHAP and
DeepLift on a layer.

They attribute the change of the target score between a baseline input and the actual one to
the units of a layer, on the mechanism of :class:`~.layer.LayerMethod`. The path methods batch
their steps through the engine, one example at a time, so their result does not depend on the
batch size; GradientSHAP draws its randomness from the run's seed.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ..errors import UserInputError
from .base import Param, Passes, register
from .baselines import BASELINE, BASELINES, BLUR_SIGMA, intensity_range, make_baseline
from .gradient import n_steps_param, quadrature_param
from .layer import LAYER, REDUCE, LayerMethod

if TYPE_CHECKING:
    import torch


class _PathMethod(LayerMethod):
    """A sum over points on the straight path from the baseline to each example."""

    signed = True
    needs_baseline = True
    #: conductance needs the activation at one point beyond each gradient: n_steps + 1 points
    extra_point = 0

    def path_sum(
        self, probe, x: torch.Tensor, base: torch.Tensor, alphas, step_sizes, start: int, stop: int
    ) -> torch.Tensor:
        """The contribution of path steps ``start:stop`` to the layer map (windows, K, *s)."""
        raise NotImplementedError

    def compute(self, probe, inputs, context, emit):
        import torch
        from captum.attr._utils.approximation_methods import approximation_parameters

        steps = self.config["n_steps"]
        step_sizes_fn, alphas_fn = approximation_parameters(self.config["method"])
        alphas = torch.tensor(
            alphas_fn(steps + self.extra_point), dtype=inputs.dtype, device=inputs.device
        )
        step_sizes = torch.tensor(step_sizes_fn(steps), dtype=inputs.dtype, device=inputs.device)
        baselines = make_baseline(self.config["baseline"], inputs, self.config["blur_sigma"])
        examples = inputs.shape[0]
        for index in range(examples):
            x, base = inputs[index : index + 1], baselines[index : index + 1]
            total: list[torch.Tensor] = []

            def run(start: int, stop: int, x=x, base=base, total=total) -> None:
                _accumulate(total, self.path_sum(probe, x, base, alphas, step_sizes, start, stop))

            context.map_batches(steps, run, f"{self.name} example {index + 1}/{examples} step")
            emit(index, index + 1, total[0])


def _accumulate(total: list[torch.Tensor], part: torch.Tensor) -> None:
    """Add ``part`` to the running sum held in ``total`` (empty at first)."""
    if total:
        total[0] += part
    else:
        total.append(part)


def _path(x: torch.Tensor, base: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    return base + alphas.reshape((-1,) + (1,) * (x.dim() - 1)) * (x - base)


@register
class LayerConductance(_PathMethod):
    name = "layer_conductance"
    title = "Layer Conductance"
    summary = "Flow of the score change from baseline to input through each unit of a layer; over the layer it sums to that change."
    cost = "n_steps + 1 forward + n_steps + 1 backward"
    reference = "Dhamdhere et al. 2018, arXiv:1805.12233"
    extra_point = 1
    params = (
        LAYER,
        REDUCE,
        n_steps_param(32),
        # Only a rule whose points include both ends of the path telescopes to the full score change.
        quadrature_param("riemann_trapezoid"),
        BASELINE,
        BLUR_SIGMA,
    )

    def layer_passes(self, shape):
        return Passes(backward=self.config["n_steps"] + 1)

    def cheaper(self):
        return ["fewer path points (layer_conductance.n_steps=8 or 16)"]

    def path_sum(self, probe, x, base, alphas, step_sizes, start, stop):
        total, previous = None, None
        for [(activation, grads)] in probe.points(
            [_path(x, base, alphas[start : stop + 1])], [True]
        ):
            if previous is not None:
                term = (activation - previous[0]) * previous[1]
                total = term if total is None else total + term
            previous = (activation, grads)
        return total


@register
class InternalInfluence(_PathMethod):
    name = "internal_influence"
    title = "Internal Influence"
    summary = "Gradient of the score with respect to a layer, integrated along the path from the baseline to the input."
    quantity = "d score / d layer activation, path-integrated"
    cost = "n_steps forward + n_steps backward"
    reference = "Leino et al. 2018, arXiv:1802.03788"
    params = (
        LAYER,
        REDUCE,
        n_steps_param(32),
        quadrature_param("gausslegendre"),
        BASELINE,
        BLUR_SIGMA,
    )

    def layer_passes(self, shape):
        return Passes(backward=self.config["n_steps"])

    def cheaper(self):
        return ["fewer path points (internal_influence.n_steps=8 or 16)"]

    def path_sum(self, probe, x, base, alphas, step_sizes, start, stop):
        total = None
        points = probe.points([_path(x, base, alphas[start:stop])], [True])
        for [(_, grads)], weight in zip(points, step_sizes[start:stop]):
            total = grads * weight if total is None else total + grads * weight
        return total


@register
class LayerGradientShap(LayerMethod):
    name = "layer_gradient_shap"
    title = "Layer GradientSHAP"
    summary = "Expected layer gradient x (activation - baseline activation) at random points between random baselines and noisy inputs."
    signed = True
    needs_baseline = True
    cost = "n_samples x (2 forward + 1 backward)"
    reference = "Lundberg & Lee 2017, arXiv:1705.07874 (GradientSHAP, as captum)"
    params = (
        LAYER,
        REDUCE,
        Param("n_samples", "int", 8, "Number of random samples.", minimum=1, maximum=10000),
        Param(
            "stdevs",
            "float",
            0.0,
            "Noise standard deviation added to each sample, as a fraction of each channel's "
            "intensity range (max - min).",
            minimum=0.0,
            maximum=10.0,
        ),
        Param(
            "baselines",
            "str",
            "zero,blur",
            f"Comma-separated reference inputs the baselines are drawn from ({', '.join(BASELINES)}).",
        ),
        BLUR_SIGMA,
    )

    def __init__(self, **values):
        super().__init__(**values)
        kinds = tuple(k.strip() for k in self.config["baselines"].split(",") if k.strip())
        unknown = [k for k in kinds if k not in BASELINES]
        if unknown or not kinds:
            raise UserInputError(
                f"parameter 'baselines' of {self.name} must list some of {', '.join(BASELINES)} "
                f"separated by commas; got {self.config['baselines']!r}"
            )
        self.kinds = kinds

    def draws(
        self, count: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample: which baseline, the point on the path (uniform in [0, 1)) and a noise seed.

        Drawn up front, so the result depends on the seed only, not on batching or retries.
        """
        import torch

        choice = torch.randint(len(self.kinds), (count,), generator=generator)
        alphas = torch.rand(count, generator=generator, dtype=torch.float64)
        seeds = torch.randint(2**62, (count,), generator=generator)
        return choice, alphas, seeds

    def layer_passes(self, shape):
        return Passes(forward=2, backward=1) * self.config["n_samples"]

    def compute(self, probe, inputs, context, emit):
        import torch

        count = self.config["n_samples"]
        generator = context.generator()
        examples = inputs.shape[0]
        for index in range(examples):
            x = inputs[index : index + 1]
            references = torch.cat(
                [make_baseline(kind, x, self.config["blur_sigma"]) for kind in self.kinds]
            )
            std = self.config["stdevs"] * intensity_range(x)
            draws = self.draws(count, generator)
            sample = functools.partial(self.sample_sum, probe, x, references, std, *draws)
            total: list[torch.Tensor] = []

            def run(start: int, stop: int, sample=sample, total=total) -> None:
                _accumulate(total, sample(start, stop))

            context.map_batches(count, run, f"{self.name} example {index + 1}/{examples} sample")
            emit(index, index + 1, total[0] / count)

    def sample_sum(self, probe, x, references, std, choice, alphas, seeds, start, stop):
        """The sum over samples ``start:stop`` of (activation - baseline activation) x gradient."""
        import torch

        noisy = x.expand(stop - start, *x.shape[1:])
        if self.config["stdevs"] > 0:
            noise = [
                torch.randn(x.shape, generator=torch.Generator().manual_seed(int(seed)))
                for seed in seeds[start:stop]
            ]
            noisy = noisy + torch.cat(noise).to(x) * std
        base = references[choice[start:stop].to(x.device)]
        total = None
        inputs = [_path(noisy, base, alphas[start:stop].to(x)), noisy, base]
        for (_, grads), (end, _), (start_point, _) in probe.points(inputs, [True, False, False]):
            term = (end - start_point) * grads
            total = term if total is None else total + term
        return total


@register
class LayerDeepLift(LayerMethod):
    """DeepLIFT (rescale rule) to a layer, on the rules of :mod:`.rules`.

    The baseline's pass records each non-linear operation, the input's pass replays it with
    DeepLIFT's rule (:func:`~.deeplift.paired_pass`); the multipliers of the score with
    respect to the layer's output, times the layer's change from the baseline, sum over the
    layer to the score's change. captum's LayerDeepLift hooks activation modules: it fails on an
    activation module called twice and treats instance and group normalisation as linear, so
    its layer attributions miss the score change on MONAI UNets; these rules do not. Sliding
    windows: each window's layer map, in one graph of the whole pass, blended like the others.
    """

    name = "layer_deeplift"
    title = "Layer DeepLIFT"
    summary = "DeepLIFT (rescale rule) multipliers from the score to a layer times the layer's change from the baseline."
    signed = True
    needs_baseline = True
    cost = "1 forward of the baseline + 1 forward and 1 backward of the input"
    reference = "Shrikumar et al. 2017, arXiv:1704.02685"
    params = (LAYER, REDUCE, BASELINE, BLUR_SIGMA)

    def layer_passes(self, shape):
        return Passes(forward=1, backward=1)  # the baseline, then the input

    def refusal(self, network):
        from . import rules

        return rules.scripted_refusal(network, self.name) or super().refusal(network)

    def layer_map(self, probe, inputs, context):
        import torch

        from .deeplift import note_incomplete, paired_pass

        baselines = make_baseline(self.config["baseline"], inputs, self.config["blur_sigma"])
        unhandled: set[str] = set()
        run = paired_pass(unhandled)
        with torch.enable_grad(), probe.capture() as outputs:
            scores, reference_scores = run(probe.score, inputs.detach(), baselines.detach())
        # the baseline's pass came first: its feature maps are the first half
        half = len(outputs) // 2
        inputs_maps = probe.feature_maps(outputs[half:], inputs, calls=probe.calls // 2)
        baseline_maps = torch.cat([o.detach() for o in outputs[:half]])
        grads = torch.autograd.grad(scores.sum(), inputs_maps, allow_unused=True)
        grads = [torch.zeros_like(o) if g is None else g for o, g in zip(inputs_maps, grads)]
        activation = torch.cat([o.detach() for o in inputs_maps])
        attributions = (activation - baseline_maps) * torch.cat(grads)
        totals = probe.per_point(attributions).flatten(1)
        note_incomplete(
            self.name,
            totals,
            scores.detach() - reference_scores,
            unhandled,
            context,
        )
        return attributions
