"""What a map of each method can and cannot show: the method pages of ``torchesegeta methods
NAME`` and of docs/methods-gradient.md, methods-layer.md, methods-cam.md and
methods-perturbation.md, declared here once per method (and once per family for what a whole
family shares). Every registered method must have its guide (checked when it registers), so the
pages never miss one.

The numbers quoted are measured by the project's own tests and benchmarks: the ground-truth
test of ``Testing/test_catalog_contract.py`` (a network that sees only a known box), the model
randomisation check on the demo (docs/evaluation.md) and ``benchmarks/artefacts.py``
(docs/artefacts.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Guide:
    """One method's page in plain words.

    Attributes:
        answers: the question a map of the method answers.
        positive: what a positive value (red on a signed map; bright on an unsigned one) means.
        negative: what a negative value (blue) means; "" for maps that are never negative.
        failure_modes: how its maps are known to mislead, each with what to do about it.
        cannot_show: what no map of this method can tell.
    """

    answers: str
    positive: str
    negative: str
    failure_modes: tuple[str, ...]
    cannot_show: tuple[str, ...]


_STRIPES = (
    "Stripes of period 2 locked to the network's voxel grid, inside bright structures, on "
    "networks that down- and up-sample with learnt kernels of stride 2 (MONAI's UNet, the "
    "demo): the model's own gradients on the dim images along the path from the baseline, not "
    "anatomy and not the integration (the rule, the steps, the baseline and captum's code give "
    "the same); read the map at the scale of 2 voxels (docs/artefacts.md)."
)
_RANDOMISATION = (
    "Multiplying by the image's difference from the baseline makes the map resemble the image: "
    "on the demo it stays similar after the model's weights are randomised ({value}, "
    "threshold 0.5; run --metric model_randomisation on your model)."
)
_BASELINE = (
    "It explains the change from the baseline image: the default zero baseline is a black "
    "image without anatomy; baseline=blur explains what the detail adds to a blurred copy."
)
_INTERACTIONS = (
    "Interactions: a voxel that matters only together with another is split between them, "
    "never shown as a pair."
)
_CONTRIBUTION = "this voxel's change from the baseline raised the score"
_AGAINST = "this voxel's change from the baseline lowered the score"
#: Share of |map| inside the box of the ground-truth test (a network that sees only a known
#: 8^3 box of a 16^3 volume), for the methods below the 0.95 every other method reaches (guided
#: Grad-CAM's map is all zero there). ``Testing/test_catalog_contract.py`` measures it and holds
#: these numbers to within 0.03, so the pages say what the test finds.
GROUND_TRUTH_SHARE = {
    "gradcam": 0.00,
    "gradcam_pp": 0.06,
    "internal_influence": 0.13,
    "layer_activation": 0.25,
    "layer_gradient_x_activation": 0.25,
    "layer_conductance": 0.43,
    "layer_deeplift": 0.43,
    "layer_gradient_shap": 0.44,
    "hirescam": 0.00,
    "xgradcam": 0.00,
    "layercam": 0.06,
    "eigencam": 0.51,
    "eigengradcam": 0.15,
    "scorecam": 0.25,
    "rise": 0.40,
    "lime": 0.86,
    "kernel_shap": 0.91,
}
#: Methods whose map is all zero in that test (their share is undefined).
ALL_ZERO_IN_GROUND_TRUTH = frozenset({"guided_gradcam", "ablationcam"})


def _ground_truth(name: str, why: str) -> str:
    return (
        f"On a network that only sees a known 8^3 box it puts {GROUND_TRUTH_SHARE[name]:.2f} of "
        f"its mass inside the box (the gradient methods put 1.00): {why}"
    )


#: What every method of a family shares, after the method's own lines.
FAMILY_CANNOT_SHOW: dict[str, tuple[str, ...]] = {
    "gradient": (),
    "layer": (
        "Detail finer than the layer's voxel grid: the layer's map is upsampled trilinearly "
        "to the input.",
        "Input voxels as such: it describes a layer's units, each of which sees a neighbourhood "
        "of the input, and outside the target the activations are largely set by biases.",
    ),
    "perturbation": (
        "Detail finer than its window or feature: every voxel of one gets the same value.",
        "What other edits than replacing a region by the baseline would do; the replaced "
        "image is one the model never saw, so the drop mixes the region's content with the "
        "edit's own oddness.",
    ),
}

GUIDES: dict[str, Guide] = {
    "saliency": Guide(
        answers="Which voxels would change the score most if their intensity changed a little, "
        "at this very image (the local sensitivity)?",
        positive="a small change of this voxel's intensity changes the score strongly, up or "
        "down (abs=false keeps the sign: red raises the score as the intensity rises)",
        negative="",
        failure_modes=(
            "Speckled: the gradient of a ReLU network jumps from voxel to voxel; SmoothGrad "
            "averages the speckle out.",
            "Saturation: where the score is saturated the gradient is near zero though the voxel "
            "matters; explain logits (the default), not probabilities.",
        ),
        cannot_show=(
            "How much a voxel contributes to the score: a gradient is a rate, and a voxel can "
            "matter a lot with a gradient near zero.",
            "With the default abs=true, whether raising or lowering the intensity helps.",
            "What a large change (removing a structure) would do.",
        ),
    ),
    "input_x_gradient": Guide(
        answers="To first order, how much would the score change if this voxel's intensity "
        "went to zero?",
        positive="this voxel's intensity, times the score's sensitivity to it, raises the score",
        negative="it lowers the score",
        failure_modes=(
            "Bright voxels dominate and the map resembles the image; voxels of intensity zero get "
            "zero whatever the model does with them.",
            "It depends on where the raw intensity is zero (a CT's -1000 HU background is "
            "strongly weighted).",
        ),
        cannot_show=(
            "Contributions of voxels of intensity zero.",
            "Effects beyond first order (saturation, thresholds).",
        ),
    ),
    "integrated_gradients": Guide(
        answers="How much of the score's change from the baseline image to this image does each "
        "voxel account for? The map sums to that change (completeness).",
        positive=_CONTRIBUTION,
        negative=_AGAINST,
        failure_modes=(
            _STRIPES,
            _BASELINE,
            _RANDOMISATION.format(value="0.81"),
            "Too few steps leave it incomplete: check that the map sums to the score change "
            "(networks with many ReLUs or LeakyReLUs need more steps).",
        ),
        cannot_show=(_INTERACTIONS, "An explanation against any other image than the baseline."),
    ),
    "smoothgrad": Guide(
        answers="What does the base method (saliency by default) show consistently when small "
        "Gaussian noise is added to the image?",
        positive="as its base method's; with nt_type=vargrad, the base map varies strongly under "
        "noise here",
        negative="as its base method's (saliency's and VarGrad's maps are never negative)",
        failure_modes=(
            "The noise level sets what survives: too low keeps the speckle, too high blurs and "
            "explains noisy images the model never saw.",
            "On the demo its randomisation similarity sits just above the threshold (0.54).",
        ),
        cannot_show=(
            "Detail finer than the smoothing the noise causes.",
            "Completeness: a SmoothGrad of integrated gradients no longer sums to the score change.",
        ),
    ),
    "guided_backprop": Guide(
        answers="Which input patterns does the score respond to along the paths where the ReLUs "
        "pass only positive gradients (a sharpened, edge-like gradient)?",
        positive="positive guided gradient: raising the intensity raises the score along the "
        "passed paths",
        negative="negative guided gradient (only from the first layer's negative weights)",
        failure_modes=(
            "It can reconstruct the image's edges largely whatever the class or the upper layers "
            "(Nie et al. 2018): compare with --metric random_target.",
            "Needs ReLU activations; its values have no unit that sums to the score.",
        ),
        cannot_show=(
            "Evidence against the score inside the network (cut at every ReLU).",
            "How much a voxel matters.",
        ),
    ),
    "deconvolution": Guide(
        answers="Which input patterns would drive the units on the path to the score, passing "
        "back only positive signals whatever this image's activations were?",
        positive="positive deconvolved signal",
        negative="negative deconvolved signal (from the first layer's negative weights)",
        failure_modes=(
            "Largely independent of this image's activations and of the class: patterns of the "
            "network more than of the case.",
            "Needs ReLU activations.",
        ),
        cannot_show=(
            "What this image's activations did.",
            "Evidence against the score, or how much a voxel matters.",
        ),
    ),
    "deeplift": Guide(
        answers="How much of the score's difference from the baseline's score does each voxel "
        "account for, by DeepLIFT's rescale rule? The map sums to that difference.",
        positive=_CONTRIBUTION,
        negative=_AGAINST,
        failure_modes=(
            _STRIPES,
            _BASELINE,
            _RANDOMISATION.format(value="0.85"),
            "The rescale rule approximates the path integral: where units change sign between "
            "baseline and image it differs from integrated gradients.",
        ),
        cannot_show=(_INTERACTIONS, "Models it cannot see inside (TorchScript: refused)."),
    ),
    "deeplift_shap": Guide(
        answers="How much does each voxel account for of the score's difference from its mean "
        "over a set of baselines (approximate SHAP values)?",
        positive="raised the score relative to the baselines' average",
        negative="lowered it",
        failure_modes=(
            _STRIPES,
            "It depends on the baseline distribution, and few baselines leave sampling noise.",
        ),
        cannot_show=(_INTERACTIONS, "Models it cannot see inside (TorchScript: refused)."),
    ),
    "gradient_shap": Guide(
        answers="Expected gradients: how much does each voxel account for of the score's "
        "expected change from random baselines to the (noisy) image?",
        positive="raised the score relative to the baselines, on average",
        negative="lowered it",
        failure_modes=(
            _STRIPES,
            "Sampling noise: it sums to the score change only in expectation; raise n_samples.",
        ),
        cannot_show=(_INTERACTIONS, "An exact decomposition of this one image's score."),
    ),
    "lrp": Guide(
        answers="How is the score shared out over the input voxels, layer by layer, in "
        "proportion to each one's contribution (default: the epsilon rule at the output layer, "
        "the z+ rule below it)?",
        positive="relevance for the score",
        negative="relevance against it",
        failure_modes=(
            "A checkerboard of period 2 over the background on networks that down-sample with "
            "3^3 convolutions of stride 2 (MONAI's UNet, the demo): a voxel with an odd index "
            "along an axis gets relevance from two of that layer's windows, one with an even "
            "index from one (the model's sampling, not a bug; max pooling turns it over, average "
            "pooling has none; docs/artefacts.md).",
            "Biases absorb relevance, so the map sums to the score only approximately.",
            "The rules (composite) change the picture; operations without a rule are listed in "
            "the run's notes.",
            "On the demo it stays similar after the model's weights are randomised (0.72).",
        ),
        cannot_show=(
            "A rate or a counterfactual: relevance is a share of the score, not what a change "
            "would do.",
            "Models it cannot see inside (TorchScript: refused).",
        ),
    ),
    "gradcam": Guide(
        answers="Where in a layer's feature maps are the channels active whose gradients favour "
        "the score: a coarse localisation at the layer's resolution.",
        positive="channels that raise the score are active here",
        negative="",
        failure_modes=(
            _ground_truth(
                "gradcam",
                "its activations outside the box are bias-driven and count, those inside "
                "are weighted negatively.",
            ),
            "On a layer that feeds an instance normalisation its channel weights vanish (the "
            "default layer avoids such layers).",
        ),
        cannot_show=("Evidence against the score (relu=true clips it).",),
    ),
    "gradcam_pp": Guide(
        answers="As Grad-CAM, with channel weights that sum only positive gradients, weighted "
        "per voxel (favouring several object parts).",
        positive="channels with positive gradients somewhere are active here",
        negative="",
        failure_modes=(
            "On segmentation networks channels that encode the background get positive weights: "
            "0.03 of its mass on the demo's vessels. Prefer Grad-CAM.",
            _ground_truth("gradcam_pp", "its weights favour channels active outside the box."),
        ),
        cannot_show=("Evidence against the score.",),
    ),
    "hirescam": Guide(
        answers="Where in a layer do activations and their own gradients agree in favour of the "
        "score, voxel by voxel (no averaging of the gradient over the channel); over a region "
        "target this is Seg-XRes-CAM.",
        positive="here the layer's activations, times their gradients, raise the score",
        negative="",
        failure_modes=(
            _ground_truth(
                "hirescam",
                "on that net its map is Grad-CAM's up to a positive factor (constant gradients).",
            ),
            "Noisier than Grad-CAM where the gradient itself is speckled (deep ReLU nets).",
        ),
        cannot_show=("Evidence against the score (relu=true clips it).",),
    ),
    "xgradcam": Guide(
        answers="As Grad-CAM, with each channel's gradient averaged under its own activations "
        "(the weights of an axiom-based derivation: sensitivity and conservation).",
        positive="channels that raise the score are active here",
        negative="",
        failure_modes=(
            _ground_truth("xgradcam", "its activations outside the box are bias-driven."),
            "A channel whose activations sum to zero gets weight 0, whatever its gradient.",
        ),
        cannot_show=("Evidence against the score (relu=true clips it).",),
    ),
    "layercam": Guide(
        answers="Where do a layer's activations have a positive gradient for the score, voxel "
        "by voxel: finer than Grad-CAM on shallow, high-resolution layers.",
        positive="an active unit here would raise the score if it grew",
        negative="",
        failure_modes=(
            _ground_truth("layercam", "its positive gradients keep channels active outside it."),
        ),
        cannot_show=("Evidence against the score: negative gradients are dropped before the sum.",),
    ),
    "eigencam": Guide(
        answers="What does the layer represent most strongly here: its activations projected "
        "on their first principal component. It uses no gradient and no target: the same map "
        "for every class.",
        positive="the layer's dominant pattern is strong here",
        negative="",
        failure_modes=(
            _ground_truth("eigencam", "the dominant pattern is not the class's evidence."),
            "The sign of a principal component is arbitrary; the map is oriented so that the "
            "channels' sum is positive, which can point at the background.",
        ),
        cannot_show=(
            "Which class the map is about: it ignores the target.",
            "Why the class was chosen.",
        ),
    ),
    "eigengradcam": Guide(
        answers="HiResCAM's per-voxel products of activation and gradient, projected on their "
        "first principal component: class-specific, smoothed.",
        positive="the dominant pattern of the class's evidence is strong here",
        negative="",
        failure_modes=(
            _ground_truth("eigengradcam", "the projection spreads the evidence over the layer."),
            "The principal component's sign is chosen, not given: check against HiResCAM.",
        ),
        cannot_show=("Evidence that is not part of the dominant pattern.",),
    ),
    "scorecam": Guide(
        answers="Which of the layer's channels, used as a mask on the input, keep the score "
        "high; their activations weighted by that score. No gradients, one pass per channel.",
        positive="channels whose masked input keeps the score high are active here",
        negative="",
        failure_modes=(
            _ground_truth("scorecam", "its masks are the activations, non-zero outside it."),
            "The masked inputs are images the model never saw; the scores mix the region's "
            "content with the masking's oddness.",
        ),
        cannot_show=("Evidence against the score.", "Detail finer than the layer's grid."),
    ),
    "ablationcam": Guide(
        answers="How much does the score drop when each of the layer's channels is switched "
        "off; the activations weighted by those drops. No gradients, one pass per channel.",
        positive="channels whose removal lowers the score are active here",
        negative="",
        failure_modes=(
            "All zero in the ground-truth test: the drops w_k mean(A_k) make the weighted sum "
            "negative everywhere there, and the ReLU removes it (relu=false keeps the sign).",
            "Channels that only matter together each show a small drop.",
        ),
        cannot_show=("Interactions between channels.", "Detail finer than the layer's grid."),
    ),
    "guided_gradcam": Guide(
        answers="Guided backpropagation's detail, kept only where Grad-CAM is non-zero.",
        positive="positive guided gradient inside Grad-CAM's regions",
        negative="negative guided gradient inside them",
        failure_modes=(
            "It inherits both parents' failures: all zero in the ground-truth test (guided "
            "backpropagation is zero outside the box, Grad-CAM inside).",
        ),
        cannot_show=("Anything where Grad-CAM is zero.",),
    ),
    "internal_influence": Guide(
        answers="How sensitive is the score, integrated along the path from the baseline, to "
        "each position of a layer?",
        positive="the score rises with the layer's activity here",
        negative="it falls",
        failure_modes=(_ground_truth("internal_influence", "a nearly uniform map."),),
        cannot_show=("A contribution: a path-integrated rate, not a share of the score.",),
    ),
    "layer_activation": Guide(
        answers="What does a layer compute on this image? Its output itself, independent of the "
        "target.",
        positive="the layer's channels (reduced) are positive here",
        negative="they are negative here",
        failure_modes=(
            _ground_truth("layer_activation", "the activations follow the image, not the score."),
        ),
        cannot_show=("Anything about the target: it is not an explanation of the score.",),
    ),
    "layer_gradient_x_activation": Guide(
        answers="To first order, how much does each position of a layer contribute to the score "
        "(activation times the score's gradient there)?",
        positive="the layer's activity here raises the score",
        negative="it lowers the score",
        failure_modes=(
            _ground_truth(
                "layer_gradient_x_activation", "bias-driven activity outside the box counts."
            ),
        ),
        cannot_show=("Effects beyond first order.",),
    ),
    "layer_conductance": Guide(
        answers="How does the score's change from the baseline flow through each position of a "
        "layer? Over the layer it sums to that change.",
        positive="the change flowing through here raised the score",
        negative="it lowered the score",
        failure_modes=(
            _ground_truth("layer_conductance", "units in the box's rim and biases share it."),
        ),
        cannot_show=(_INTERACTIONS,),
    ),
    "layer_deeplift": Guide(
        answers="DeepLIFT's contributions at a layer: how much of the score's difference from "
        "the baseline each position of the layer accounts for.",
        positive=_CONTRIBUTION.replace("voxel", "position"),
        negative=_AGAINST.replace("voxel", "position"),
        failure_modes=(
            _ground_truth("layer_deeplift", "units in the box's rim and biases share it."),
        ),
        cannot_show=(_INTERACTIONS, "Models it cannot see inside (TorchScript: refused)."),
    ),
    "layer_gradient_shap": Guide(
        answers="Expected layer gradients times the layer's change from random baselines: "
        "approximate SHAP values of a layer's positions.",
        positive="raised the score relative to the baselines, on average",
        negative="lowered it",
        failure_modes=(
            _ground_truth("layer_gradient_shap", "units in the box's rim and biases share it."),
            "Sampling noise; raise n_samples.",
        ),
        cannot_show=(_INTERACTIONS,),
    ),
    "occlusion": Guide(
        answers="How much does the score drop when a box around the voxel is replaced by the "
        "baseline (averaged over the boxes that cover the voxel)?",
        positive="covering this region lowers the score: it supports the score",
        negative="covering it raises the score: it argues against",
        failure_modes=(
            "The window sets what it sees: a box smaller than a redundant structure shows little "
            "(the rest still supports the score), a larger one mixes neighbours; blocky at the "
            "stride.",
            "On the demo it stays similar after the model's weights are randomised (0.63).",
            "Costly: one forward pass per box (the run estimates it first).",
        ),
        cannot_show=("Regions that matter only together: one box is removed at a time.",),
    ),
    "occlusion_adaptive": Guide(
        answers="As occlusion, approximately: every box's drop estimated from the gradient along "
        "the path that occludes it, and the boxes with the largest estimates occluded exactly "
        "(first_pass=coarse: coarse boxes first, finer ones only inside those that hold the top "
        "share of the drop).",
        positive="covering this region lowers the score: it supports the score",
        negative="covering it raises the score: it argues against",
        failure_modes=(
            "Boxes that were not re-measured hold an estimate: the path integral of the "
            "gradient, with the boxes of a group (separation windows apart) occluded together; "
            "it errs where boxes interact or the score saturates along the path (at 128^3, "
            "window 8: Spearman 0.94 with exhaustive occlusion on the demo network, 0.99 on a "
            "random-weight UNet; docs/adaptive-occlusion.md). A model without gradients "
            "estimates nothing: the run says so; use first_pass=coarse.",
            "first_pass=coarse: boxes that are not refined spread their drop over their whole "
            "coarse box, and where the drop is spread over the volume the fine ranks disagree "
            "with exhaustive occlusion (same volume: Spearman 0.36 and 0.42); run.json says "
            "when the refinement cap bound.",
        ),
        cannot_show=(
            "Fine detail of boxes that were not re-measured beyond their estimate.",
            "Regions that matter only together: one box is removed at a time.",
        ),
    ),
    "feature_ablation": Guide(
        answers="How much does the score drop when the voxel's feature (a grid block, a "
        "supervoxel or a label) is replaced by the baseline, one feature at a time?",
        positive="removing this feature lowers the score: it supports the score",
        negative="removing it raises the score",
        failure_modes=(
            "Features coarser than the structures blur them together; finer ones show little "
            "when the rest is redundant.",
            "On the demo it stays similar after the model's weights are randomised (0.90).",
        ),
        cannot_show=("Features that matter only together: one is removed at a time.",),
    ),
    "shapley_value_sampling": Guide(
        answers="What is each feature's average marginal contribution over random orders of "
        "adding features to the baseline (Shapley values, which sum to the score difference)?",
        positive="the feature raises the score, averaged over coalitions",
        negative="it lowers the score",
        failure_modes=(
            "Sampling noise from the random orders; cost grows with samples x features.",
        ),
        cannot_show=("Detail within a feature.",),
    ),
    "kernel_shap": Guide(
        answers="Shapley values of the features, estimated by a weighted linear fit on random "
        "coalitions; they sum to the score difference to the baseline.",
        positive="the feature raises the score",
        negative="it lowers the score",
        failure_modes=(
            _ground_truth(
                "kernel_shap",
                "with 512 coalitions; the linear model's misfit leaks as noise onto features "
                "the model never sees, and shrinks with more samples.",
            ),
        ),
        cannot_show=("Detail within a feature.",),
    ),
    "lime": Guide(
        answers="What are the weights of a linear model of the score on feature presence, "
        "fitted on random coalitions near the image?",
        positive="the feature's presence raises the score in the local linear model",
        negative="it lowers the score in that model",
        failure_modes=(
            _ground_truth(
                "lime",
                "with 512 samples; the linear model's misfit leaks as noise, depending on "
                "kernel_width and n_samples.",
            ),
        ),
        cannot_show=("A decomposition of the score: the weights need not sum to it.",),
    ),
    "rise": Guide(
        answers="Which voxels are, on average, visible in the random smooth masks that keep the "
        "score high?",
        positive="the score is higher when this voxel is visible",
        negative="it is lower when this voxel is visible (subtract_mean=true)",
        failure_modes=(
            _ground_truth(
                "rise",
                "with 512 masks; smooth masks correlate a region with its surroundings.",
            ),
            "The noise falls slowly with n_masks.",
        ),
        cannot_show=("Sharp boundaries.",),
    ),
}


def guide(name: str) -> Guide:
    """The guide of the method registered under ``name``."""
    return GUIDES[name]
