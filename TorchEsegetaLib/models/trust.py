"""What runs when a model folder loads, and the consent that code from it needs.

A model folder is data until the user consents. Before a MONAI bundle or an nnU-Net folder is
parsed or built, its analysis (:mod:`.bundles.analysis`, :mod:`.nnunet.analysis`) resolves
everything the loader would evaluate, instantiate or import and holds it against an allow-list:
MONAI's own transforms, networks and inferers; torch's layers; nnU-Net's own network classes and
trainers; the two lambda forms read from their syntax tree (:mod:`.bundles.lambdas`). Whatever
else it finds is a :class:`Finding`, and a folder with findings loads only with consent
(``--trust-model``, ``"trust": true`` in a job's model reference, the Slicer panel's checkbox).
docs/safety.md is the user's page on it.
"""

from __future__ import annotations

import inspect
import pydoc
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserInputError

#: The kinds of model reference that name a folder whose files can name code.
FOLDER_KINDS = ("bundle", "nnunet")

#: How to consent, in every front end; ends the refusal's one line.
CONSENT = (
    'if you trust the folder\'s source, pass --trust-model (in a job: "trust": true in the '
    "model reference; in Slicer: tick 'Trust the model folder's code')"
)

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


@dataclass(frozen=True)
class Finding:
    """One piece of code a model folder would run on loading.

    Attributes:
        file: the file it is written in (shown relative to the model folder when inside it).
        key: where in that file, as a ``::``-separated key path.
        value: what is written there.
        what: what it is and what loading would do with it.
    """

    file: str
    key: str
    value: str
    what: str

    def describe(self) -> str:
        value = self.value if len(self.value) <= 80 else self.value[:77] + "..."
        return f"{self.file}, key {self.key}: {value!r} {self.what}"


def require_consent(name: str, findings: Sequence[Finding], trusted: bool) -> None:
    """Raise the one-line refusal naming the first finding, unless there is none or the user
    trusts the folder."""
    if not findings or trusted:
        return
    more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
    raise UserInputError(f"{name}: {findings[0].describe()}{more}; {CONSENT}")


def shown_path(path: str | Path, folder: Path) -> str:
    """``path`` relative to the model folder when it lies inside it (after links), else as is."""
    real = Path(path).resolve()
    try:
        return real.relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(path) if real == Path(path).absolute() else f"{path} (a link to {real})"


def allowed_class(path: object, roots: Sequence[str], homes: Sequence[str]) -> type | None:
    """The class a dotted ``path`` names, found as ``pydoc.locate`` finds it, when it is defined
    in one of the ``homes`` packages; None otherwise (see :func:`locate_within`)."""
    found = locate_within(path, roots)
    return found if isinstance(found, type) and is_class_from(found, homes) else None


def locate_within(path: object, roots: Sequence[str]) -> object | None:
    """What ``pydoc.locate(path)`` finds, importing nothing outside the ``roots`` packages.

    ``pydoc.locate`` imports every module a path starts with, so a path must be plain ASCII
    names under one of the roots to be located at all; None otherwise, or when nothing is
    found. What it finds is the caller's to check: an attribute chain
    (``monai.networks.nets.unet.torch.hub.load``) leads out of the package it starts in.
    """
    if not isinstance(path, str) or not _DOTTED.match(path) or not _within(path, roots):
        return None
    try:
        return pydoc.locate(path)
    except Exception:  # a module of the package that fails to import: nothing to call
        return None


def is_class_from(found: object, homes: Sequence[str], base: type | None = None) -> bool:
    """Whether ``found`` is a class defined in one of the ``homes`` packages (and a subclass
    of ``base``)."""
    return (
        inspect.isclass(found)
        and _within(found.__module__, homes)
        and (base is None or issubclass(found, base))
    )


def canonical_path(cls: type) -> str:
    """``module.QualName`` of a class: the path that names it and nothing else."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _within(name: str, packages: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)
