"""The README's method table is generated from the registry (run this file to regenerate it)."""

from __future__ import annotations

import re
from pathlib import Path

from TorchEsegetaLib.cli import methods_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- methods:start -->\n)(.*?)(<!-- methods:end -->)", re.S)


def test_readme_method_table_matches_the_registry():
    match = BLOCK.search(README.read_text(encoding="utf-8"))
    assert match, "README.md lacks the <!-- methods:start/end --> markers"
    assert match.group(2) == methods_markdown(), (
        "stale method table: run `python Testing/test_readme.py`"
    )


def test_readme_opens_with_the_two_setup_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    commands = [line for line in lines[:6] if line.startswith("pip install torch==2.13.0")]
    assert (
        len(commands) == 2 and commands[0].endswith("torchesegeta demo") and "pytest" in commands[1]
    )
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "ruff check ." in ci and "pytest" in ci and "torch==2.13.0" in ci


if __name__ == "__main__":
    text = README.read_text(encoding="utf-8")
    README.write_text(
        BLOCK.sub(lambda m: m.group(1) + methods_markdown() + m.group(3), text), encoding="utf-8"
    )
