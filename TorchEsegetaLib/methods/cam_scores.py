"""Class activation maps weighted by the scores of perturbed passes: Score-CAM and Ablation-CAM.

No gradients: each channel k of the layer is weighted by what the target score does when the
network input is masked by that channel (Score-CAM) or when the channel is switched off
(Ablation-CAM), then the map is relu(sum_k w_k A_k) on the layer's grid, brought back to the
input grid like every layer map.

On windowed models (MONAI's sliding windows; nnU-Net's windows, mirror combinations and folds)
this happens per network input, in its own frame: the masked or ablated network input replaces
that one input of the pass, and the score is the target score of the whole pass with that one
output replaced (:meth:`~TorchEsegetaLib.models.windowed.WindowedPass.scores_replacing`: the
other windows' outputs are kept, nothing else runs again). A whole-volume model is the case of
one network input per example. The masked or ablated inputs run in batches sized by the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import UserInputError
from .base import Param, Passes, register
from .cam import RELU, divided_or_zero
from .layer import LAYER, LayerMethod, trace_layers

if TYPE_CHECKING:
    import torch

    from ..models.windowed import WindowedPass


class _ScoreWeightedCAM(LayerMethod):
    """relu(sum_k w_k A_k) with weights from the target scores of K perturbed network inputs."""

    signed = False
    page_group = "cam"
    needs_gradients = False
    params: ClassVar[tuple[Param, ...]] = (LAYER, RELU)
    #: channels of the layer, learnt by :meth:`preflight` (the cost grows with them)
    layer_channels: int | None = None

    def __init__(self, **values):
        super().__init__(**values)
        self.signed = not self.config["relu"]

    def preflight(self, forward, inputs, target):
        super().preflight(forward, inputs, target)
        traced = trace_layers(forward, inputs)
        name = self.layer_name(forward, inputs, traced)
        self.layer_channels = next((t["channels"] for t in traced if t["name"] == name), None)
        if self.layer_channels is None:
            raise UserInputError(
                f"{self.name}: layer {name!r} outputs no feature map (batch, channels, *spatial) "
                "on this input; choose a convolution, normalisation or activation layer"
            )

    def layer_passes(self, shape):
        # the pass's score, the layer's activations, then one pass per channel
        if self.layer_channels is None:
            raise ValueError(f"{self.name}: the layer's channels are known after preflight()")
        return Passes(forward=self.layer_channels + 2)

    def cheaper(self):
        return [f"a layer with fewer channels ({self.name}.layer; `torchesegeta layers`)"]

    def weights(self, scores: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """(K,) channel weights from the scores of the K perturbed passes and the pass's own."""
        raise NotImplementedError

    def perturbed_outputs(
        self,
        network: Any,
        inputs: torch.Tensor,
        activation: torch.Tensor,
        channels: range,
        layers: list[torch.nn.Module],
    ) -> torch.Tensor:
        """The network's outputs (len(channels), K', *window) for one network input (1, C,
        *window) perturbed by each of ``channels`` of its layer ``activation`` (1, K, *s)."""
        raise NotImplementedError

    def attribute(self, forward, inputs, target, context):
        import torch

        from ..models.windowed import layer_outputs, windowed_pass

        probe = self.probe(forward, inputs, target)
        out = torch.empty(
            (inputs.shape[0], 1, *inputs.shape[2:]), dtype=inputs.dtype, device=inputs.device
        )
        quiet = context.quiet()
        for example in range(inputs.shape[0]):
            passes = windowed_pass(forward, inputs[example : example + 1], target)
            score = passes.scores()[0]
            done, total = 0, passes.rows_per_example
            for rows in passes.row_batches(progress=None):
                activation, _, outputs = layer_outputs(passes, rows, probe.layers, False)
                data = passes.inputs(rows)
                maps = []
                for index in range(len(rows)):
                    context.check()
                    scores = self.channel_scores(
                        passes, rows, index, data, activation, outputs, probe, quiet
                    )
                    weights = self.weights(scores, score).to(activation.dtype)
                    layer_map = weights[None, :, None] * activation[index : index + 1].flatten(2)
                    maps.append(layer_map.sum(1).reshape(1, 1, *activation.shape[2:]))
                    done += 1
                    context.report(
                        (example + done / total) / inputs.shape[0],
                        f"{self.name} example {example + 1}/{inputs.shape[0]}: "
                        f"network input {done}/{total}",
                    )
                cams = torch.cat(maps)
                passes.add_maps(rows, torch.relu(cams) if self.config["relu"] else cams)
            out[example : example + 1] = passes.maps().to(out.device, out.dtype)
        return out.expand(inputs.shape).contiguous()

    def channel_scores(
        self,
        passes: WindowedPass,
        rows: list[Any],
        index: int,
        data: torch.Tensor,
        activation: torch.Tensor,
        outputs: torch.Tensor,
        probe: Any,
        context: Any,
    ) -> torch.Tensor:
        """The pass's score with network input ``rows[index]`` perturbed by each channel, (K,)."""
        import torch

        channels = activation.shape[1]
        scores = torch.empty(channels, dtype=torch.float64, device=activation.device)
        network = passes.network(rows)
        one = data[index : index + 1]
        base = outputs[index : index + 1]

        def run(start: int, stop: int) -> None:
            with torch.no_grad():
                perturbed = self.perturbed_outputs(
                    network, one, activation[index : index + 1], range(start, stop), probe.layers
                )
                scores[start:stop] = passes.scores_replacing(rows, index, perturbed, base).double()

        context.map_batches(channels, run, self.name, kind="forward")
        return scores


@register
class ScoreCAM(_ScoreWeightedCAM):
    """Score-CAM in 3D: each channel's activation, upsampled to the network input (trilinear,
    align_corners=False) and min-max scaled to [0, 1] over that input, masks the network
    input; the channel's weight is the softmax over the channels of the target scores of the
    masked inputs (Algorithm 1 of the paper, as pytorch-grad-cam's ScoreCAM; a baseline score
    subtracted from every channel would cancel in the softmax). A channel that is constant over
    the input masks it to zero. The input masked is the network's (after intensity
    preprocessing, padding, and on windowed models the window in its own frame), as the
    network saw it."""

    name = "scorecam"
    title = "Score-CAM"
    summary = "Channels weighted by the softmax of the target scores of the network input masked by each channel's upsampled activation."
    quantity = "score-weighted layer activation"
    cost = "channels + 2 forward"
    reference = "Wang et al. 2020, arXiv:1910.01279"

    def weights(self, scores, score):
        import torch

        return torch.softmax(scores, dim=0)

    def perturbed_outputs(self, network, inputs, activation, channels, layers):
        from ..models.windowed import upsampled

        up = upsampled(activation[:, channels.start : channels.stop], inputs.shape[2:])
        flat = up.flatten(2)
        low = flat.amin(dim=2).reshape(*up.shape[:2], *[1] * (up.dim() - 2))
        spread = flat.amax(dim=2).reshape(low.shape) - low
        masks = divided_or_zero(up - low, spread)  # spread >= 0: a constant channel masks to 0
        masked = inputs * masks.transpose(0, 1)  # (channels, C, *window)
        return network(masked)


@register
class AblationCAM(_ScoreWeightedCAM):
    """Ablation-CAM: each channel's weight is the drop of the target score when that channel of
    the layer is set to zero, relative to the score: w_k = (S - S_k) / |S|. (The paper divides
    by S, assuming a positive class score; with a mean logit, which can be negative, that would
    flip every weight, so the magnitude is used; equal to the paper's and pytorch-grad-cam's
    for a positive score.) A zero score leaves the drops unscaled."""

    name = "ablationcam"
    title = "Ablation-CAM"
    summary = "Channels weighted by the relative drop of the target score when each channel of the layer is set to zero."
    quantity = "ablation-weighted layer activation"
    cost = "channels + 2 forward"
    reference = "Desai & Ramaswamy 2020, WACV (doi:10.1109/WACV45572.2020.9093360)"

    def weights(self, scores, score):
        magnitude = abs(float(score)) or 1.0
        return (float(score) - scores) / magnitude

    def perturbed_outputs(self, network, inputs, activation, channels, layers):
        import torch

        count = len(channels)

        def ablate(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[torch.arange(count), torch.tensor(list(channels))] = 0
            return output

        handles = [layer.register_forward_hook(ablate) for layer in layers]
        try:
            return network(inputs.expand(count, *inputs.shape[1:]))
        finally:
            for handle in handles:
                handle.remove()
