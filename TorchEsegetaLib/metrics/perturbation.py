"""The paper's metrics: infidelity (Yeh et al. 2019) and max-sensitivity, as captum defines them.

Both draw their perturbations from the run's seed, one generator per sample, so a value does
not depend on the batch size, and the score differences of infidelity (which do not depend on
the map) are computed once per case and shared by every method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..schema.registry import Param
from .base import Case, Metric, Score, Subject, register

if TYPE_CHECKING:
    import torch

SAMPLES = Param("samples", "int", 10, "Number of random perturbations.", minimum=1, maximum=10000)


def gaussian_perturbation(case: Case, index: int, scale: float) -> torch.Tensor:
    """Perturbation ``index`` of infidelity: N(0, (scale * channel std)^2) per voxel, (1, C, *S')."""
    import torch

    noise = torch.randn(case.x.shape, generator=case.generator(1, index))
    return noise.to(case.device) * (scale * case.channel_std())


def uniform_perturbation(case: Case, index: int, radius: float) -> torch.Tensor:
    """Perturbation ``index`` of sensitivity: uniform in the L-inf ball of radius * channel std."""
    import torch

    noise = torch.rand(case.x.shape, generator=case.generator(2, index)) * 2 - 1
    return noise.to(case.device) * (radius * case.channel_std())


class _Infidelity(Metric):
    family = "faithfulness"
    direction = "lower"
    unit = "score squared"
    cost = "samples + 1 forward passes per case, shared by all methods"
    reference = "Yeh et al. 2019, arXiv:1901.09392; captum.metrics.infidelity"
    normalize = False
    params = (
        SAMPLES,
        Param(
            "noise",
            "float",
            0.1,
            "Standard deviation of the Gaussian perturbation, as a fraction of each channel's intensity standard deviation.",
            minimum=0.0,
            maximum=100.0,
        ),
    )

    def score_drops(self, case: Case) -> torch.Tensor:
        """f(x) - f(x - I_k) for every perturbation (samples,), once per case."""
        samples, noise = self.config["samples"], self.config["noise"]

        def compute() -> torch.Tensor:
            import torch

            def batch(start: int, stop: int) -> torch.Tensor:
                return torch.cat(
                    [case.x - gaussian_perturbation(case, k, noise) for k in range(start, stop)]
                )

            return case.reference_score() - case.scores(samples, batch, "infidelity")

        return case.cached(("infidelity", samples, noise), compute)

    def evaluate(self, case: Case, subject: Subject) -> Score:
        import torch

        drops = self.score_drops(case)
        attribution = subject.on_model_grid(case).double()
        explained = torch.tensor(
            [
                float((gaussian_perturbation(case, k, self.config["noise"]) * attribution).sum())
                for k in range(self.config["samples"])
            ],
            dtype=torch.float64,
        )
        details: dict[str, Any] = {}
        if self.normalize:
            energy = float((explained * explained).sum())
            beta = float((explained * drops).sum()) / energy if energy > 0 else 0.0
            explained = beta * explained
            details["beta"] = beta
        value = float(((explained - drops) ** 2).mean())
        spread = float((drops * drops).mean())
        # Share of the score changes' energy the map leaves unexplained (1: no better than 0).
        details["relative"] = value / spread if spread > 0 else None
        return Score(value, details=details)


@register
class InfidelityNormalised(_Infidelity):
    name = "infidelity_normalised"
    title = "Infidelity (scale-normalised)"
    summary = (
        "Infidelity after scaling the map by the factor that minimises it (Yeh et al.'s "
        "normalisation; captum's normalize=True): comparable between maps of different scales."
    )
    normalize = True
    caveat = "the infidelity to rank methods by: the raw one depends on each map's scale"


@register
class Infidelity(_Infidelity):
    name = "infidelity"
    title = "Infidelity"
    summary = (
        "Mean squared error between the map's prediction of a score change (perturbation . map) "
        "and the true change f(x) - f(x - perturbation), for Gaussian perturbations of the input."
    )
    caveat = "grows with the square of the map's scale, so a map of tiny values (saliency's gradients) scores a tiny error whatever its shape: do not rank methods of different scales by it"


@register
class MaxSensitivity(Metric):
    name = "max_sensitivity"
    title = "Max-sensitivity"
    summary = (
        "Largest relative change of the map, ||map(x + d) - map(x)|| / ||map(x)||, over random "
        "perturbations d in a small L-inf ball (captum's definition, which divides by the map's "
        "norm and so compares maps of different scales)."
    )
    family = "robustness"
    direction = "lower"
    unit = "ratio of map norms (0: the map does not change)"
    cost = "samples + 1 runs of the method"
    reference = "Yeh et al. 2019, arXiv:1901.09392; captum.metrics.sensitivity_max"
    reruns_method = True
    default = False
    params = (
        SAMPLES,
        Param(
            "radius",
            "float",
            0.02,
            "Radius of the L-inf ball, as a fraction of each channel's intensity standard deviation.",
            minimum=0.0,
            maximum=100.0,
        ),
    )

    def evaluate(self, case: Case, subject: Subject) -> Score:
        import torch

        reference = subject.reference_rerun(case).double()
        norm = float(reference.norm())
        norm = norm if norm > 0 else 1.0
        samples, radius = self.config["samples"], self.config["radius"]
        chunk = case.context().batch_limit()
        worst = 0.0
        for start in range(0, samples, chunk):
            stop = min(start + chunk, samples)
            inputs = torch.cat(
                [case.x + uniform_perturbation(case, k, radius) for k in range(start, stop)]
            )
            changed = subject.rerun(case, inputs=inputs).double()
            differences = (changed - reference).flatten(1).norm(dim=1) / norm
            worst = max(worst, float(differences.max()))
            if case.progress is not None:
                case.progress(stop / samples, f"{self.name} sample {stop}/{samples}")
        return Score(worst)
