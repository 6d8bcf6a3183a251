"""The README and docs/: the README opens with the two set-up commands CI runs and stays short;
every page is one sitting long; every link between them resolves, to a file and a heading; the
method and metric tables, the ground-truth table and the method pages are generated from the
registries (run this file to regenerate them); and the README's model examples run (slow)."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from extras import require_extra

from TorchEsegetaLib.cli import (
    ground_truth_markdown,
    method_pages_markdown,
    methods_markdown,
    metrics_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
#: (page, block name) -> the generator of the text between ``<!-- name:start -->`` and ``:end``.
GENERATED: dict[tuple[str, str], Callable[[], str]] = {
    ("docs/methods.md", "methods"): methods_markdown,
    ("docs/evaluation.md", "metrics"): metrics_markdown,
    ("docs/proofs.md", "ground-truth"): ground_truth_markdown,
    **{
        (f"docs/methods-{family}.md", "method-pages"): functools.partial(
            method_pages_markdown, family
        )
        for family in ("gradient", "layer", "cam", "perturbation")
    },
}
MAX_README_LINES = 300
#: what one sitting can read; a longer page is split
MAX_PAGE_LINES = 300


def block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {name}:start -->\n)(.*?)(<!-- {name}:end -->)", re.S)


@pytest.mark.parametrize("page, name", list(GENERATED), ids=lambda v: str(v))
def test_generated_blocks_match_the_registries(page, name):
    match = block(name).search((ROOT / page).read_text(encoding="utf-8"))
    assert match, f"{page} lacks the <!-- {name}:start/end --> markers"
    assert match.group(2) == GENERATED[page, name](), (
        f"stale {name} block in {page}: run `python Testing/test_readme.py`"
    )


def test_readme_opens_with_the_two_setup_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    commands = [line for line in lines[:6] if line.startswith("pip install torch==2.13.0")]
    assert (
        len(commands) == 2 and commands[0].endswith("torchesegeta demo") and "pytest" in commands[1]
    )
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "mypy" in commands[1]
    assert "ruff check ." in ci and "mypy" in ci and "pytest" in ci and "torch==2.13.0" in ci


def test_the_readme_is_short_and_every_page_one_sitting_long():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= MAX_README_LINES
    long = {
        page.name: n
        for page in PAGES
        if (n := len(page.read_text(encoding="utf-8").splitlines())) > MAX_PAGE_LINES
    }
    assert not long, f"split these pages: {long}"


def test_the_readme_links_every_page_of_docs():
    linked = {target.name for target, _ in links(README) if target.parent.name == "docs"}
    assert {page.name for page in PAGES} - linked == set()


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def links(page: Path) -> list[tuple[Path, str]]:
    """The relative links of a markdown page: (target file, anchor or "")."""
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        found.append(((page.parent / path).resolve() if path else page, anchor))
    return found


def slugs(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings."""
    headings = re.findall(r"^#+ (.*)$", prose(page.read_text(encoding="utf-8")), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_every_link_resolves_to_a_file_and_a_heading(page):
    for target, anchor in links(page):
        assert target.exists(), f"{page.name}: broken link to {target}"
        if anchor and target.suffix == ".md":
            assert anchor in slugs(target), f"{page.name}: no heading #{anchor} in {target.name}"


def readme_examples() -> dict[str, str]:
    """The shell blocks of the README's "Explain your own model", by the model kind each shows."""
    section = README.read_text(encoding="utf-8").split("## Explain your own model")[1]
    section = section.split("\n## ")[0]
    kinds = re.findall(r"\*\*An? ([^*]+)\*\*[\s\S]*?```bash\n([\s\S]*?)```", section)
    return {kind: commands for kind, commands in kinds}


def test_the_readme_shows_every_model_kind():
    assert set(readme_examples()) == {
        "MONAI network and its checkpoint",
        "TorchScript file",
        "MONAI bundle folder",
        "nnU-Net v2 model folder",
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(readme_examples()))
def test_the_readmes_model_examples_run_as_written(kind, tmp_path):
    """Each example runs as the README says: after `torchesegeta demo`, from the repository's
    root (here a folder that reaches the repository's TorchEsegetaLib), leaving a complete run."""
    if kind.startswith("nnU-Net"):
        require_extra("nnunet")
    (tmp_path / "TorchEsegetaLib").symlink_to(ROOT / "TorchEsegetaLib")
    torchesegeta = shutil.which("torchesegeta")
    assert torchesegeta, "the torchesegeta command is not installed"
    demo = [torchesegeta, "--quiet", "demo", "--method", "saliency"]
    subprocess.run(demo, cwd=tmp_path, check=True, timeout=900)
    # a pip line installs what the test environment already has
    commands = "\n".join(
        line for line in readme_examples()[kind].splitlines() if not line.startswith("pip ")
    )
    done = subprocess.run(
        ["bash", "-e", "-c", commands], cwd=tmp_path, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = re.findall(r"--out (\S+)", commands)[-1]
    assert json.loads((tmp_path / out / "run.json").read_text())["status"] == "complete"


if __name__ == "__main__":
    for (page, name), generate in GENERATED.items():
        path = ROOT / page
        text = path.read_text(encoding="utf-8")
        text = block(name).sub(
            lambda m, generate=generate: m.group(1) + generate() + m.group(3), text
        )
        path.write_text(text, encoding="utf-8")
