"""Denormal floats: flushed to zero during our own passes only (every thread of torch's pool,
backward passes included), counted in the weights, and checked against exact arithmetic on the
first pass, which keeps exact arithmetic where flushing would change the labelmap."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY_UNET_KWARGS, LinearVoxelModel, centre_box_target, tiny_unet

from TorchEsegetaLib import explain
from TorchEsegetaLib.cli import main
from TorchEsegetaLib.engine.denormals import (
    DenormalFlush,
    count_denormals,
    denormal_mask,
    flushing_denormals,
)
from TorchEsegetaLib.io.images import write_volume
from TorchEsegetaLib.io.volume import Geometry, Volume
from TorchEsegetaLib.methods import ScoreModel
from TorchEsegetaLib.models.card import ModelCard
from TorchEsegetaLib.models.inference import segment
from TorchEsegetaLib.models.loading import LoadedModel
from TorchEsegetaLib.runs.cost import PassTimes, measure_pass_times

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


@pytest.fixture
def two_threads():
    """torch's intra-op pool with two threads (the suite runs with one): each elementwise
    operation below is split between the calling thread and one OpenMP worker."""
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)


def denormals_from_bits(count: int = 4 * 32768) -> torch.Tensor:
    """A tensor of denormals made from bits (a value converted on a flushing thread is zero)."""
    return torch.full((count,), 0x00200000, dtype=torch.int32).view(torch.float32)


def unflushed_share() -> float:
    """Share of a two-thread multiplication of denormals that stays denormal: 0 when every
    thread flushes, 1 when none does."""
    return float(denormal_mask(denormals_from_bits() * 1.0).float().mean())


def with_denormal_weights(network: torch.nn.Module, share: float = 0.4) -> int:
    """Push the smallest ``share`` of each weight tensor into the denormal range (as long weight
    decay leaves them); returns how many values are denormal."""
    pushed = 0
    with torch.no_grad():
        for parameter in network.parameters():
            flat = parameter.view(-1)
            smallest = flat.abs().argsort()[: int(share * flat.numel())]
            flat[smallest] = flat[smallest].sign() * SMALLEST_NORMAL * 0.25
            pushed += len(smallest)
    return pushed


class AmplifiesDenormals(torch.nn.Module):
    """Two classes; class 1 where the input times a denormal weight, scaled up by 1e38, exceeds
    0.05: exactly where the input exceeds 0.5, and nowhere once the weight is flushed to zero."""

    def __init__(self) -> None:
        super().__init__()
        self.tiny = torch.nn.Parameter(torch.tensor(1e-39))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        foreground = 100.0 * ((x * self.tiny) * 1e38 - 0.05)
        return torch.cat([torch.zeros_like(foreground), foreground], dim=1)


class FlushRecorder(torch.nn.Module):
    """A network that notes, at each call, whether the calling thread and torch's pool flush."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.calls: list[tuple[bool, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((flushing_denormals(), unflushed_share()))
        return self.network(x)


def image(size: int = 16) -> Volume:
    values = np.random.default_rng(0).random((1, size, size, size)).astype(np.float32)
    return Volume(values, Geometry((size, size, size)))


def tiny_model(network: torch.nn.Module) -> LoadedModel:
    return LoadedModel(network, ModelCard(in_channels=1, out_channels=2), {"kind": "test"}, None)


# --- the scope -------------------------------------------------------------------------------


def test_torch_alone_flushes_only_the_calling_thread_and_the_scope_reaches_the_pool(two_threads):
    assert not flushing_denormals() and unflushed_share() == 1.0
    torch.set_flush_denormal(True)
    try:  # why the scope exists: the worker thread's half stays denormal
        assert flushing_denormals() and 0.0 < unflushed_share() < 1.0
    finally:
        torch.set_flush_denormal(False)
    flush = DenormalFlush(True, "cpu")
    with flush.scope():
        assert flushing_denormals() and unflushed_share() == 0.0
        assert flush.coverage == {"threads": 2, "unflushed_share": 0.0}
        with flush.exact():
            assert not flushing_denormals() and unflushed_share() == 1.0
        assert unflushed_share() == 0.0
    assert not flushing_denormals() and unflushed_share() == 1.0


def test_every_thread_gets_its_own_setting_back_after_an_exception_too(two_threads):
    torch.set_flush_denormal(True)  # a console that flushed its own thread only
    try:
        before = unflushed_share()
        with pytest.raises(ValueError), DenormalFlush(True, "cpu").scope():
            assert unflushed_share() == 0.0
            raise ValueError("a failing pass")
        assert flushing_denormals() and unflushed_share() == before
    finally:
        torch.set_flush_denormal(False)
    with pytest.raises(ValueError), DenormalFlush(True, "cpu").scope():
        raise ValueError("a failing pass")
    assert not flushing_denormals() and unflushed_share() == 1.0


def test_backward_passes_run_under_the_scope(two_threads):
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            seen.append(flushing_denormals())
            return grad

    x = torch.ones(4 * 32768, requires_grad=True)
    with DenormalFlush(True, "cpu").scope():
        (Probe.apply(x) * denormals_from_bits()).sum().backward()
    assert seen == [True]
    assert x.grad is not None and not x.grad.any(), "the pool's denormal gradients are flushed"
    x.grad = None
    (x * denormals_from_bits()).sum().backward()
    assert x.grad is not None and bool(denormal_mask(x.grad).all())


def test_nothing_changes_on_cuda_or_when_switched_off():
    for flush in (DenormalFlush(True, "cuda"), DenormalFlush(False, "cpu")):
        with flush.scope():
            assert not flushing_denormals()
        assert not flush.active and flush.record()["flush"] is False


def test_denormals_are_counted_from_their_bits_whatever_the_thread_does():
    values = torch.tensor([1e-39, 1.0, 0.0, -1e-40, SMALLEST_NORMAL, -SMALLEST_NORMAL / 2])
    assert count_denormals([values]) == (3, 6)
    assert count_denormals([values.double(), values.bfloat16(), torch.arange(3)]) == (3, 12)
    with DenormalFlush(True, "cpu").scope():
        assert count_denormals([values, values]) == (3, 6), "one tensor counted once"


def test_the_cost_estimate_is_timed_under_the_runs_arithmetic():
    recorder = FlushRecorder(LinearVoxelModel())
    score, x = ScoreModel(recorder, centre_box_target(size=4)), torch.rand(1, 1, 4, 4, 4)
    measure_pass_times(score, x, PassTimes(), {"forward": 1})
    measure_pass_times(score, x, PassTimes(), {"backward": 1}, DenormalFlush(True, "cpu"))
    assert [flushing for flushing, _ in recorder.calls] == [False, True]
    assert not flushing_denormals()


# --- the model and the first pass --------------------------------------------------------------


def test_the_share_of_denormal_weights_and_buffers_is_counted():
    network = tiny_unet()
    pushed = with_denormal_weights(network)
    network.register_buffer("scale", torch.tensor([1e-39, 1e-40, 1.0]))
    counted = tiny_model(network).record()["denormal_weights"]
    values = sum(p.numel() for p in network.parameters()) + 3
    assert counted == {
        "count": pushed + 2,
        "values": values,
        "share": round((pushed + 2) / values, 6),
    }


def test_a_network_that_amplifies_denormals_is_caught_and_segmented_exactly():
    model = tiny_model(AmplifiesDenormals())
    volume = image()
    flush = DenormalFlush(True, "cpu")
    checked = segment(model, volume, flush_denormals=flush)
    exact = segment(model, volume, flush_denormals=False)
    assert 0 < exact.labelmap.sum() < exact.labelmap.size
    np.testing.assert_array_equal(checked.labelmap, exact.labelmap)
    assert flush.check is not None and not flush.check["labelmaps_equal"]
    assert flush.check["changed_voxels"] == int(exact.labelmap.sum())
    assert flush.check["max_probability_difference"] > 0.5
    assert not flush.active and "keeps exact arithmetic" in flush.warnings()[0]
    with flush.scope():  # the rest of the run: exact
        assert not flushing_denormals()


def test_a_large_input_is_checked_on_a_central_box():
    recorder = FlushRecorder(tiny_unet())
    flush = DenormalFlush(True, "cpu")
    segment(tiny_model(recorder), image(size=72), flush_denormals=flush)
    assert flush.check is not None
    assert flush.check["region"] == "central box (48, 48, 48) of (72, 72, 72)"
    assert flush.check["voxels"] == 48**3 and flush.check["labelmaps_equal"]
    # the box flushed, the box exact, then the whole input flushed
    assert [flushing for flushing, _ in recorder.calls] == [True, False, True]


# --- whole runs --------------------------------------------------------------------------------


def test_a_run_flushes_during_its_passes_only_and_its_maps_equal_the_exact_ones(
    two_threads, tmp_path
):
    network = tiny_unet()
    pushed = with_denormal_weights(network)
    recorder = FlushRecorder(network)
    model = tiny_model(recorder)
    methods = ["saliency", {"name": "integrated_gradients", "params": {"n_steps": 4}}]
    flushed = explain(image(), model, "voxel:8,8,8", methods, device="cpu", out=tmp_path / "run")
    assert not flushing_denormals() and unflushed_share() == 1.0, "restored afterwards"
    # the check's flushed pass, its exact pass, then every pass of the run flushed everywhere
    assert recorder.calls[1] == (False, 1.0)
    assert all(call == (True, 0.0) for call in recorder.calls[:1] + recorder.calls[2:])
    assert len(recorder.calls) > 4
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["model"]["denormal_weights"]["count"] == pushed
    assert record["denormals"]["flush"] and record["denormals"]["check"]["labelmaps_equal"]
    assert record["denormals"]["threads"] == 2 and record["job"]["flush_denormals"]

    recorder.calls.clear()
    exact = explain(image(), model, "voxel:8,8,8", methods, device="cpu", flush_denormals=False)
    assert all(call == (False, 1.0) for call in recorder.calls)
    assert exact.denormals is not None and exact.denormals.record()["flush"] is False
    any_warning = " ".join(exact.warnings)
    assert "denormal floats and --no-flush-denormals keeps them" in any_warning
    np.testing.assert_array_equal(flushed.labelmap, exact.labelmap)
    for label, values in exact.maps.items():
        scale = float(np.abs(values).max())
        np.testing.assert_allclose(flushed.maps[label], values, rtol=1e-5, atol=1e-6 * scale)


def test_a_run_whose_labelmap_depends_on_denormals_keeps_exact_arithmetic(tmp_path):
    recorder = FlushRecorder(AmplifiesDenormals())
    result = explain(
        image(), tiny_model(recorder), "class", ["saliency"], device="cpu", out=tmp_path / "run"
    )
    assert [flushing for flushing, _ in recorder.calls[:2]] == [True, False]  # the check
    assert not any(flushing for flushing, _ in recorder.calls[2:])
    warning = next(w for w in result.warnings if "denormal" in w)
    assert "changed the labelmap" in warning and "keeps exact arithmetic" in warning
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["denormals"]["flush"] is False and record["denormals"]["requested"] is True
    assert record["denormals"]["exact_reason"] == warning and warning in record["warnings"]
    assert (result.labelmap == (image().array[0] > 0.5)).all()


def test_a_failing_run_leaves_every_thread_as_it_was(two_threads):
    class FailsOnGradients(torch.nn.Module):
        def forward(self, x):
            if x.requires_grad:
                raise RuntimeError("a method's pass failed")
            return tiny_unet()(x)

    with pytest.raises(RuntimeError, match="a method's pass failed"):
        explain(image(), tiny_model(FailsOnGradients()), "class", ["saliency"], device="cpu")
    assert not flushing_denormals() and unflushed_share() == 1.0


def test_the_command_line_switch_reaches_run_json(tmp_path):
    torch.save(tiny_unet().state_dict(), tmp_path / "unet.pt")
    write_volume(image().array[0], Geometry((16, 16, 16)), tmp_path / "image.nii.gz")
    arguments = [
        "explain",
        "--image",
        str(tmp_path / "image.nii.gz"),
        "--model",
        str(tmp_path / "unet.pt"),
        "--network",
        "UNet",
        "--network-kwargs",
        json.dumps(TINY_UNET_KWARGS),
        "--no-figures",
        "--quiet",
    ]
    assert main([*arguments, "--out", str(tmp_path / "flushed")]) == 0
    assert main([*arguments, "--out", str(tmp_path / "exact"), "--no-flush-denormals"]) == 0
    flushed, exact = (
        json.loads((tmp_path / name / "run.json").read_text()) for name in ("flushed", "exact")
    )
    assert flushed["denormals"]["flush"] and flushed["job"]["flush_denormals"]
    assert exact["denormals"] == {"requested": False, "flush": False}
    assert exact["job"]["flush_denormals"] is False
