"""The layer probe: the score model with one layer's feature maps captured.

Every layer method reads a layer through a :class:`LayerProbe`: its output and the score's
gradient with respect to it, in one pass, per path point, or (models whose pass runs the network
several times: sliding windows, nnU-Net's windows, flips and folds) one batch of network inputs
at a time, and back to the input grid, blended per window like the predictions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from ..errors import UserInputError

if TYPE_CHECKING:
    import torch

    from .base import ScoreModel


class LayerProbe:
    """The score model with one layer's output captured: the core every layer method shares.

    Attributes:
        score: the function explained, ``inputs -> (B,)`` scores.
        network: the network (the module whose input grid maps are upsampled to).
        layers, name: the captured module and its name, one module per network the model
            calls (nnU-Net: the layer of that name in each fold); ``layer`` is the first.
        grid: spatial shape of the network's input in the last pass (the padded input grid,
            or one window).
        windows: feature maps per example in the last pass: 1, or the number of network
            inputs (windows, flips, folds) run. Layer outputs and maps then hold ``windows``
            rows per example, example-major (:meth:`per_point` separates them).
    """

    def __init__(
        self,
        score: ScoreModel,
        network: torch.nn.Module,
        layer: torch.nn.Module | Sequence[torch.nn.Module],
        name: str,
    ) -> None:
        import torch

        self.score = score
        self.network = network
        self.layers = [layer] if isinstance(layer, torch.nn.Module) else list(layer)
        self.layer = self.layers[0]
        self.name = name
        self.grid: tuple[int, ...] | None = None
        self.windows = 1
        self.calls = 0

    @contextlib.contextmanager
    def capture(self, layer: bool = True) -> Iterator[list[Any]]:
        """Within the block, the layer's outputs are appended to the yielded list (when
        ``layer``) and :attr:`grid` is recorded; the hooks are removed on exit, whatever happens."""

        def keep(_module: Any, _inputs: Any, output: Any) -> Any:
            outputs.append(output)
            # The network goes on with a copy, so that a later in-place operation (a
            # ReLU(inplace=True)) cannot overwrite the captured map.
            return output.clone() if hasattr(output, "clone") else None

        def record_grid(_module: Any, args: tuple) -> None:
            self.calls += 1
            if args and hasattr(args[0], "shape"):
                self.grid = tuple(args[0].shape[2:])

        outputs: list[Any] = []
        self.calls = 0
        networks = getattr(self.network, "layer_networks", None) or [self.network]
        handles = [network.register_forward_pre_hook(record_grid) for network in networks]
        try:
            if layer:
                handles += [module.register_forward_hook(keep) for module in self.layers]
            yield outputs
        finally:
            for handle in handles:
                handle.remove()

    def run(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Scores (B,) and the layer's outputs, one per network call (attached to the graph
        when grad is on); :attr:`windows` tells how many feature maps each example has."""
        with self.capture() as outputs:
            scores = self.score(inputs)
        return scores, self.feature_maps(outputs, inputs)

    @property
    def windowed(self) -> bool:
        """Whether the forward runs the network on several inputs per example (maps are
        blended per network input as the predictions are)."""
        return bool(getattr(self.score.forward, "windowed", False))

    def feature_maps(
        self, outputs: list[Any], inputs: torch.Tensor, calls: int | None = None
    ) -> list[torch.Tensor]:
        """The layer's outputs of one pass of ``calls`` network calls (default: the last
        capture's), checked: one per call, each a feature map. Sets :attr:`windows`."""
        import torch

        calls = self.calls if calls is None else calls
        per_call = len(outputs) == calls and self.windowed
        if len(outputs) != 1 and not per_call:
            raise UserInputError(
                f"layer {self.name!r} ran {len(outputs)} times in {calls} network "
                "call(s); a layer map needs one feature map per network input (this module is "
                "reused by the network): choose another layer"
            )
        for output in outputs:
            if not isinstance(output, torch.Tensor) or output.dim() != inputs.dim():
                shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output)
                raise UserInputError(
                    f"layer {self.name!r} outputs {shape}, not a feature map (batch, channels, "
                    "*spatial); choose a convolution, normalisation or activation layer"
                )
        rows = sum(int(output.shape[0]) for output in outputs)
        self.windows = rows // inputs.shape[0] if self.windowed else 1
        return outputs

    def points(
        self, inputs: Sequence[torch.Tensor], gradients: Sequence[bool]
    ) -> Iterator[list[tuple[torch.Tensor, torch.Tensor | None]]]:
        """Per example of ``inputs`` (tensors of one shape, run together), for each of them
        the layer's output (windows, K, *s) and, where ``gradients`` says so, the score's
        gradient with respect to it.

        On a model with several network inputs per example, one example's network inputs at a
        time, each batch on its own graph (:meth:`SegmentationForward.layer_windows`): memory
        holds one example's layer maps, never a whole pass's graph. Otherwise each input runs
        in one batched pass.
        """
        import torch

        forward: Any = self.score.forward  # a SegmentationForward on windowed models
        if self.windowed and forward.windows_per_pass(inputs[0].shape[2:]) > 1:
            self.windows = forward.windows_per_pass(inputs[0].shape[2:])
            parts: list[list[tuple[torch.Tensor, torch.Tensor | None]]] = []
            for _rows, maps in forward.layer_windows(
                inputs, self.score.target, self.layers, gradients
            ):
                parts.append(maps)
                if sum(len(part[0][0]) for part in parts) == self.windows:
                    yield [
                        (
                            torch.cat([part[i][0] for part in parts]),
                            torch.cat([cast(torch.Tensor, part[i][1]) for part in parts])
                            if wanted
                            else None,
                        )
                        for i, wanted in enumerate(gradients)
                    ]
                    parts = []
            return
        yield from self.points_in_one_graph(inputs, gradients)

    def points_in_one_graph(
        self, inputs: Sequence[torch.Tensor], gradients: Sequence[bool]
    ) -> Iterator[list[tuple[torch.Tensor, torch.Tensor | None]]]:
        """:meth:`points` with each input's whole pass (all its windows) in one graph."""
        per_input: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for x, wanted in zip(inputs, gradients):
            if wanted:
                _, activation, grads = self.gradients(x)
                per_input.append((self.per_point(activation), self.per_point(grads)))
            else:
                per_input.append((self.per_point(self.activations(x)), None))
        for example in range(inputs[0].shape[0]):
            yield [(a[example], None if g is None else g[example]) for a, g in per_input]

    def per_point(self, tensor: torch.Tensor) -> torch.Tensor:
        """(B * windows, ...) -> (B, windows, ...): the inputs' rows apart from their windows."""
        return tensor.reshape(-1, self.windows, *tensor.shape[1:])

    def activations(self, inputs: torch.Tensor) -> torch.Tensor:
        """The layer's output (B * windows, K, *s)."""
        import torch

        with torch.no_grad():
            return torch.cat(self.run(inputs)[1])

    def gradients(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores (B,), the layer's output (B * windows, K, *s) and the gradient of each score
        with respect to it."""
        import torch

        with torch.enable_grad():
            scores, outputs = self.run(inputs.detach().requires_grad_(True))
            grads = torch.autograd.grad(scores.sum(), outputs, allow_unused=True)
        if all(g is None for g in grads):
            raise UserInputError(
                f"the target score does not depend on layer {self.name!r}; choose a layer on "
                "the path from the input to the segmentation output"
            )
        # a window that does not reach the target gets no gradient: zero
        filled = [torch.zeros_like(o) if g is None else g for o, g in zip(outputs, grads)]
        return scores.detach(), torch.cat(outputs).detach(), torch.cat(filled)

    def to_input_grid(self, layer_map: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """(B * windows, 1, *s) on the layer's grid -> (B, 1, *input spatial shape).

        Upsampled as captum's ``LayerAttribution.interpolate`` (align_corners=False) onto the
        grid the network saw, then the margin the forward pass padded symmetrically (MONAI's
        DivisiblePad) is cropped off, so map and input stay aligned. Per-window maps of a
        windowed model are upsampled to their window and brought back as the model brings its
        predictions back (:meth:`SegmentationForward.blend_windows`).
        """
        import torch.nn.functional as F

        spatial = tuple(shape[2:])
        mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[layer_map.dim()]
        if self.windowed:
            forward: Any = self.score.forward
            return forward.blend_windows(layer_map, spatial)
        grid = (
            self.grid
            if self.grid and min(g - n for g, n in zip(self.grid, spatial)) >= 0
            else spatial
        )
        up = F.interpolate(layer_map, size=grid, mode=mode, align_corners=False)
        crop = tuple(slice((g - n) // 2, (g - n) // 2 + n) for g, n in zip(grid, spatial))
        index = (slice(None), slice(None), *crop)
        return up[index]
