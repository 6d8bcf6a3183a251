import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# Tests of an optional extra skip where it is absent, and fail instead on CI (extras.py).
from extras import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402, F401


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny tensors: threads cost more than they bring
    yield


@pytest.fixture(scope="session")
def nnunet_model_folder(tmp_path_factory):
    """A tiny nnU-Net v2 model folder (two folds, random weights) made by nnU-Net's own code
    (planner, preprocessing, trainer initialisation; models.nnunet.example), built once."""
    pytest.importorskip("nnunetv2")
    from TorchEsegetaLib.models.nnunet.example import build_model_folder, vessel_cases

    return build_model_folder(
        tmp_path_factory.mktemp("nnunet"),
        vessel_cases(3, (10, 16, 18), (2.0, 0.7, 0.6)),
        folds=(0, 1),
        base_features=2,
        max_features=8,
    )


@pytest.fixture
def sceneAndLogics(tmp_path):
    """A fresh slicer-core scene per test with the Colors/Volumes/Segmentations/SubjectHierarchy
    logics the glue needs (for the tests under mrml/ and slicer_module/, which put
    ``mrml_environment`` on the path and skip where slicer-core is missing)."""
    from mrml_environment import makeScene

    scene, logics = makeScene(tmp_path / "slicer-cache")
    yield scene, logics
    scene.Clear(True)


@pytest.fixture
def scene(sceneAndLogics):
    return sceneAndLogics[0]


@pytest.fixture(params=[1, 2], ids=["1ch", "2ch"])
def setup(request):
    """(net, x, target, score): the tiny UNet on a 16^3 input with 1 or 2 channels."""
    from helpers import centre_box_target, tiny_input, tiny_unet

    from TorchEsegetaLib.methods import ScoreModel

    channels = request.param
    net = tiny_unet(in_channels=channels)
    target = centre_box_target()
    return net, tiny_input(channels), target, ScoreModel(net, target)
