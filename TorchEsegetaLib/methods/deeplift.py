"""DeepLIFT: the rescale rule's multipliers times the input's change from a baseline.

DeepLIFT (rescale rule) runs the network twice, on the baseline and on the input, and passes
back through each non-linear operation the *multiplier* (change of output / change of input)
instead of its gradient, so the attributions sum exactly to ``score(x) - score(baseline)``.
captum's DeepLift hooks activation modules, which on MONAI networks gives wrong maps: it fails
on an activation module called twice (SegResNet), treats instance and group normalisation as
linear (the sum then misses the score change by more than the change itself on MONAI's UNet),
and misses functional activations. Here the rules are attached to the operations themselves
(:mod:`.rules`, :mod:`.deeplift_rules`).

Linear operations (convolutions, additions, concatenation, batch normalisation in eval mode,
interpolation) pass their gradient, which is their exact multiplier. Any other non-linear
operation is reported in the run's notes with the measured gap, and TorchScript models are
refused (their operations run out of Python's reach).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method, Passes, ScoreModel, register
from .baselines import BASELINE, BLUR_SIGMA, make_baseline

if TYPE_CHECKING:
    import torch

    from ..engine.context import Context


def deeplift(
    score: ScoreModel, inputs: torch.Tensor, baselines: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, set[str]]:
    """DeepLIFT attributions of ``score`` at ``inputs`` against ``baselines`` (same shape).

    Returns the attributions, the scores of the inputs and of the baselines, and the names of
    non-linear operations that had no rule.
    """
    import torch

    from . import rules

    rules.refuse_scripted(score.forward, "deeplift")
    unhandled: set[str] = set()
    paired = paired_pass(unhandled)
    windowed = getattr(score.forward, "paired_score_gradients", None)
    # Sliding-window models: window by window, memory bounded by the window batch.
    result = windowed(inputs, baselines, score.target, paired) if windowed else None
    if result is not None:
        grad, scores, reference_scores = result
        return (inputs - baselines) * grad, scores, reference_scores, unhandled
    x = inputs.detach().requires_grad_(True)
    scores, reference_scores = paired(score, x, baselines)
    (grad,) = torch.autograd.grad(scores.sum(), x)
    return (inputs - baselines) * grad, scores.detach(), reference_scores, unhandled


def paired_pass(unhandled: set[str]):
    """A function run on an input and on its baseline with DeepLIFT's rules: recorded on the
    baseline, applied on the input (one step of a window-by-window pass, see
    :meth:`SegmentationForward.paired_score_gradients`). Operations without a rule are added
    to ``unhandled``."""
    import torch

    from .deeplift_rules import RescaleRules

    def run(function, inputs, baselines):
        rescale = RescaleRules()
        with torch.no_grad(), rescale.mode():
            reference = function(baselines)
        rescale.replay()
        with torch.enable_grad(), rescale.mode() as mode:
            output = function(inputs)
        rescale.check_all_replayed()
        unhandled.update(mode.unhandled)
        return output, reference

    return run


def note_incomplete(
    method: str,
    attributions: torch.Tensor,
    change: torch.Tensor,
    unhandled: set[str],
    context: Context,
) -> None:
    """Add a note when the attributions of an example do not sum to its score change."""
    from .rules import unhandled_note

    total = attributions.flatten(1).sum(dim=1)
    gap = (total - change).abs()
    allowed = 1e-3 * change.abs() + 1e-6 * (1.0 + total.abs())
    if bool((gap > allowed).any()) and not any(n.startswith(method + ":") for n in context.notes):
        worst = int((gap / change.abs().clamp(min=1e-12)).argmax())
        what = (
            f"the attributions sum to {float(total[worst]):.4g} but the score changes by "
            f"{float(change[worst]):.4g}"
        )
        context.notes.append(unhandled_note(method, unhandled, what))


@register
class DeepLift(Method):
    name = "deeplift"
    title = "DeepLIFT"
    summary = (
        "Multipliers of the rescale rule from the score back to the input, times the input's "
        "change from a baseline; attributions sum to the score difference."
    )
    family = "gradient"
    signed = True
    quantity = "contribution to the score"
    cost = "2 forward + 1 backward"
    reference = "Shrikumar et al. 2017, arXiv:1704.02685"
    needs_baseline = True
    params = (BASELINE, BLUR_SIGMA)

    def passes(self, shape, forward=None):
        return Passes(forward=1, backward=1)  # the baseline, then the input

    def refusal(self, network):
        from . import rules

        return rules.scripted_refusal(network, self.name)

    def attribute(self, forward, inputs, target, context):
        import torch

        score = ScoreModel(forward, target)
        out = torch.empty_like(inputs)

        def compute(start: int, stop: int) -> None:
            x = inputs[start:stop]
            base = make_baseline(self.config["baseline"], x, self.config["blur_sigma"])
            attributions, scores, reference_scores, unhandled = deeplift(score, x, base)
            note_incomplete(self.name, attributions, scores - reference_scores, unhandled, context)
            out[start:stop] = attributions

        context.map_batches(inputs.shape[0], compute, self.name)
        return out
