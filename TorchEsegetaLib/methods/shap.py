"""Sampled reference methods: DeepLIFT-SHAP and GradientSHAP average an attribution over
baselines drawn from a distribution (:data:`.baselines.DISTRIBUTION`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method, Param, Passes, ScoreModel, input_gradients, register
from .baselines import DISTRIBUTION, draw_baselines, draw_seeds, intensity_range
from .deeplift import deeplift, note_incomplete

if TYPE_CHECKING:
    import torch

    from ..engine.context import Context


class _SampledMethod(Method):
    """Averages a per-sample attribution over ``count`` random draws for each example."""

    family = "gradient"
    signed = True
    quantity = "contribution to the score"

    def count(self) -> int:
        raise NotImplementedError

    def sample(
        self, score: ScoreModel, x: torch.Tensor, seeds: torch.Tensor, context: Context
    ) -> torch.Tensor:
        """Attributions (len(seeds), *x.shape[1:]) of example ``x`` for these draws."""
        raise NotImplementedError

    def attribute(self, forward, inputs, target, context):
        import torch

        score = ScoreModel(forward, target)
        count = self.count()
        seeds = draw_seeds(context, inputs.shape[0], count)
        out = torch.empty_like(inputs)
        examples = inputs.shape[0]
        for index in range(examples):
            x = inputs[index : index + 1]
            total = torch.zeros_like(x)

            def compute(start: int, stop: int, x=x, total=total, index=index) -> None:
                total.add_(self.sample(score, x, seeds[index, start:stop], context).sum(dim=0))

            context.map_batches(count, compute, f"{self.name} example {index + 1}/{examples}")
            out[index : index + 1] = total / count
        return out


@register
class DeepLiftShap(_SampledMethod):
    name = "deeplift_shap"
    title = "DeepLIFT-SHAP"
    summary = (
        "DeepLIFT averaged over a distribution of baselines (approximate SHAP values); "
        "attributions sum to the score minus its mean over the baselines."
    )
    cost = "n_baselines x (2 forward + 1 backward)"
    reference = "Lundberg & Lee 2017, arXiv:1705.07874"
    needs_baseline = True
    params = (
        Param("n_baselines", "int", 8, "Number of baselines drawn.", minimum=1, maximum=10000),
        *DISTRIBUTION,
    )

    def count(self):
        return self.config["n_baselines"]

    def passes(self, shape, forward=None):
        return Passes(forward=1, backward=1) * self.count()  # each baseline, then the input

    def cheaper(self):
        return ["fewer baselines (deeplift_shap.n_baselines=2 or 4)"]

    def refusal(self, network):
        from . import rules

        return rules.scripted_refusal(network, self.name)

    def baselines(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.cat(draw_baselines(x, seeds, self.config))

    def sample(self, score, x, seeds, context):
        baselines = self.baselines(x, seeds)
        attributions, scores, reference_scores, unhandled = deeplift(
            score, x.expand_as(baselines).contiguous(), baselines
        )
        note_incomplete(self.name, attributions, scores - reference_scores, unhandled, context)
        return attributions


@register
class GradientShap(_SampledMethod):
    name = "gradient_shap"
    title = "GradientSHAP"
    summary = (
        "Gradients at random points between random baselines and the (noisy) input, times the "
        "input's difference from the baseline, averaged (expected gradients)."
    )
    cost = "n_samples x (1 forward + 1 backward)"
    reference = "Lundberg & Lee 2017, arXiv:1705.07874; Erion et al. 2021 (expected gradients)"
    needs_baseline = True
    params = (
        Param("n_samples", "int", 16, "Number of random samples.", minimum=1, maximum=10000),
        Param(
            "noise_level",
            "float",
            0.0,
            "Standard deviation of the Gaussian noise added to the input (captum's stdevs), as "
            "a fraction of each channel's intensity range.",
            minimum=0.0,
            maximum=10.0,
        ),
        *DISTRIBUTION,
    )

    def count(self):
        return self.config["n_samples"]

    def passes(self, shape, forward=None):
        return Passes(backward=self.count())

    def cheaper(self):
        return ["fewer samples (gradient_shap.n_samples=4 or 8)"]

    def draws(
        self, x: torch.Tensor, seeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Baselines, noisy inputs and path positions (alpha in [0, 1]) of these samples."""
        import torch

        baselines = torch.cat(draw_baselines(x, seeds, self.config))
        std = (self.config["noise_level"] * intensity_range(x)).expand_as(x).cpu()
        noisy, alphas = [], []
        noiseless = self.config["noise_level"] == 0
        for seed in seeds.tolist():
            # A second stream per sample, so the baselines are those of deeplift_shap.
            generator = torch.Generator().manual_seed(int(seed) ^ 0x5EED)
            if noiseless:  # no volume of zero-width noise to draw
                noisy.append(x)
            else:
                noisy.append(x + torch.normal(0.0, std, generator=generator).to(x.device))
            alphas.append(torch.rand(1, generator=generator, dtype=x.dtype))
        return baselines, torch.cat(noisy), torch.cat(alphas).to(x.device)

    def sample(self, score, x, seeds, context):
        baselines, noisy, alphas = self.draws(x, seeds)
        alphas = alphas.reshape((-1,) + (1,) * (x.dim() - 1))
        _, grads = input_gradients(score, baselines + alphas * (noisy - baselines))
        return (noisy - baselines) * grads
