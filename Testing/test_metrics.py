"""Evaluation metrics on synthetic models with known answers: the true gradient of a linear model
beats a random map, a map that ignores the model fails the randomisation checks, the
ground-truth-region model localises, and infidelity/sensitivity equal captum's on the same
perturbations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.metrics import infidelity, sensitivity_max
from catalog import RegionNet
from helpers import centre_box_target, metric_case, tiny_input, tiny_unet
from scipy.stats import spearmanr

from TorchEsegetaLib.errors import UserInputError
from TorchEsegetaLib.methods import ScoreModel, create_method
from TorchEsegetaLib.metrics import (
    REGISTRY,
    MetricSpec,
    Subject,
    create_metric,
    metric_specs,
    spearman,
    ssim3d,
)
from TorchEsegetaLib.metrics.perturbation import gaussian_perturbation, uniform_perturbation
from TorchEsegetaLib.targets.bound import BoundTarget

SIZE = 16


class LinearSegmenter(torch.nn.Module):
    """logits[:, 1] = weights * x voxel by voxel, logits[:, 0] = 0: the score is linear in x."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.register_buffer("weights", weights)

    def forward(self, x):
        foreground = (self.weights * x).sum(dim=1, keepdim=True)
        return torch.cat([torch.zeros_like(foreground), foreground], dim=1)


class InputEdges:
    """A 'method' that ignores the model: the gradient magnitude of the input image."""

    signed = False
    shared_channels = False

    def attribute(self, forward, inputs, target, context):
        edges = torch.zeros_like(inputs)
        for axis in range(2, inputs.dim()):
            edges += torch.gradient(inputs, dim=axis)[0] ** 2
        return edges.sqrt()


def subject(attribution, label="map", method=None):
    array = attribution.detach().cpu().numpy()[0] if torch.is_tensor(attribution) else attribution
    return Subject(label, method, 0, np.asarray(array, dtype=np.float32), True)


def full_target(class_index=1):
    return BoundTarget(
        class_index, torch.ones((SIZE,) * 3, dtype=torch.bool), "logits", "softmax", "mean"
    )


@pytest.fixture(scope="module")
def linear():
    generator = torch.Generator().manual_seed(1)
    weights = torch.randn((1, 1, SIZE, SIZE, SIZE), generator=generator)
    model = LinearSegmenter(weights)
    x = tiny_input()
    target = full_target()
    case = metric_case(model, x, target)
    gradient = weights / weights.numel()  # d mean(w * x) / dx
    random = torch.rand(x.shape, generator=generator)
    return case, subject(gradient, "gradient"), subject(random, "random")


@pytest.mark.parametrize(
    "name, params",
    [
        ("deletion", {"baseline": "zero", "steps": 16}),
        ("insertion", {"baseline": "zero", "steps": 16}),
        ("infidelity", {}),
        ("infidelity_normalised", {}),
        ("faithfulness_correlation", {"baseline": "zero"}),
    ],
)
def test_true_gradient_of_a_linear_model_beats_a_random_map(linear, name, params):
    case, gradient, random = linear
    metric = create_metric(name, params)
    ours, theirs = metric.evaluate(case, gradient).value, metric.evaluate(case, random).value
    if metric.direction == "higher":
        assert ours > theirs
    else:
        assert ours < theirs
    if name.startswith("infidelity"):
        assert ours < 1e-6 * max(theirs, 1e-12) + 1e-9  # exact for a linear model


def test_deletion_curve_is_deterministic_with_the_documented_number_of_points(linear):
    case, _, _ = linear
    flat = subject(np.ones((1, SIZE, SIZE, SIZE)))  # every block ties: the seed decides the order
    metric = create_metric("deletion", {"steps": 7, "block": 4})
    first, again = metric.evaluate(case, flat), metric.evaluate(case, flat)
    x, y = first.curve
    assert len(x) == len(y) == 8 and x[0] == 0.0 and x[-1] == 1.0
    assert np.all(np.diff(x) > 0)
    area = sum((b - a) * (u + v) / 2 for a, b, u, v in zip(x, x[1:], y, y[1:]))
    assert first.value == pytest.approx(area, rel=1e-12)  # the trapezoidal rule
    assert first.curve == again.curve and first.value == again.value
    other_seed = metric_case(case.forward, case.x, case.target, seed=5)
    assert metric.evaluate(other_seed, flat).curve != first.curve
    assert y[0] == pytest.approx(case.reference_score(), rel=1e-5)


@pytest.fixture(scope="module")
def unet_case():
    net = tiny_unet()
    return metric_case(net, tiny_input(), centre_box_target())


def test_infidelity_agrees_with_captum_on_the_same_perturbations(unet_case):
    case = unet_case
    saliency = create_method("saliency", {"abs": False})
    attribution = saliency.attribute(case.forward, case.x, case.target, case.context())
    score = ScoreModel(case.forward, case.target)
    for normalise, name in ((False, "infidelity"), (True, "infidelity_normalised")):
        metric = create_metric(name, {"samples": 3, "noise": 0.2})
        noise = torch.cat([gaussian_perturbation(case, k, 0.2) for k in range(3)])

        def perturb(inputs, noise=noise):
            return noise, inputs - noise

        expected = infidelity(
            score, perturb, case.x, attribution, n_perturb_samples=3, normalize=normalise
        )
        value = metric.evaluate(case, subject(attribution, method=saliency)).value
        assert value == pytest.approx(float(expected), rel=1e-3)


def test_max_sensitivity_agrees_with_captum_on_the_same_perturbations(unet_case):
    case = unet_case
    saliency = create_method("saliency")
    deltas = torch.cat([uniform_perturbation(case, k, 0.05) for k in range(3)])

    def explain(inputs):
        if isinstance(inputs, tuple):  # captum passes tuples and expects tuples back
            return (explain(inputs[0]),)
        return saliency.attribute(case.forward, inputs, case.target, case.context())

    expected = sensitivity_max(
        explain, case.x, perturb_func=lambda inputs, radius: inputs + deltas, n_perturb_samples=3
    )
    metric = create_metric("max_sensitivity", {"samples": 3, "radius": 0.05})
    value = metric.evaluate(case, subject(explain(case.x), method=saliency)).value
    assert value == pytest.approx(float(expected), rel=1e-4)


def test_randomisation_checks_pass_for_saliency_and_fail_for_an_edge_detector(unet_case):
    case = unet_case
    before = {k: v.clone() for k, v in case.forward.state_dict().items()}
    cascade = create_metric("model_randomisation", {"steps": 3})
    swap = create_metric("random_target")
    saliency = create_method("saliency")
    map_ = saliency.attribute(case.forward, case.x, case.target, case.context())
    good = cascade.evaluate(case, subject(map_, "saliency", saliency))
    x, y = good.curve
    assert len(x) == len(y) == 4 and x[0] == 0.0 and x[-1] == 1.0 and y[0] == 1.0
    assert good.details["spearman_final"] < 0.5 and good.details["passed"]
    swapped = swap.evaluate(case, subject(map_, "saliency", saliency)).value

    edges = InputEdges()
    blind = subject(edges.attribute(None, case.x, None, None), "edges", edges)
    bad = cascade.evaluate(case, blind)
    assert bad.value == pytest.approx(1.0) and not bad.details["passed"]
    blind_swap = swap.evaluate(case, blind)
    assert blind_swap.value == pytest.approx(1.0) and not blind_swap.details["passed"]
    assert swapped < blind_swap.value
    for key, value in case.forward.state_dict().items():
        assert torch.equal(value, before[key]), "the model itself must never be randomised"


def test_localisation_of_the_ground_truth_region_model_is_near_one():
    region = torch.zeros((SIZE,) * 3, dtype=torch.bool)
    region[4:10, 5:12, 3:9] = True
    net = RegionNet(region).eval()
    target = BoundTarget(1, region, "logits", "softmax", "mean")
    case = metric_case(net, tiny_input(), target)
    case.reference_mask = region.numpy()
    saliency = create_method("saliency")
    good = subject(saliency.attribute(net, case.x, target, case.context()), "saliency")
    random = subject(torch.rand(case.x.shape, generator=torch.Generator().manual_seed(0)))
    for name in ("mass_in_target", "mass_in_dilated_target", "pointing_game"):
        assert create_metric(name).evaluate(case, good).value > 0.99
    accuracy = create_metric("relevance_rank_accuracy")
    assert accuracy.evaluate(case, good).value > 0.9
    assert accuracy.evaluate(case, random).value < 0.3
    assert create_metric("mass_in_target").evaluate(case, random).value < 0.3
    without_reference = metric_case(net, case.x, target)
    assert "no reference mask" in accuracy.evaluate(without_reference, good).note


def test_complexity_of_known_maps():
    case = metric_case(None, torch.zeros(1, 1, 4, 4, 4), full_target())
    case.region = np.ones((4, 4, 4), bool)
    one_hot = np.zeros((1, 4, 4, 4), np.float32)
    one_hot[0, 1, 2, 3] = 5.0
    uniform = np.ones((1, 4, 4, 4), np.float32)
    gini, entropy = create_metric("sparseness"), create_metric("entropy")
    assert gini.evaluate(case, subject(one_hot)).value == pytest.approx(63 / 64)
    assert gini.evaluate(case, subject(uniform)).value == pytest.approx(0.0, abs=1e-12)
    assert entropy.evaluate(case, subject(one_hot)).value == pytest.approx(0.0)
    assert entropy.evaluate(case, subject(uniform)).value == pytest.approx(1.0)
    assert np.isnan(gini.evaluate(case, subject(uniform * 0)).value)


def test_ssim3d_and_spearman_against_direct_computations():
    generator = np.random.default_rng(0)
    a, b = generator.random((9, 9, 9)), generator.random((9, 9, 9))
    b = 0.6 * a + 0.4 * b
    assert ssim3d(a, a) == pytest.approx(1.0)
    # uniform 7-voxel window: population statistics over every fully inside position
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i, j, k in np.ndindex(3, 3, 3):
        pa, pb = a[i : i + 7, j : j + 7, k : k + 7], b[i : i + 7, j : j + 7, k : k + 7]
        cov = ((pa - pa.mean()) * (pb - pb.mean())).mean()
        values.append(
            (2 * pa.mean() * pb.mean() + c1)
            * (2 * cov + c2)
            / ((pa.mean() ** 2 + pb.mean() ** 2 + c1) * (pa.var() + pb.var() + c2))
        )
    ours = ssim3d(a, b, window="uniform", size=7, data_range=1.0)
    assert ours == pytest.approx(np.mean(values), rel=1e-9)
    assert ssim3d(a, b) == pytest.approx(ssim3d(b, a))
    assert spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic)


def test_registry_declares_direction_cost_and_validates_names_and_params():
    for cls in REGISTRY.values():
        info = cls.describe()
        assert info["direction"] in ("higher", "lower") and info["cost"] and info["summary"]
    assert {s.name for s in metric_specs(["all"])} == set(REGISTRY)
    assert "model_randomisation" not in {s.name for s in metric_specs(None)}
    with pytest.raises(UserInputError, match="did you mean deletion"):
        MetricSpec("deletoin")
    with pytest.raises(UserInputError, match="steps"):
        MetricSpec("deletion", {"steps": 0})
    with pytest.raises(UserInputError, match="unknown parameter"):
        MetricSpec("entropy", {"bins": 3})


def test_similarity_ignores_where_both_maps_are_exactly_zero():
    """Zeros the architecture imposes on every map (a region the network never sees) are not
    evidence that a map ignores the weights: only the maps' joint support is compared."""
    from TorchEsegetaLib.metrics.randomisation import similarity

    generator = torch.Generator().manual_seed(0)
    box = torch.zeros((1, 1, 32, 32, 32))
    box[..., 4:24, 4:24, 4:24] = 1.0  # a quarter of the volume
    a = torch.rand(box.shape, generator=generator) * box
    b = torch.rand(box.shape, generator=generator) * box
    independent = similarity(a, b, absolute=True)
    assert independent["spearman"] < 0.2 and independent["ssim"] < 0.3
    # over the whole volume the shared zeros alone would make them look alike
    assert spearman(a.numpy(), b.numpy()) > 0.9
    same = similarity(a, a, absolute=True)
    assert same["spearman"] == pytest.approx(1.0) and same["ssim"] == pytest.approx(1.0)
    assert similarity(a * 0, b * 0, absolute=True) == {"spearman": 1.0, "ssim": 1.0}
