"""The method registry: one small class per attribution method, with declared parameters.

Every method answers one call, ``attribute(forward, inputs, target, context)``, returning a map
of the input's shape (B, C, *S). The declared :class:`Param` list drives the CLI flags, the
Slicer panel's forms, validation and the documentation, so the three never drift apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from ..schema.registry import Param, Registered, Registry  # noqa: F401  (the methods take Param from here)
from .guides import FAMILY_CANNOT_SHOW, GUIDES

if TYPE_CHECKING:
    import torch

    from ..engine.context import Context
    from ..targets.bound import BoundTarget

FAMILIES = ("gradient", "layer", "perturbation")


class Passes(NamedTuple):
    """What one example costs a method: network passes without gradient (``forward``) and
    passes with their backward pass (``backward``), each on one example of the input's size."""

    forward: int = 0
    backward: int = 0

    def __add__(self, other: Any) -> Passes:
        return Passes(self.forward + other.forward, self.backward + other.backward)

    def __mul__(self, factor: Any) -> Passes:
        return Passes(self.forward * int(factor), self.backward * int(factor))


class Method(Registered):
    """Base class: subclasses set the class attributes and implement :meth:`attribute`."""

    kind = "method"
    described = ("signed", "quantity", "needs_layer", "needs_baseline", "shared_channels")
    signed: ClassVar[bool]
    #: What a value of the map measures, for colour-bar titles and legends, in terms of the
    #: target "score" and the input "intensity" (e.g. "d score / d intensity"). Families set it
    #: once; a method whose parameters change it sets it on the instance.
    quantity: ClassVar[str]
    needs_layer: ClassVar[bool] = False
    needs_baseline: ClassVar[bool] = False
    #: True when the map is the same for every input channel (layer methods, occlusion of all
    #: channels at once): the run folder then writes it once instead of summing channels.
    shared_channels: ClassVar[bool] = False
    #: True when :meth:`passes` is an upper bound: the method decides its passes as it runs
    #: and records the real count in its context's facts (run.json).
    passes_are_bound: ClassVar[bool] = False
    #: the group whose docs page lists the method's page (docs/methods-GROUP.md): its family's
    #: unless a family is split over pages (the class activation maps: "cam")
    page_group: ClassVar[str | None] = None

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The registry's description plus the method's page: what a map of it answers, what
        its values mean, how it is known to mislead and what it cannot show (:mod:`.guides`)."""
        page = GUIDES[cls.name]
        return {
            **super().describe(),
            "guide": {
                "answers": page.answers,
                "positive": page.positive,
                "negative": page.negative,
                "failure_modes": list(page.failure_modes),
                "cannot_show": [*page.cannot_show, *FAMILY_CANNOT_SHOW[cls.family]],
            },
        }

    def attribute(
        self,
        forward: torch.nn.Module,
        inputs: torch.Tensor,
        target: BoundTarget,
        context: Context,
    ) -> torch.Tensor:
        """Attribute ``target(forward(inputs))`` to ``inputs``; returns a tensor of ``inputs.shape``."""
        raise NotImplementedError

    def passes(self, shape: tuple[int, ...], forward: Any = None) -> Passes:
        """The network passes one example of ``shape`` (C, *S) costs with this configuration
        (``forward``: the model it will explain, for methods that skip parts of it). Each
        method declares it beside its parameters; the run's cost estimate multiplies it by the
        measured time of one pass (:mod:`TorchEsegetaLib.runs.cost`)."""
        raise NotImplementedError(f"{type(self).__name__} declares no pass count")

    def cheaper(self) -> list[str]:
        """Settings of this method that cost less, named when a run would take long."""
        return []

    def refusal(self, network: torch.nn.Module) -> str | None:
        """Why this method, as configured, cannot explain ``network`` at all (one sentence
        naming the fix), or None when it can. The runner asks every method before any network
        pass (:mod:`TorchEsegetaLib.runs.preflight`), so only the network's modules and
        attributes and the method's own settings decide: a TorchScript model for a method that
        needs to see into it, a layer the network lacks, a network that says its layers cannot
        be mapped (``layer_maps_refused``), a parameter naming a missing file."""
        return None

    def target_refusal(self, target: Any) -> str | None:
        """Why this method cannot explain ``target`` (a :class:`~TorchEsegetaLib.targets.spec.
        TargetSpec` as asked) whatever the prediction (one sentence naming the fix), or None.
        Asked with :meth:`refusal`, before any network pass."""
        return None

    def preflight(
        self, forward: torch.nn.Module, inputs: torch.Tensor, target: BoundTarget
    ) -> None:
        """Raise :class:`~TorchEsegetaLib.errors.UserInputError` now if this method cannot
        explain this case (the default layer found on the input), so a run fails before any
        method has spent time. Runs once the case is prepared; cheap: at most one window's
        pass. What the model alone decides belongs in :meth:`refusal`."""


REGISTRY: Registry[Method] = Registry("method", FAMILIES)


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if not getattr(cls, "quantity", ""):
        raise ValueError(f"{cls.__name__}: declare the map's quantity (what a value measures)")
    if cls.name not in GUIDES:
        raise ValueError(
            f"{cls.__name__}: write its page (what a map can and cannot show) in guides.py"
        )
    return REGISTRY.register(cls)


def get_method(name: str) -> type[Method]:
    """The class registered under ``name``, or a clear error with the closest names."""
    return REGISTRY.lookup(name)


def create_method(name: str, params: dict[str, Any] | None = None) -> Method:
    return REGISTRY.create(name, params)


class ScoreModel:
    """``inputs -> target(forward(inputs))``: the scalar-per-example function methods explain."""

    def __init__(self, forward: torch.nn.Module, target: BoundTarget):
        self.forward = forward
        self.target = target

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.target(self.forward(inputs))


def input_gradients(score: ScoreModel, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (B,) and their gradient with respect to ``inputs`` (each example independently)."""
    import torch

    windowed = getattr(score.forward, "score_gradients", None)
    if windowed is not None:
        # Sliding-window models: window by window, memory bounded by the window batch.
        result = windowed(inputs, score.target)
        if result is not None:
            return result
    with torch.enable_grad():
        x = inputs.detach().requires_grad_(True)
        scores = score(x)
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return scores.detach(), grad.detach()
