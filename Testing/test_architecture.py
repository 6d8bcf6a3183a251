"""The package tree is the architecture: the dependency rule of docs/architecture.md, enforced.

Every import inside TorchEsegetaLib (at module level, inside functions and under TYPE_CHECKING
alike) is read from the syntax tree; an import from a subpackage to one of the same or a higher
layer fails the test, and so does a circle of subpackages or of modules imported at module level.
``python Testing/test_architecture.py`` prints the report (modules per subpackage, imports
between subpackages).
"""

from __future__ import annotations

import ast
from collections import Counter, defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "TorchEsegetaLib"

#: Bottom to top. A subpackage may import its own modules and those of lower layers only;
#: subpackages in one layer do not import each other. The package's own ``__init__.py`` (the
#: lazily imported public API) stands above all of them.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("schema",),
    ("io", "engine"),
    ("models",),
    ("targets",),
    ("methods",),
    ("metrics",),
    ("figures",),
    ("runs",),
    ("cohort",),
    ("cli",),
)
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}
#: What the package's top level may hold besides the subpackages of LAYERS.
TOP_LEVEL_FILES = {"__init__.py", "errors.py"}
#: Constants of the package root that any layer may read (not the lazily imported API).
ROOT_CONSTANTS = {"__version__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The subpackage (or top-level module) a module belongs to; "" for the package itself."""
    return module.split(".")[0]


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The absolute (package-relative) names an ``from ... import`` statement imports."""
    if node.level == 0:
        if not (node.module or "").startswith("TorchEsegetaLib"):
            return []
        base = (node.module or "").split(".")[1:]
    else:
        here = module.split(".") if module else []
        if not is_package:
            here = here[:-1]
        base = here[: len(here) - (node.level - 1)] + (
            node.module.split(".") if node.module else []
        )
    if base:
        return [".".join(base)]
    return [alias.name for alias in node.names]  # from the package root: modules or API names


def imports() -> dict[str, list[tuple[str, bool]]]:
    """module -> [(imported module, at module level)]."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(node) for node in tree.body}
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for target in resolve(module, path.name == "__init__.py", node):
                    edges.append((target, id(node) in top_level))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("TorchEsegetaLib."):
                        edges.append((alias.name.split(".", 1)[1], id(node) in top_level))
        found[module] = edges
    return found


def violations(graph: dict[str, list[tuple[str, bool]]]) -> list[str]:
    wrong = []
    for module, edges in graph.items():
        source = unit_of(module)
        if not module:
            continue  # the public API may import anything (lazily)
        for target, _ in edges:
            destination = unit_of(target)
            if destination == source or target in ROOT_CONSTANTS:
                continue
            if destination not in RANK or source not in RANK:
                wrong.append(f"{module} -> {target}: {destination or source} is in no layer")
            elif RANK[destination] >= RANK[source]:
                wrong.append(f"{module} -> {target}: {source} may not import {destination}")
    return wrong


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def package_edges(graph: dict[str, list[tuple[str, bool]]]) -> Counter[tuple[str, str]]:
    counted: Counter[tuple[str, str]] = Counter()
    for module, edges in graph.items():
        for target, _ in edges:
            if module and unit_of(target) != unit_of(module):
                counted[(unit_of(module), unit_of(target))] += 1
    return counted


def test_top_level_holds_only_the_layers() -> None:
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert entries - packages <= TOP_LEVEL_FILES, entries - packages - TOP_LEVEL_FILES
    assert packages | {"errors"} == set(RANK)
    assert len(entries) <= 13


def test_every_subpackage_says_what_it_may_import() -> None:
    for name in RANK:
        init = PACKAGE / name / "__init__.py"
        if init.is_file():
            docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
            assert "import" in docstring, f"{name}/__init__.py: say what it may import"


def test_no_import_against_the_dependency_rule() -> None:
    assert violations(imports()) == []


def test_the_rule_test_catches_an_upward_import() -> None:
    graph = {"engine.windows": [("models.card", False)], "runs.job": [("methods", True)]}
    assert violations(graph) == [
        "engine.windows -> models.card: engine may not import models",
    ]
    assert violations({"io.images": [("engine.context", True)]}) == [
        "io.images -> engine.context: io may not import engine"
    ]


def test_no_circles_of_subpackages_or_of_module_level_imports() -> None:
    graph = imports()
    between: dict[str, set[str]] = defaultdict(set)
    for source, target in package_edges(graph):
        between[source].add(target)
    assert cycles(between) == []
    known = set(graph)
    module_level: dict[str, set[str]] = defaultdict(set)
    for module, edges in graph.items():
        for target, top in edges:
            if top and target in known and target != module:
                module_level[module].add(target)
    assert cycles(module_level) == []
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def report() -> str:
    graph = imports()
    per_unit = Counter(unit_of(m) or "(package)" for m in graph)
    lines = ["modules per subpackage:"]
    for layer in LAYERS:
        for name in layer:
            lines.append(f"  {name:<8} {per_unit.get(name, 0):>3}  (layer {RANK[name]})")
    lines.append("imports between subpackages (statements):")
    for (source, target), count in sorted(
        package_edges(graph).items(), key=lambda item: (-RANK.get(item[0][0], 0), item[0])
    ):
        lines.append(f"  {source:>8} -> {target:<8} {count:>3}")
    wrong = violations(graph)
    lines.append(f"imports against the rule: {len(wrong)}")
    lines.extend(f"  {w}" for w in wrong)
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
