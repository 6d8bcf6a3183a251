"""The run in plain words: one function writes the sentences the report, the Slicer panel and the
viewer show; what each says for a recommendation, a tie, none, and an unevaluated run, and what
the colours of every registered method's map mean."""

from __future__ import annotations

import pytest
from test_recommendation import _evaluation
from viewer_runs import makeViewerRun

from TorchEsegetaLib.methods import REGISTRY, create_method
from TorchEsegetaLib.metrics.recommendation import recommend
from TorchEsegetaLib.runs.summary_text import (
    TOPICS,
    colour_meaning,
    describe_run,
    describe_run_folder,
    plain_text,
)

RECORD = {
    "model": {"card": {"name": "Vessel UNet", "class_names": ["background", "vessel"]}},
    "target": {"kind": "class", "class": "vessel", "class_index": 1, "region_voxels": 100},
    "segmentation": {"label_names": ["background", "vessel"], "voxels_per_label": {"0": 900, "1": 100}},
    "methods": [
        {"label": "good", "name": "integrated_gradients", "title": "Good", "signed": True,
         "quantity": "contribution to the score", "file": "good.nii.gz"},
        {"label": "fair", "name": "saliency", "title": "Fair", "signed": False,
         "quantity": "|d score / d intensity|", "file": "fair.nii.gz"},
    ],
}  # fmt: skip


def topics(sentences):
    return [topic for topic, _ in sentences]


def test_a_recommendation_in_plain_words():
    summary = recommend(
        _evaluation(
            {"good": (0.4, 0.4, 0.95), "fair": (0.1, 0.1, 0.3)}, {"good": True, "fair": True}
        )
    )
    sentences = describe_run(RECORD, summary)
    assert topics(sentences)[:4] == ["segmented", "explained", "look first", "colours"]
    assert set(topics(sentences)) <= set(TOPICS)
    text = dict(sentences)
    assert text["segmented"] == (
        "Vessel UNet segmented the image into background and vessel. Vessel covers 100 voxels "
        "(10.0% of the image)."
    )
    assert "mean vessel logit over the predicted vessel mask" in text["explained"]
    assert text["look first"].startswith("Look first at good: it is the most faithful map that")
    assert "0 is a random order" in text["look first"] and "(r = 0.9" in text["look first"]
    assert "reflects what the model learned" in text["look first"]
    assert text["colours"].startswith("In Good, red means that the voxel raised the vessel score")


def test_no_clear_winner_and_no_recommendation_say_so():
    tie = recommend(
        _evaluation(
            {"good": (0.3, 0.3, 0.60), "fair": (0.3, 0.3, 0.58)}, {"good": True, "fair": True}
        )
    )
    look = dict(describe_run(RECORD, tie))["look first"]
    assert look.startswith("No single map stands out:") and "side by side" in look
    none = recommend(
        _evaluation(
            {"good": (0.4, 0.4, 0.95), "fair": (0.1, 0.1, 0.3)}, {"good": False, "fair": False}
        )
    )
    sentences = describe_run(RECORD, none)
    assert dict(sentences)["look first"].startswith("No map can be recommended:")
    assert any("stayed similar" in text for topic, text in sentences if topic == "caveat")
    # with nothing recommended, the colours are those of the first map
    assert dict(sentences)["colours"].startswith("In Good,")


def test_an_unevaluated_run_is_told_how_to_evaluate():
    text = dict(describe_run(RECORD, None))
    assert "not evaluated" in text["look first"] and "torchesegeta evaluate" in text["look first"]


def test_the_structures_sentence_names_the_largest_shares():
    rows = [
        {"method": "good", "structure": "liver", "abs_share": 0.7, "enrichment": 7.0},
        {"method": "good", "structure": "the rest of the image", "abs_share": 0.3, "enrichment": 0.33},
        {"method": "fair", "structure": "liver", "abs_share": 0.1, "enrichment": 1.0},
    ]  # fmt: skip
    summary = recommend(
        _evaluation(
            {"good": (0.4, 0.4, 0.95), "fair": (0.1, 0.1, 0.3)}, {"good": True, "fair": True}
        )
    )
    text = dict(describe_run(RECORD, summary, rows))["structures"]
    assert text.startswith("By structure, Good puts 70% of its attribution in liver (enrichment 7)")


def test_plain_text_puts_the_caveats_last_as_a_list():
    text = plain_text([("look first", "A."), ("caveat", "B."), ("colours", "C."), ("caveat", "D.")])
    assert text == "A.\n\nC.\n\nKeep in mind:\n- B.\n- D."


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_methods_colours_are_explained_for_its_quantity(name):
    method = create_method(name)
    entry = {
        "label": name,
        "title": method.title,
        "signed": method.signed,
        "quantity": method.quantity,
    }
    text = colour_meaning(entry, "tumour")
    assert text.startswith(f"In {method.title},")
    if not method.signed:
        assert "one colour scale" in text and "blue" not in text
    elif "target-independent" in method.quantity:
        assert "does not explain tumour" in text
    elif name in ("input_x_gradient", "layer_gradient_x_activation"):  # gradient x value
        assert "raised the tumour score (evidence for tumour)" in text
    elif "d score / d" in method.quantity:  # a derivative: a rate of change
        change = (
            "a stronger layer response"
            if method.family == "layer" and name != "guided_gradcam"
            else "a brighter voxel"
        )
        assert f"{change} there would raise the tumour score" in text
    else:
        assert "raised the tumour score (evidence for tumour)" in text


def test_a_run_folder_is_described_from_its_files(tmp_path):
    run = makeViewerRun(tmp_path / "run")
    sentences = describe_run_folder(run)
    text = dict(sentences)
    assert text["look first"].startswith("Look first at Signed blocks")
    assert "segment block" in text["structures"]
