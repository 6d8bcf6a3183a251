"""Sanity checks (Adebayo et al. 2018): a map that explains the model must change when the
model's parameters are randomised, and when another target is explained.

The model is never modified: randomisation works on a deep copy. Similarity of two maps is
the Spearman rank correlation and the 3D SSIM of their magnitudes (by default), computed on the
model grid, over the voxels where either map is non-zero: where both are exactly zero the
architecture decided (a region the network never sees, a receptive field's edge, a crop), not
the weights, and counting that agreement made every faithful map of such a model "fail".
For maps without exact zeros this is the whole volume, as in Adebayo et al.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from ..schema.registry import Param
from .base import Case, Metric, Score, Subject, register

if TYPE_CHECKING:
    import torch

SIMILARITIES = ("spearman", "ssim")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two volumes (ties get average ranks); constant -> 1 or 0."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def _window(kind: str, size: int, sigma: float) -> torch.Tensor:
    import torch

    if kind == "uniform":
        weights = torch.ones(size, dtype=torch.float64)
    else:
        offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def ssim3d(
    a: torch.Tensor | np.ndarray,
    b: torch.Tensor | np.ndarray,
    window: str = "gaussian",
    size: int = 7,
    sigma: float = 1.5,
    data_range: float | None = None,
    support: torch.Tensor | np.ndarray | None = None,
) -> float:
    """Mean structural similarity of two 3D volumes (Wang et al. 2004) with a separable window.

    Local statistics use the window over the positions where it fits entirely ("valid"), as
    scikit-image does after cropping its borders; the window shrinks (odd size) for volumes
    smaller than it. ``data_range`` defaults to the range of ``a`` and ``b`` together.
    ``support``: a bool volume; the mean is taken over the windows centred in it (default:
    every window).
    """
    import torch
    import torch.nn.functional as F

    a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).double().cpu()
    b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b).double().cpu()
    if data_range is None:
        data_range = float(torch.maximum(a.max(), b.max()) - torch.minimum(a.min(), b.min()))
    data_range = data_range or 1.0
    size = min(size, *[n if n % 2 else n - 1 for n in a.shape])
    kernel = _window(window, size, sigma)

    def filt(v: torch.Tensor) -> torch.Tensor:
        v = v[None, None]
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = size
            v = F.conv3d(v, kernel.reshape(shape))
        return v[0, 0]

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    if support is not None:
        inside = torch.as_tensor(
            np.asarray(support) if not isinstance(support, torch.Tensor) else support
        ).bool()
        half = size // 2
        centres = inside[tuple(slice(half, half + n) for n in ssim.shape)].cpu()
        if bool(centres.any()):
            return float(ssim[centres].mean())
    return float(ssim.mean())


def similarity(reference: torch.Tensor, other: torch.Tensor, absolute: bool) -> dict[str, float]:
    """Spearman and SSIM of two (1, C, *S) maps (channels summed), each scaled to [0, 1] for
    SSIM, over the voxels where either map is non-zero (see the module docstring)."""
    maps = []
    for t in (reference, other):
        v = t[0].sum(dim=0).double().cpu()
        maps.append(v.abs() if absolute else v)
    support = (maps[0] != 0) | (maps[1] != 0)
    if not bool(support.any()):
        return {"spearman": 1.0, "ssim": 1.0}  # two zero maps: identical
    scaled = [(v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else v * 0 for v in maps]
    everywhere = bool(support.all())
    return {
        "spearman": spearman(maps[0][support].numpy(), maps[1][support].numpy()),
        "ssim": ssim3d(
            scaled[0], scaled[1], data_range=1.0, support=None if everywhere else support
        ),
    }


def parameter_layers(forward: torch.nn.Module, inputs: torch.Tensor) -> list[str]:
    """Names of the modules with parameters of their own, in the order they run."""
    from ..methods.layer import trace_layers

    network = getattr(forward, "network", forward)
    owning = {
        name
        for name, m in network.named_modules()
        if name and next(m.parameters(recurse=False), None) is not None
    }
    order: list[str] = []
    for layer in trace_layers(forward, inputs):
        if layer["name"] in owning and layer["name"] not in order:
            order.append(layer["name"])
    return order


def randomise_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Redraw every parameter of ``module`` (not its children) from a Gaussian with the tensor's
    own mean and standard deviation (so activations keep their scale); a constant tensor (a
    normalisation's unit scale) gets a unit-scale spread around its value."""
    import torch

    with torch.no_grad():
        for p in module.parameters(recurse=False):
            spread = float(p.std()) if p.numel() > 1 else 0.0
            spread = spread or max(float(p.abs().mean()), 1.0)
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            p.copy_((float(p.mean()) + spread * noise).to(p.device, p.dtype))


def _threshold_param() -> Param:
    return Param(
        "threshold",
        "float",
        0.5,
        "The check passes when the similarity score is below this value.",
        minimum=-1.0,
        maximum=1.0,
    )


def _absolute_param() -> Param:
    return Param("absolute", "bool", True, "Compare the magnitudes |map| (false: signed values).")


@register
class ModelRandomisation(Metric):
    name = "model_randomisation"
    title = "Model randomisation check"
    summary = (
        "Cascading randomisation of the model's parameters, from the output layers towards the "
        "input, re-running the method at each step; the score is the larger of the Spearman "
        "correlation and the SSIM between the original map and the map of the fully randomised "
        "model. A map that does not depend on the model keeps a high similarity and fails."
    )
    family = "randomisation"
    direction = "lower"
    unit = "similarity, -1 to 1 (passes below the threshold)"
    curve_axes = ("fraction of layers randomised (output first)", "similarity to the original map")
    cost = "steps runs of the method"
    reference = "Adebayo et al. 2018, arXiv:1810.03292"
    reruns_method = True
    default = False
    params = (
        Param(
            "steps",
            "int",
            5,
            "Number of cascade steps (groups of layers, output first); one run of the method each.",
            minimum=1,
            maximum=1000,
        ),
        _threshold_param(),
        _absolute_param(),
    )

    def evaluate(self, case: Case, subject: Subject) -> Score:
        import torch

        layers = case.cached("parameter_layers", lambda: parameter_layers(case.forward, case.x))
        if not layers:
            return Score.skipped("the model exposes no parameterised layers (TorchScript?)")
        reference = subject.reference_rerun(case)
        randomised = copy.deepcopy(case.forward)
        modules = dict(getattr(randomised, "network", randomised).named_modules())
        groups = np.array_split(np.array(layers[::-1]), min(self.config["steps"], len(layers)))
        generator = case.generator(5)
        x_axis, curves = [0.0], {"spearman": [1.0], "ssim": [1.0]}
        done = 0
        for step, group in enumerate(groups, start=1):
            for name in group:
                randomise_(modules[str(name)], generator)
            done += len(group)
            similar = similarity(
                reference, subject.rerun(case, forward=randomised), self.config["absolute"]
            )
            x_axis.append(done / len(layers))
            for key in SIMILARITIES:
                curves[key].append(similar[key])
            if case.progress is not None:
                case.progress(step / len(groups), f"{self.name} step {step}/{len(groups)}")
            case.context().check()
        del randomised
        if case.device.type == "cuda":
            torch.cuda.empty_cache()
        value = max(curves["spearman"][-1], curves["ssim"][-1])
        return Score(
            value, curve=(x_axis, curves["spearman"]), details=self._details(value, x_axis, curves)
        )

    def _details(
        self, value: float, x_axis: list[float], curves: dict[str, list[float]]
    ) -> dict[str, Any]:
        return {
            "passed": bool(value < self.config["threshold"]),
            "threshold": self.config["threshold"],
            "ssim_curve": [x_axis, curves["ssim"]],
            "spearman_final": curves["spearman"][-1],
            "ssim_final": curves["ssim"][-1],
        }


@register
class RandomTarget(Metric):
    name = "random_target"
    title = "Random target check"
    summary = (
        "Explains another class (drawn from the run's seed) on the same region and compares it "
        "with the original map by Spearman correlation; a map that does not depend on the "
        "target stays similar and fails. Most informative with three or more classes: with two "
        "softmax classes the other class is nearly the complement of the target, so even a "
        "faithful map may stay similar."
    )
    family = "randomisation"
    direction = "lower"
    unit = "Spearman r, -1 to 1 (passes below the threshold)"
    cost = "1 run of the method"
    reference = "Adebayo et al. 2018 (random logit), arXiv:1810.03292"
    reruns_method = True
    default = False
    params = (_threshold_param(), _absolute_param())

    def evaluate(self, case: Case, subject: Subject) -> Score:
        import torch

        target = case.target
        classes = int(case.cached("classes", lambda: self._classes(case)))
        others = [c for c in range(classes) if c != target.class_index]
        if not others:
            return Score.skipped("the model has a single output channel: no other class to explain")
        other = others[int(torch.randint(len(others), (1,), generator=case.generator(6)))]
        # the other class alone on the same region (a contrast's class B dropped too)
        swapped = target.replace(class_index=other, versus_index=None)
        reference = subject.reference_rerun(case)
        similar = similarity(
            reference, subject.rerun(case, target=swapped), self.config["absolute"]
        )
        value = similar["spearman"]
        return Score(
            value,
            details={
                "passed": bool(value < self.config["threshold"]),
                "other_class": other,
                **similar,
            },
        )

    @staticmethod
    def _classes(case: Case) -> int:
        if case.card is not None:
            return case.card.out_channels
        import torch

        with torch.no_grad():
            return int(case.forward(case.x).shape[1])
