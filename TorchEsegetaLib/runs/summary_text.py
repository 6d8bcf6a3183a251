"""The run in plain words: what was segmented, what was explained, which map to look at first and
why, what its colours mean, and what to keep in mind. Written from run.json, summary.json and
structures.csv; the report, the Slicer panel and the web viewer all show these sentences.

:func:`describe_run` returns ``(topic, sentence)`` pairs; :func:`plain_text` joins them for a
text box. Nothing here depends on a front end.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..metrics.recommendation import PASSED, TIED, words_and
from ..metrics.results import format_value
from ..targets.spec import score_phrase

TOPICS = ("segmented", "explained", "look first", "colours", "structures", "caveat")


def describe_run_folder(folder: str | Path) -> list[tuple[str, str]]:
    """:func:`describe_run` of a run folder (its summary recomputed where the file is missing)."""
    from .evaluation import read_record
    from .structures import read_structures_csv
    from .summary import summary_of

    folder = Path(folder)
    record = read_record(folder)
    return describe_run(record, summary_of(folder, record), read_structures_csv(folder))


def describe_run(
    record: Mapping[str, Any],
    summary: Mapping[str, Any] | None,
    structures: list[dict[str, Any]] | None = None,
) -> list[tuple[str, str]]:
    """The sentences for a run: ``[(topic, sentence), ...]`` in reading order (see TOPICS).

    Args:
        record: run.json's contents.
        summary: summary.json's contents, or None for a run that was not evaluated.
        structures: structures.csv's rows, if the run has them.
    """
    target = record.get("target") or {}
    name = str(target.get("class") or "the target")
    entries = {m.get("label", m.get("name")): m for m in record.get("methods", [])}
    sentences = [("segmented", _segmented(record, name)), ("explained", _explained(target, name))]
    look_first = (summary or {}).get("look_first")
    chosen = entries.get(look_first) if look_first else None
    if summary is None:
        sentences.append(
            (
                "look first",
                "The maps were not evaluated, so no map is recommended: run `torchesegeta "
                "evaluate` on this folder to learn which one follows the model best.",
            )
        )
    else:
        sentences.append(("look first", recommendation_sentence(summary)))
    shown = chosen or _first_map(record)
    if shown is not None:
        sentences.append(("colours", colour_meaning(shown, name)))
        where = _structures_sentence(structures or [], shown)
        if where:
            sentences.append(("structures", where))
    for caveat in (summary or {}).get("caveats", []):
        sentences.append(("caveat", caveat))
    return sentences


def plain_text(sentences: list[tuple[str, str]]) -> str:
    """The sentences as paragraphs, the caveats as a list after "Keep in mind"."""
    body = [text for topic, text in sentences if topic != "caveat"]
    caveats = [f"- {text}" for topic, text in sentences if topic == "caveat"]
    return "\n\n".join(body + (["Keep in mind:\n" + "\n".join(caveats)] if caveats else []))


def colour_meaning(entry: Mapping[str, Any], class_name: str) -> str:
    """What the colours of one map mean, for its quantity (run.json's method entry)."""
    title = entry.get("title") or entry.get("label", "this map")
    quantity = str(entry.get("quantity", ""))
    score = f"the {class_name} score"
    if not entry.get("signed"):
        scale = (
            f"In {title}, one colour scale runs from purple (a little) to yellow (the most); "
            "voxels with almost none are transparent."
        )
        if "layer" in quantity:
            return (
                f"{scale} Bright means the network's layer responded there in favour of "
                f"{class_name} (a layer map: where the network looked, not a voxel's exact share)."
            )
        return (
            f"{scale} Bright means {score} would change most if that voxel's intensity "
            "changed, up or down: the map says how much, not in which direction."
        )
    if "target-independent" in quantity:
        return (
            f"In {title}, red and blue are the layer's own response, whatever the target: it does "
            f"not explain {class_name}."
        )
    # a derivative is a rate; times the input (or activation) it is a contribution again
    contribution = quantity.startswith(("intensity x", "layer activation x"))
    if "d score / d" in quantity and not contribution:
        change = "a stronger layer response" if "d layer" in quantity else "a brighter voxel"
        return (
            f"In {title}, red means that {change} there would raise {score}, blue that it "
            "would lower it, and white no effect: a rate of change, not a share of the score."
        )
    return (
        f"In {title}, red means that the voxel raised {score} (evidence for {class_name}), blue "
        "that it lowered it (evidence against), and white that it made no difference."
    )


def _segmented(record: Mapping[str, Any], name: str) -> str:
    card = (record.get("model") or {}).get("card") or {}
    model = card.get("name") or "The model"
    segmentation = record.get("segmentation") or {}
    names = [str(n) for n in segmentation.get("label_names") or card.get("class_names") or []]
    counts = {int(k): int(v) for k, v in (segmentation.get("voxels_per_label") or {}).items()}
    total = sum(counts.values())
    text = f"{model} segmented the image"
    if names:
        text += " into " + words_and(names)
    text += "."
    target = record.get("target") or {}
    label = target.get("class_index")
    if label is not None and total and names and name in names:
        voxels = counts.get(names.index(name), 0)
        text += (
            f" {name.capitalize()} covers {voxels:,} voxels ({voxels / total:.1%} of the image)."
        )
    return text


def _explained(target: Mapping[str, Any], name: str) -> str:
    phrase = score_phrase(dict(target))
    return (
        f"The maps explain the {phrase}: for each voxel of the input, how much it drove the "
        f"model towards {name} there."
        if phrase
        else f"The maps explain the model's {name} output."
    )


def recommendation_sentence(summary: Mapping[str, Any]) -> str:
    """Which map to look at first and why, in one or two sentences (runs and cohorts alike)."""
    entries = {e["method"]: e for e in summary.get("ranking", [])}
    recommended = summary.get("recommended")
    if recommended:
        return f"Look first at {entries[recommended]['title']}: " + _why(entries[recommended])
    if summary.get("verdict") == TIED and summary.get("look_first"):
        tied = [entries[label]["title"] for label in summary.get("tied", [])]
        first = entries[summary["look_first"]]
        return (
            f"No single map stands out: {words_and(tied)} follow the model about equally well, so "
            f"compare them side by side, starting with {first['title']}: " + _why(first)
        )
    reason = summary.get("reason") or (
        "none follows the model clearly better than a random order of the voxels and also "
        "changes when the model's weights are randomised."
    )
    return f"No map can be recommended: {reason} Read every map with caution."


def _why(entry: Mapping[str, Any]) -> str:
    components = entry.get("components") or {}
    sanity = entry.get("sanity") or {}
    text = (
        "it is the most faithful map that passed the randomisation check"
        if sanity.get("status") == PASSED
        else "it is the most faithful map"
    )
    score = format_value(entry.get("score"))
    if entry.get("interval"):
        low, high = (format_value(v) for v in entry["interval"])
        text += f" (faithfulness {score}, 90% of draws {low} to {high}; 0 is a random order)"
    reasons = []
    if any(components.get(k) is not None for k in ("deletion_gain", "insertion_gain")):
        reasons.append(
            "removing or restoring voxels in its order changes the score faster than a random "
            "order does"
        )
    r = components.get("faithfulness_correlation")
    if r is not None:
        reasons.append(f"its values predict how much the score drops when voxels go (r = {r:.2f})")
    if reasons:
        text += ": " + " and ".join(reasons)
    text += "."
    if sanity.get("status") == PASSED:
        text += " It changed when the model's weights were randomised"
        if sanity.get("similarity") is not None:
            text += (
                f" (similarity {format_value(sanity['similarity'])} < {sanity.get('threshold')})"
            )
        text += ", so it reflects what the model learned."
    return text


def _structures_sentence(rows: list[dict[str, Any]], entry: Mapping[str, Any]) -> str:
    own = [r for r in rows if r["method"] == entry.get("label") and r.get("abs_share") is not None]
    if not own:
        return ""
    top = sorted(own, key=lambda r: -r["abs_share"])[:3]
    parts = [
        f"{r['abs_share']:.0%}{' of its attribution' if i == 0 else ''} in {r['structure']} "
        f"(enrichment {format_value(r['enrichment'])})"
        for i, r in enumerate(top)
    ]
    title = entry.get("title") or entry.get("label")
    return (
        f"By structure, {title} puts {words_and(parts)}; enrichment is a structure's share of the "
        "attribution divided by its share of the volume (1: no more than its size)."
    )


def _first_map(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((m for m in record.get("methods", []) if m.get("file")), None)
