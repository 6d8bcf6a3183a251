"""Tests of an optional extra skip where it is absent, and fail on CI (extras.py): checked on a
small suite run by pytest in a subprocess, once as on a user's machine and once as on CI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from extras import EXTRA_MODULES, REQUIRE_EXTRAS, missing_extra, skip_reason
from project import REPOSITORY, pyproject

TESTING = Path(__file__).parent

SUITE = {
    "conftest.py": "from extras import pytest_make_collect_report, pytest_runtest_makereport\n",
    "test_inside.py": """
import pytest
from extras import require_extra

def test_needs_an_absent_view_module():
    require_extra("view", "trame_of_another_world")

def test_importorskip_of_an_extra_module():
    pytest.importorskip("nnunetv2.of_another_world")

def test_needs_a_gpu():
    pytest.skip("no CUDA device")

@pytest.mark.xfail(reason="needs torchesegeta[ray] to pass", run=False)
def test_expected_to_fail():
    pass

def test_plain():
    pass
""",
    "test_module_level.py": """
from extras import require_extra

require_extra("ray", "ray_of_another_world")

def test_never_collected_without_ray():
    pass
""",
}


def run_pytest(folder: Path, ci: bool) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != REQUIRE_EXTRAS}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTING), env.get("PYTHONPATH", "")])
    if ci:
        env[REQUIRE_EXTRAS] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-rsfE", "-p", "no:cacheprovider", "."]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def suite(tmp_path):
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_without_the_extras_their_tests_skip_naming_the_extra(suite):
    result = run_pytest(suite, ci=False)
    assert result.returncode == 0, result.stdout
    assert re.search(r"^1 passed, 4 skipped, 1 xfailed", result.stdout, re.M), result.stdout
    assert "needs torchesegeta[view]: No module named 'trame_of_another_world'" in result.stdout
    assert 'pip install -e ".[ray]"' in result.stdout


def test_on_ci_a_skipped_extra_test_fails_and_other_skips_stay(suite):
    result = run_pytest(suite, ci=True)
    assert result.returncode != 0
    # A module-level skip becomes a collection error, which stops the session.
    assert "ERROR test_module_level.py" in result.stdout, result.stdout
    assert "the [ray] extra's test was skipped" in result.stdout
    (suite / "test_module_level.py").unlink()
    result = run_pytest(suite, ci=True)
    assert result.returncode == 1
    assert re.search(r"^2 failed, 1 passed, 1 skipped, 1 xfailed", result.stdout, re.M), (
        result.stdout
    )
    assert "[view] extra's test was skipped" in result.stdout
    assert "[nnunet] extra's test was skipped" in result.stdout
    assert "SKIPPED [1] test_inside.py:12: no CUDA device" in result.stdout


@pytest.mark.parametrize(
    "reason, extra",
    [
        (skip_reason("view", "its browser tests need Chromium"), "view"),
        ("could not import 'ray.util.client': No module named 'ray'", "ray"),
        ("could not import 'trame_slicer': No module named 'trame_slicer'", "view"),
        ("could not import 'jsonschema': No module named 'jsonschema'", None),
        ("nnU-Net model folders need the nnunet extra (nnunetv2)", "nnunet"),
        ("the web viewer is the [view] extra's", "view"),
        ("the test extra is always installed", None),
        ("no CUDA device (TORCHESEGETA_TEST_DEVICE=cpu runs these checks on the CPU)", None),
    ],
)
def test_the_extra_a_skip_reason_names(reason, extra):
    assert missing_extra(reason) == extra


def test_the_extras_are_pyprojects_and_the_viewers_modules_its_own():
    assert set(EXTRA_MODULES) == set(pyproject()["project"]["optional-dependencies"]) - {"test"}
    sys.path.insert(0, str(REPOSITORY / "TorchEsegeta"))
    from TorchEsegetaWeb import REQUIRED_MODULES

    # slicer-core comes with the test extra; the rest is the view extra's.
    assert set(EXTRA_MODULES["view"]) == set(REQUIRED_MODULES) - {"slicer_core"}
