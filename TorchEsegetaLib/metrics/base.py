"""The metric registry: one small class per evaluation metric, with declared parameters.

Every metric answers one call, ``evaluate(case, subject) -> Score``: ``case`` is the explained
case as every method saw it (model-grid input, frozen forward, bound target, target region),
``subject`` one method's explanation. Metrics that need the model run on the model grid with the
same :class:`~TorchEsegetaLib.models.inference.SegmentationForward`, frozen statistics and bound target
as the explanation; metrics of the map alone run on the input grid, the map the user sees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import UserInputError
from ..schema.registry import Registered, Registry, Spec

if TYPE_CHECKING:
    import torch

    from ..engine.context import CancelToken, Context
    from ..io.volume import Geometry
    from ..methods.base import Method
    from ..models.card import ModelCard
    from ..targets.bound import BoundTarget

FAMILIES = ("faithfulness", "robustness", "localisation", "complexity", "randomisation")
DIRECTIONS = ("higher", "lower")


@dataclass
class Score:
    """One metric's result for one method.

    Attributes:
        value: the score (NaN when the metric could not be computed; ``note`` says why).
        note: why a value is missing, or what to know about it.
        curve: (x, y) for metrics that trace a curve (deletion, randomisation cascade).
        details: further JSON-serialisable numbers (a second curve, pass/fail, ...).
    """

    value: float
    note: str = ""
    curve: tuple[list[float], list[float]] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def skipped(cls, note: str) -> Score:
        return cls(math.nan, note)


@dataclass
class Subject:
    """One method's explanation, as the run computed it.

    Attributes:
        label: the method's label in the run.
        method: the configured method instance (re-run by robustness and randomisation metrics).
        index: the method's position in the run: it ran with seed ``seed + index``.
        attribution: (C, I, J, K) float32 on the input grid.
        signed: whether the map's sign is meaningful.
    """

    label: str
    method: Method
    index: int
    attribution: np.ndarray
    signed: bool
    _model_grid: torch.Tensor | None = field(default=None, repr=False)

    @property
    def map(self) -> np.ndarray:
        """The (I, J, K) map: channels summed (channel-shared maps are stored once per channel)."""
        if getattr(self.method, "shared_channels", False):
            return self.attribution[0]
        return self.attribution.sum(axis=0)

    def on_model_grid(self, case: Case) -> torch.Tensor:
        """The attribution (1, C, *S') on the model grid and device (resampled once, cached)."""
        if self._model_grid is None:
            import torch

            t = torch.from_numpy(np.ascontiguousarray(self.attribution, dtype=np.float32))[None]
            self._model_grid = case.info.to_model_grid(t).to(case.x.device)
        return self._model_grid

    def rerun(
        self,
        case: Case,
        inputs: torch.Tensor | None = None,
        forward: torch.nn.Module | None = None,
        target: BoundTarget | None = None,
    ) -> torch.Tensor:
        """Run the method again, with the run's seed, on other inputs, model or target."""
        from ..engine.seeding import seed_everything

        seed_everything(case.seed + self.index)
        context = case.context(case.seed + self.index)
        attribution = self.method.attribute(
            forward if forward is not None else case.forward,
            inputs if inputs is not None else case.x,
            target if target is not None else case.target,
            context,
        )
        return attribution.detach().float()

    def reference_rerun(self, case: Case) -> torch.Tensor:
        """The method re-run on the unchanged case, on the model grid (shared by metrics)."""
        return case.cached(("rerun", self.label), lambda: self.rerun(case))


@dataclass
class Case:
    """The explained case, exactly as the methods saw it, plus what the metrics share.

    Attributes:
        forward: the model with frozen intensity statistics (raw intensities -> logits).
        x: (1, C, *S') the input on the model grid, on the device.
        target: the bound target (fixed region, class and score).
        info: how the input grid maps onto the model grid.
        region: (I, J, K) bool target region on the input grid.
        spacing: input voxel size in mm.
        seed: the run's seed.
        geometry: the input grid (to read reference masks).
        reference_mask: (I, J, K) reference mask given in memory (relevance rank accuracy).
        card: the model card.
        max_batch, cancel, progress: how the engine runs the model (see :class:`Context`).
    """

    forward: torch.nn.Module
    x: torch.Tensor
    target: BoundTarget
    info: Any
    region: np.ndarray
    spacing: tuple[float, float, float]
    seed: int = 0
    geometry: Geometry | None = None
    reference_mask: np.ndarray | None = None
    card: ModelCard | None = None
    max_batch: int | None = None
    cancel: CancelToken | None = None
    progress: Callable[[float, str], None] | None = None
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def context(self, seed: int | None = None) -> Context:
        from ..engine.context import Context

        return Context(
            device=self.device,
            max_batch=self.max_batch,
            progress=self.progress,
            cancel=self.cancel,
            seed=self.seed if seed is None else seed,
        )

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per case: method-independent work is shared by every method."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def scores(
        self, total: int, make_batch: Callable[[int, int], torch.Tensor], message: str = ""
    ) -> torch.Tensor:
        """Target scores (total,) of the inputs ``make_batch(start, stop)``, batched by the engine."""
        import torch

        out = torch.empty(total, dtype=torch.float64)

        def compute(start: int, stop: int) -> None:
            with torch.no_grad():
                out[start:stop] = self.target(self.forward(make_batch(start, stop))).double().cpu()

        self.context().map_batches(total, compute, message, kind="forward")
        return out

    def reference_score(self) -> float:
        return self.cached("score", lambda: float(self.scores(1, lambda a, b: self.x)[0]))

    def channel_std(self) -> torch.Tensor:
        """(1, C, 1, 1, 1) intensity standard deviation of each input channel (zero std -> 1)."""
        spatial = tuple(range(2, self.x.dim()))
        std = self.x.std(dim=spatial, keepdim=True)
        return std.where(std > 0, std.new_ones(()))

    def generator(self, *key: int) -> torch.Generator:
        """A CPU generator seeded from the run's seed and ``key``: draws do not depend on batching."""
        import torch

        generator = torch.Generator(device="cpu")
        generator.manual_seed(hash((self.seed, *key)) % 2**63)
        return generator


class Metric(Registered):
    """Base class: subclasses set the class attributes and implement :meth:`evaluate`."""

    kind = "metric"
    described = ("direction", "unit", "caveat", "needs_model", "reruns_method", "default")
    direction: ClassVar[str]
    #: What the value is measured in, in words ("share of |map|, 0 to 1"; "score" is the
    #: target score of the run), shown with tables of scores.
    unit: ClassVar[str]
    #: What a reader must know before comparing values between methods (empty: nothing).
    caveat: ClassVar[str] = ""
    #: runs the model (on the model grid); False: a function of the map alone (input grid).
    needs_model: ClassVar[bool] = True
    #: re-runs the attribution method: costs a multiple of the method's own time.
    reruns_method: ClassVar[bool] = False
    #: part of the default evaluation (re-running metrics are opt-in).
    default: ClassVar[bool] = True
    #: (x title, y title) of the metric's curve, for metrics that record one (figures, plots).
    curve_axes: ClassVar[tuple[str, str] | None] = None

    def evaluate(self, case: Case, subject: Subject) -> Score:
        raise NotImplementedError


REGISTRY: Registry[Metric] = Registry("metric", FAMILIES)


def register(cls: type[Metric]) -> type[Metric]:
    """Class decorator adding a metric to the registry under ``cls.name``."""
    if cls.direction not in DIRECTIONS:
        raise ValueError(f"{cls.__name__}: direction must be 'higher' or 'lower'")
    if not getattr(cls, "unit", ""):
        raise ValueError(f"{cls.__name__}: declare the unit of its values")
    return REGISTRY.register(cls)


def ordered() -> list[type[Metric]]:
    """Every registered metric, grouped by family in the order of :data:`FAMILIES`."""
    return sorted(REGISTRY.values(), key=lambda cls: FAMILIES.index(cls.family))


def get_metric(name: str) -> type[Metric]:
    """The class registered under ``name``, or a clear error with the closest names."""
    return REGISTRY.lookup(name)


@dataclass
class MetricSpec(Spec):
    """One metric of an evaluation: its registry name and parameters (part of a Job)."""

    job_field = "metrics"

    @classmethod
    def registry(cls) -> Registry:
        return REGISTRY


def metric_specs(
    entries: Sequence[str | dict[str, Any] | MetricSpec] | None,
) -> list[MetricSpec]:
    """Specs from names/dicts; None or "default" -> the default metrics, "all" -> every metric."""
    if entries is None:
        entries = ["default"]
    specs: list[MetricSpec] = []
    for entry in entries:
        if entry in ("default", "all"):
            specs += [MetricSpec(c.name) for c in ordered() if entry == "all" or c.default]
        else:
            specs.append(MetricSpec.from_any(entry))
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserInputError(f"metric(s) {twice} appear twice; give each metric once")
    return specs
