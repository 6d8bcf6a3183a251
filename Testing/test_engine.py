"""The engine's batching: every item exactly once and in order, batches tuned for speed unless
fixed, the tuned size shared with quiet copies, sizes bounded by the measured memory."""

from __future__ import annotations

import time

import pytest
import torch

from TorchEsegetaLib.engine.context import CancelToken, Context, measure_sample_bytes
from TorchEsegetaLib.errors import BudgetExceededError, CancelledError


def run(context, total, seconds_per_batch):
    seen, sizes = [], []

    def compute(start, stop):
        time.sleep(seconds_per_batch(stop - start))
        seen.extend(range(start, stop))
        sizes.append(stop - start)

    context.map_batches(total, compute)
    return seen, sizes


def test_batches_tune_down_to_the_fastest_size_per_sample():
    # 4 samples: 40 ms (10/sample); 2: 8 ms (4/sample, best); 1: 6 ms (6/sample).
    cost = {4: 0.040, 2: 0.008, 1: 0.006}
    context = Context(device="cpu")
    seen, sizes = run(context, 30, lambda n: cost.get(n, 0.004 * n))
    assert seen == list(range(30))
    # The first batch only warms up; then 4, 2 and 1 are timed and 2 is kept.
    assert sizes[:4] == [4, 4, 2, 1] and set(sizes[4:-1]) == {2}
    assert context.tuned["backward"] == 2
    # A quiet copy (a method inside another) starts from the tuned size; forward-only work
    # tunes its own.
    assert context.quiet().batch_limit() == 2 and context.quiet().tuned is context.tuned
    assert context.batch_limit("forward") == 4


def test_a_fixed_batch_is_never_tuned():
    context = Context(device="cpu", max_batch=3)
    seen, sizes = run(context, 10, lambda n: 0.001)
    assert seen == list(range(10)) and sizes == [3, 3, 3, 1] and context.tuned == {}


def test_batch_size_follows_the_measured_memory_per_sample():
    huge = Context(device="cpu", sample_bytes=1e15)
    assert huge.batch_limit() == 1
    assert Context(device="cpu", sample_bytes=1.0).batch_limit() == 4


def test_measured_sample_memory_grows_with_the_input():
    from helpers import centre_box_target, tiny_unet

    from TorchEsegetaLib.methods import ScoreModel

    class Forward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = tiny_unet()

        def forward(self, x):
            return self.network(x)

    small = measure_sample_bytes(
        ScoreModel(Forward(), centre_box_target(16)), torch.rand(1, 1, 16, 16, 16)
    )
    large = measure_sample_bytes(
        ScoreModel(Forward(), centre_box_target(32)), torch.rand(1, 1, 32, 32, 32)
    )
    assert small > 16**3 * 4 and 6 < large / small < 10


def test_sample_memory_of_a_torchscript_model_is_measured_without_module_hooks():
    from helpers import centre_box_target, tiny_unet

    from TorchEsegetaLib.methods import ScoreModel
    from TorchEsegetaLib.models.card import ModelCard
    from TorchEsegetaLib.models.inference import SegmentationForward

    eager = tiny_unet()
    scripted = torch.jit.script(eager)

    def measured(network, size):
        forward = SegmentationForward(network, ModelCard())
        return measure_sample_bytes(
            ScoreModel(forward, centre_box_target(size)), torch.rand(1, 1, size, size, size)
        )

    small, large = measured(scripted, 16), measured(scripted, 32)
    # what autograd saves grows with the volume, and stays within the eager (hooked) estimate
    assert small > 16**3 * 4 and 6 < large / small < 10
    assert 0.3 < small / measured(eager, 16) <= 1.0


def test_cancel_and_budget_stop_between_batches():
    token = CancelToken()
    calls = []

    def compute(start, stop):
        calls.append(start)
        token.cancel()

    with pytest.raises(CancelledError):
        Context(max_batch=1, cancel=token).map_batches(5, compute)
    assert calls == [0]
    with pytest.raises(BudgetExceededError):
        Context(max_batch=1, budget_s=0.01).map_batches(100, lambda a, b: time.sleep(0.005))
