"""The README's method and metric tables are generated from the registries (run this file to
regenerate them), and the README opens with the two set-up commands CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from TorchEsegetaLib.cli import methods_markdown, metrics_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
TABLES = {"methods": methods_markdown, "metrics": metrics_markdown}


def block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {name}:start -->\n)(.*?)(<!-- {name}:end -->)", re.S)


def test_readme_tables_match_the_registries():
    text = README.read_text(encoding="utf-8")
    for name, generate in TABLES.items():
        match = block(name).search(text)
        assert match, f"README.md lacks the <!-- {name}:start/end --> markers"
        assert match.group(2) == generate(), (
            f"stale {name} table: run `python Testing/test_readme.py`"
        )


def test_readme_opens_with_the_two_setup_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    commands = [line for line in lines[:6] if line.startswith("pip install torch==2.13.0")]
    assert (
        len(commands) == 2 and commands[0].endswith("torchesegeta demo") and "pytest" in commands[1]
    )
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "mypy" in commands[1]
    assert "ruff check ." in ci and "mypy" in ci and "pytest" in ci and "torch==2.13.0" in ci


if __name__ == "__main__":
    text = README.read_text(encoding="utf-8")
    for name, generate in TABLES.items():
        text = block(name).sub(
            lambda m, generate=generate: m.group(1) + generate() + m.group(3), text
        )
    README.write_text(text, encoding="utf-8")
