"""What a MONAI bundle's configs would run, found before anything is parsed or instantiated.

MONAI's ``ConfigParser`` is an interpreter: a ``$`` string anywhere is evaluated (an import
statement anywhere runs as soon as any item is resolved), a mapping with ``_target_`` anywhere is
called with the rest as arguments, ``@`` references move values (a string into a ``_target_``),
``%`` macros paste parts of any file (and of the config itself) in before any of that, and
top-level keys such as ``network_def::act`` are merged into nested places. So the analysis does
not follow what loading happens to use: it builds the config exactly as MONAI would (its own
file readers and merge rules, the metadata as ``_meta_``, every macro pasted in, also macros
inside pasted content, to any depth) and holds **every** part of it, at any depth, against the
allow-list:

- ``$`` strings: only the two lambda forms read from their syntax tree (:mod:`.lambdas`);
- ``_target_``: a class of MONAI's transforms, networks or inferers, or a torch.nn layer, named
  by its class name or a dotted path, never by a reference, macro or expression; the path is
  replaced by the class's full path so that what runs is what was checked;
- ``_mode_`` default or callable, no ``_debug_`` (both would start Python's debugger);
- ``reader``/``writer``/``merger_cls`` (which MONAI imports by name): a MONAI reader, writer or
  merger class by its name.

The resolved config is what the parser of an untrusted bundle gets, so no file is read twice.
"""

from __future__ import annotations

import inspect
import warnings
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import UserInputError
from ..trust import Finding, allowed_class, canonical_path, shown_path
from .lambdas import is_recognised_expression

#: Packages a ``_target_`` path may name (so: import); the packages its class must come from.
TARGET_ROOTS = ("monai", "torch.nn")
TARGET_HOMES = (
    "monai.transforms",
    "monai.networks.nets",
    "monai.networks.blocks",
    "monai.networks.layers",
    "monai.inferers",
    "torch.nn.modules",
)
#: Arguments MONAI imports by name (LoadImage's reader, SaveImage's writer, PatchInferer's
#: merger_cls), with the module and base class of the built-in classes each may name.
NAMED_CLASSES = {
    "reader": ("monai.data", "ImageReader"),
    "writer": ("monai.data", "ImageWriter"),
    "merger_cls": ("monai.inferers.merger", "Merger"),
}
MAX_MACRO_DEPTH = 16
MAX_PARTS = 1_000_000  # values visited; a YAML alias bomb stops here
MAX_FILE_BYTES = 16 * 2**20
_EXPRESSION = (
    "is a Python expression, which loading would run (only 'lambda x: a * x + b' and "
    "'lambda x: x > c' are read, not run)"
)


@dataclass
class BundleAnalysis:
    """The config as MONAI's parser gets it (``config``), the code in it (``findings``) and the
    metadata files merged (``metadata``)."""

    config: dict
    metadata: dict
    findings: list[Finding] = field(default_factory=list)


def read_config_file(path: Path, folder: Path, merge: bool = True) -> Any:
    """A config file read by MONAI's own reader (``merge``: with its merging of top-level
    ``a::b`` and ``+a`` keys, as for a config; without, as for a macro's file); only regular
    files of a config's size, any problem as one line."""
    from monai.bundle import ConfigParser

    shown = shown_path(path, folder)
    if not path.is_file():
        raise UserInputError(f"{shown} is not a regular file; a bundle config must be one")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise UserInputError(
            f"{shown} is over {MAX_FILE_BYTES // 2**20} MiB, too large for a bundle config"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate keys: the last wins, in MONAI as here
            if merge:
                return ConfigParser.load_config_files(str(path))
            return ConfigParser.load_config_file(str(path))
    except Exception as error:  # JSON/YAML syntax, a YAML Python tag, a merge MONAI refuses
        problem = " ".join(str(error).split())
        raise UserInputError(
            f"cannot read {shown} as a bundle config ({type(error).__name__}: {problem}); "
            "fix the file (YAML Python tags are never read)"
        ) from error


def read_metadata(root: Path, files: list[Path]) -> tuple[dict, dict[str, tuple[str, str]]]:
    """The bundle's metadata files merged (the later wins), and which file gave each key."""
    metadata: dict = {}
    origins: dict[str, tuple[str, str]] = {}
    for path in files:
        data = read_config_file(path, root, merge=False)
        if not isinstance(data, dict):
            raise UserInputError(f"{shown_path(path, root)} must hold a JSON object; fix it")
        metadata.update(data)
        origins.update({f"_meta_::{key}": (shown_path(path, root), str(key)) for key in data})
    return metadata, origins


def analyse_bundle(root: Path, config_file: Path, metadata_files: list[Path]) -> BundleAnalysis:
    """Every piece of code the bundle's configs would run, and the config without macros.

    The config is the one MONAI's parser holds after ``read_meta`` (the metadata files merged),
    ``read_config`` and ``bundle_root``; then its macros and relative ids are resolved and every
    part of it is checked."""
    from monai.bundle import ConfigParser

    metadata, origins = read_metadata(root, metadata_files)
    config = read_config_file(config_file, root)
    if not isinstance(config, dict):
        raise UserInputError(f"{shown_path(config_file, root)} must hold a mapping of ids; fix it")
    if "_meta_" in config:  # read_config lets the config's own _meta_ replace the metadata
        origins = {}
    origins[""] = (shown_path(config_file, root), "")
    origins["bundle_root"] = ("(the bundle folder, set on loading)", "bundle_root")
    parser = ConfigParser()
    parser.read_meta(deepcopy(metadata))  # the metadata stays as written, for the model card
    parser.read_config(config)
    parser.set(str(root), "bundle_root")
    tree = parser.get()
    analysis = _Analysis(root, tree, origins)
    analysis.resolve(tree, "", 0)
    analysis.check(tree, "")
    return BundleAnalysis(tree, metadata, analysis.findings)


class _Analysis:
    def __init__(self, root: Path, tree: dict, origins: dict[str, tuple[str, str]]) -> None:
        from monai.bundle.config_item import ComponentLocator

        self.root = root
        self.tree = tree
        self.origins = origins
        self.findings: list[Finding] = []
        self.locator = ComponentLocator()  # how MONAI's parser finds a bare class name
        self.parts = 0
        self.open: set[int] = set()  # containers on the path being walked (YAML alias loops)

    # -- where a part came from ---------------------------------------------------------------
    def origin(self, tid: str) -> tuple[str, str]:
        parts = tid.split("::") if tid else []
        for n in range(len(parts), -1, -1):
            prefix = "::".join(parts[:n])
            if prefix in self.origins:
                file, key = self.origins[prefix]
                return file, "::".join(k for k in (key, *parts[n:]) if k)
        return "?", tid

    def where(self, tid: str) -> str:
        file, key = self.origin(tid)
        return f"{file}, key {key or '(top)'}"

    def find(self, tid: str, value: Any, what: str) -> None:
        file, key = self.origin(tid)
        text = value if isinstance(value, str) else repr(value)
        self.findings.append(Finding(file, key or "(top)", text, what))

    # -- macros and relative ids, as ConfigParser._do_resolve, pasted content included -------
    def resolve(self, node: Any, tid: str, depth: int) -> Any:
        from monai.bundle import ConfigParser

        self._visit(node, tid)
        if isinstance(node, (dict, list)):
            self.open.add(id(node))
            for key, sub, value in _children(tid, node):
                node[key] = self.resolve(value, sub, depth)
            self.open.discard(id(node))
        elif isinstance(node, str):
            try:
                node = ConfigParser.resolve_relative_ids(tid, node)
            except ValueError as error:
                raise UserInputError(f"{self.where(tid)}: {error}; fix the config") from error
            if node.startswith("%"):
                return self.expand(node, tid, depth)
        return node

    def expand(self, macro: str, tid: str, depth: int) -> Any:
        from monai.bundle import ConfigParser

        if depth >= MAX_MACRO_DEPTH:
            raise UserInputError(
                f"{self.where(tid)}: macros nest deeper than {MAX_MACRO_DEPTH} levels "
                f"({macro!r}); does a macro paste itself?"
            )
        path, ids = ConfigParser.split_path_id(macro[1:])
        if path:
            source = read_config_file(Path(path), self.root, merge=False)
            origin = (shown_path(path, self.root), ids)
        else:
            source, origin = self.tree, self.origin(ids)
        try:
            content = deepcopy(ConfigParser(config=source)[ids])
        except (KeyError, IndexError, ValueError, TypeError) as error:
            raise UserInputError(
                f"{self.where(tid)}: the macro {macro!r} names nothing ({error}); fix the config"
            ) from error
        self.origins = {k: v for k, v in self.origins.items() if not k.startswith(tid + "::")}
        self.origins[tid] = origin
        return self.resolve(content, tid, depth + 1)

    # -- the allow-list -----------------------------------------------------------------------
    def check(self, node: Any, tid: str) -> None:
        self._visit(node, tid)
        if isinstance(node, str):
            if node.startswith("$") and not _recognised(node):
                self.find(tid, node, _EXPRESSION)
            return
        if isinstance(node, dict) and "_target_" in node:
            self.check_component(node, tid)
        if isinstance(node, (dict, list)):
            self.open.add(id(node))
            for key, sub, value in _children(tid, node):
                if not (key == "_target_" and isinstance(node, dict)):
                    self.check(value, sub)
            self.open.discard(id(node))

    def check_component(self, node: dict, tid: str) -> None:
        target = node["_target_"]
        cls = self.target_class(target)
        if cls is None:
            self.find(
                f"{tid}::_target_",
                target,
                "is not a class of MONAI's transforms, networks or inferers nor a torch.nn layer; "
                "loading would call whatever it names",
            )
        else:
            node["_target_"] = canonical_path(cls)
        if node.get("_mode_", "default") not in ("default", "callable"):
            self.find(f"{tid}::_mode_", node["_mode_"], "would start Python's debugger on loading")
        if node.get("_debug_") not in (None, False):
            self.find(
                f"{tid}::_debug_", node["_debug_"], "would start Python's debugger on loading"
            )
        for key, (module, base) in NAMED_CLASSES.items():
            if key in node and not _names_builtin_class(node[key], module, base):
                self.find(
                    f"{tid}::{key}",
                    node[key],
                    f"is not the name of a MONAI {base} class; loading would import and call "
                    "whatever it names",
                )

    def target_class(self, target: Any) -> type | None:
        if not isinstance(target, str) or not target:
            return None
        if "." not in target:  # a bare name: MONAI looks it up among its own modules
            module = self.locator.get_component_module_name(target)
            if module is None:
                return None  # MONAI would import a top-level module of that name
            target = f"{module[0] if isinstance(module, list) else module}.{target}"
        return allowed_class(target, TARGET_ROOTS, TARGET_HOMES)

    def _visit(self, node: Any, tid: str) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise UserInputError(
                f"the bundle's configs unfold into over {MAX_PARTS} values (YAML aliases or "
                "macros pasting large parts many times); they are refused"
            )
        if isinstance(node, (dict, list)) and id(node) in self.open:
            raise UserInputError(f"{self.where(tid)} contains itself (a YAML alias loop)")


def _children(tid: str, node: dict | list) -> list[tuple[Any, str, Any]]:
    """(key, id, value) of a container's items, with MONAI's ids (``parent::key``)."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    return [(key, f"{tid}::{key}" if tid else f"{key}", value) for key, value in items]


def _recognised(expression: str) -> bool:
    try:
        return is_recognised_expression(expression)
    except (RecursionError, MemoryError, ValueError):  # too deep to read: not one of the forms
        return False


def _names_builtin_class(value: Any, module_name: str, base_name: str) -> bool:
    import importlib

    module = importlib.import_module(module_name)
    base = getattr(module, base_name)
    for item in value if isinstance(value, list) else [value]:
        if item is None or (isinstance(item, dict) and "_target_" in item):
            continue  # nothing, or a component (checked as one)
        named = getattr(module, item, None) if isinstance(item, str) else None
        if not (inspect.isclass(named) and issubclass(named, base)):
            return False
    return True
