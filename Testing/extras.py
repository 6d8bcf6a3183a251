"""Tests of an optional extra ([ray], [view], [nnunet]) skip where it is not installed, with a
reason naming it; CI installs every extra and sets REQUIRE_EXTRAS, under which such a skip is a
failure instead (hooks registered by conftest.py).

The README's test command installs the [test] extra only, so on a fresh machine these tests
skip; a CI that silently skipped them would test less than it claims.
"""

from __future__ import annotations

import importlib
import os
import re

import pytest

REQUIRE_EXTRAS = "TORCHESEGETA_REQUIRE_EXTRAS"

# The top-level modules each extra of pyproject.toml brings (what its tests import).
EXTRA_MODULES = {
    "ray": ("ray",),
    "view": ("trame", "trame_vuetify", "trame_rca", "trame_slicer", "slicer_layer_dm"),
    "nnunet": ("nnunetv2",),
}
_MODULE_EXTRA = {module: extra for extra, modules in EXTRA_MODULES.items() for module in modules}
# A reason that names an extra ("needs torchesegeta[view]", "the [ray] extra", "the nnunet
# extra"), or pytest.importorskip's own about one of its modules ("could not import 'ray.util'").
_NAMED_EXTRA = re.compile(r"torchesegeta\[(\w+)\]|\[(\w+)\] extra|\bthe (\w+) extra\b")
_IMPORT_OF = re.compile(r"could not import '([\w.]+)'")


def skip_reason(extra: str, detail: str) -> str:
    return f"needs torchesegeta[{extra}]: {detail}"


def require_extra(extra: str, *modules: str) -> None:
    """Skip the test (or, at module level, the module) unless the extra's modules import."""
    for module in modules or EXTRA_MODULES[extra]:
        try:
            importlib.import_module(module)
        except ImportError as error:
            detail = f'{error} (pip install -e ".[{extra}]")'
            pytest.skip(skip_reason(extra, detail), allow_module_level=True)


def missing_extra(reason: str) -> str | None:
    """The extra a skip reason says is missing, if any."""
    for named in _NAMED_EXTRA.finditer(reason):
        extra = next(group for group in named.groups() if group)
        if extra in EXTRA_MODULES:
            return extra
    imported = _IMPORT_OF.search(reason)
    if imported:
        return _MODULE_EXTRA.get(imported.group(1).split(".")[0])
    return None


def fail_skipped_extra(report: pytest.CollectReport | pytest.TestReport) -> None:
    """Under REQUIRE_EXTRAS, turn a skip for a missing extra into a failure."""
    if not (report.skipped and os.environ.get(REQUIRE_EXTRAS)) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    extra = missing_extra(reason)
    if extra is None:
        return
    report.outcome = "failed"
    report.longrepr = (
        f"{REQUIRE_EXTRAS} is set (CI installs every extra), yet the [{extra}] extra's test "
        f"was skipped: {reason}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    fail_skipped_extra(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    fail_skipped_extra(outcome.get_result())
