"""The artefact measurements of benchmarks/artefacts.py (docs/artefacts.md): the stripe index and
the odd/even ratio measure what they say, a strided 3^3 convolution makes the period-2 pattern
our gradient and LRP report (a known answer, not a bug), and on the demo the stripes follow the
network's grid, not the anatomy (slow)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from TorchEsegetaLib.engine.context import Context
from TorchEsegetaLib.methods import create_method
from TorchEsegetaLib.targets.bound import BoundTarget

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "artefacts.py"


@pytest.fixture(scope="module")
def artefacts():
    spec = importlib.util.spec_from_file_location("artefacts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["artefacts"] = module
    spec.loader.exec_module(module)
    return module


def test_the_stripe_index_finds_period_2_stripes_along_their_axis_only(artefacts):
    everywhere = np.ones((8, 8, 8), bool)
    j = np.indices((8, 8, 8))[1]
    stripes = np.where(j % 2 == 0, 1.0, -0.5) + np.random.default_rng(0).normal(0, 0.01, (8, 8, 8))
    index = artefacts.stripe_index(stripes, everywhere)
    assert index[1] > 0.99 and abs(index[0]) < 0.05 and abs(index[2]) < 0.05
    assert artefacts.stripe_index(-stripes, everywhere)[1] < -0.99  # the phase is the sign
    assert artefacts.stripe_index(np.ones((8, 8, 8)), everywhere) == [0.0, 0.0, 0.0]
    assert artefacts.odd_even_ratio(np.where(j % 2 == 1, 3.0, 1.0), everywhere)[1] == 3.0


class StridedConvolution(torch.nn.Module):
    """One 3^3 convolution of stride 2 with equal positive weights (2 classes, no bias): the
    first layer of MONAI's UNet, without what is learnt."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, stride=2, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(0.1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("method", ["saliency", "lrp"])
def test_a_strided_3x3x3_convolution_weighs_a_voxel_by_how_many_outputs_see_it(method):
    """An interior voxel with n odd indices is seen by 2^n outputs of the convolution (an odd
    index lies between two windows, an even one at a window's centre): on a uniform image its
    gradient and its LRP relevance are proportional to 2^n, a period-2 checkerboard that comes
    from the layer alone."""
    x = torch.ones((1, 1, 16, 16, 16))
    target = BoundTarget(1, torch.ones((8, 8, 8), dtype=torch.bool), "logits", "softmax", "sum")
    params = {"abs": False} if method == "saliency" else {"composite": "epsilon"}
    values = create_method(method, params).attribute(StridedConvolution(), x, target, Context())
    interior = values[0, 0, 1:15, 1:15, 1:15].numpy()  # the last index sees one window only
    odd = (np.indices(interior.shape) + 1) % 2  # index 1 of the full grid is odd
    count = 2.0 ** odd.sum(axis=0)
    np.testing.assert_allclose(interior / interior[odd.sum(axis=0) == 0].mean(), count, rtol=1e-5)


@pytest.mark.slow
def test_on_the_demo_the_stripes_follow_the_networks_grid_not_the_anatomy(artefacts):
    result = artefacts.main(["--quick"])
    assert result["deeplift"][1] > 0.2  # stripes along j inside the vessels
    (shift,) = result["shifts"]  # the image moved one voxel along j
    grid, anatomy = shift["grid"][1], shift["anatomy"][1]
    assert grid > 0.2 and anatomy < -0.2  # same phase on the network's grid, flipped on the anatomy
