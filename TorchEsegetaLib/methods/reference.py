"""Methods relative to reference inputs: DeepLIFT, DeepLIFT-SHAP and GradientSHAP.

DeepLIFT (rescale rule) runs the network twice, on the baseline and on the input, and passes
back through each non-linear operation the *multiplier* (change of output / change of input)
instead of its gradient, so the attributions sum exactly to ``score(x) - score(baseline)``.
captum's DeepLift hooks activation modules, which on MONAI networks gives wrong maps: it fails
on an activation module called twice (SegResNet), treats instance and group normalisation as
linear (the sum then misses the score change by more than the change itself on MONAI's UNet),
and misses functional activations. Here the rules are attached to the operations themselves
(:mod:`.rules`), with one rule per kind:

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

Linear operations (convolutions, additions, concatenation, batch normalisation in eval mode,
interpolation) pass their gradient, which is their exact multiplier. Any other non-linear
operation is reported in the run's notes with the measured gap, and TorchScript models are
refused (their operations run out of Python's reach).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Method, Param, ScoreModel, input_gradients, register
from .baselines import BASELINE, BLUR_SIGMA, gaussian_blur, intensity_range, make_baseline

if TYPE_CHECKING:
    import torch

    from ..engine import Context

DISTRIBUTIONS = ("noisy", "blurred", "uniform")

DISTRIBUTION = (
    Param(
        "distribution",
        "choice",
        "noisy",
        "How baselines are drawn: the reference input plus Gaussian noise, Gaussian blurs of "
        "the input (sigma uniform in [blur_sigma/2, 3 blur_sigma/2]), or uniform intensities "
        "in each channel's range.",
        choices=DISTRIBUTIONS,
    ),
    BASELINE,
    Param(
        "baseline_noise",
        "float",
        0.1,
        "Noise of the 'noisy' baselines, as a fraction of each channel's intensity range.",
        minimum=0.0,
        maximum=10.0,
    ),
    BLUR_SIGMA,
)


def draw_baselines(
    x: torch.Tensor, seeds: torch.Tensor, config: dict[str, Any]
) -> list[torch.Tensor]:
    """One baseline of ``x.shape`` (one example) per seed, drawn as ``config`` says.

    Each draw has its own generator, so a draw depends only on its seed, never on the batch
    it was computed in (an out-of-memory retry gives the same numbers).
    """
    import torch

    kind = config["distribution"]
    if kind == "noisy":
        centre = make_baseline(config["baseline"], x, config["blur_sigma"])
        std = (config["baseline_noise"] * intensity_range(x)).expand_as(x).cpu()
    draws = []
    for seed in seeds.tolist():
        generator = torch.Generator().manual_seed(int(seed))
        if kind == "noisy":
            draws.append(centre + torch.normal(0.0, std, generator=generator).to(x.device))
        elif kind == "blurred":
            sigma = config["blur_sigma"] * (0.5 + float(torch.rand(1, generator=generator)))
            draws.append(gaussian_blur(x, sigma))
        else:
            unit = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            draws.append(
                x.amin(dim=tuple(range(2, x.dim())), keepdim=True) + unit * intensity_range(x)
            )
    return draws


def draw_seeds(context: Context, examples: int, count: int) -> torch.Tensor:
    """(examples, count) seeds, one per random draw, from the run's seeded generator."""
    import torch

    return torch.randint(0, 2**62, (examples, count), generator=context.generator())


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

    def run(function, inputs, baselines):
        rescale = _RescaleRules()
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
    cost = "2 forward + 1 backward"
    reference = "Shrikumar et al. 2017, arXiv:1704.02685"
    needs_baseline = True
    params = (BASELINE, BLUR_SIGMA)

    def preflight(self, forward, inputs, target):
        from . import rules

        rules.refuse_scripted(forward, self.name)

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


class _SampledMethod(Method):
    """Averages a per-sample attribution over ``count`` random draws for each example."""

    family = "gradient"
    signed = True

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

    def preflight(self, forward, inputs, target):
        from . import rules

        rules.refuse_scripted(forward, self.name)

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


class _RescaleRules:
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
    """Instance, group or layer normalisation: the exact product rule (module docstring)."""
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
