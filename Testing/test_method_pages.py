"""Method pages: every method says what its maps answer, what their values mean, how they mislead
and what they cannot show; `torchesegeta methods NAME` prints exactly that, from the registry."""

from __future__ import annotations

import json
import re

import pytest

from TorchEsegetaLib.cli import main
from TorchEsegetaLib.methods import REGISTRY, register
from TorchEsegetaLib.methods.base import Method
from TorchEsegetaLib.methods.guides import GROUND_TRUTH_SHARE, GUIDES


def words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_every_method_has_a_complete_page_and_no_page_lacks_its_method():
    assert set(GUIDES) == set(REGISTRY)
    for name, cls in REGISTRY.items():
        guide = cls.describe()["guide"]
        assert guide["answers"] and guide["positive"], name
        assert guide["failure_modes"] and guide["cannot_show"], name
        if cls.signed:
            assert guide["negative"], f"{name}: a signed map needs its blue explained"
    assert set(GROUND_TRUTH_SHARE) <= set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_methods_name_prints_the_page(name, capsys):
    assert main(["methods", name]) == 0
    page = words(capsys.readouterr().out)
    info = REGISTRY[name].describe()
    guide = info["guide"]
    assert page.startswith(f"{info['title']} ({name}): {info['family']} method")
    assert f"Map value: {info['quantity']}, {'signed' if info['signed'] else 'unsigned'}" in page
    for text in [
        guide["answers"],
        guide["positive"],
        *guide["failure_modes"],
        *guide["cannot_show"],
    ]:
        assert words(text) in page, text
    assert ("blue (negative): " + words(guide["negative"]) in page) == info["signed"]
    for param in info["params"]:
        assert f"--param {name}.{param['name']}=" in page


def test_methods_name_as_json_and_unknown_names(capsys):
    assert main(["methods", "Integrated-Gradients", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["name"] == "integrated_gradients"
        and "stripes" in info["guide"]["failure_modes"][0].lower()
    )
    assert main(["methods", "gradcamm"]) == 2
    err = capsys.readouterr().err
    assert "did you mean gradcam" in err and len(err.strip().splitlines()) == 1


def test_a_method_without_a_page_cannot_register():
    class Unexplained(Method):
        name = "unexplained"
        title = summary = cost = reference = "x"
        family = "gradient"
        quantity = "d score / d intensity"
        signed = True

    with pytest.raises(ValueError, match="write its page"):
        register(Unexplained)
    assert "unexplained" not in REGISTRY
