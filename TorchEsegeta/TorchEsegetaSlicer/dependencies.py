"""First use: install what the engine needs into Slicer's Python, after asking.

Nothing is installed when the module loads; :func:`ensureDependencies` runs when the user
first asks for a model or a run. torch comes from the PyTorch extension (it picks the build
that fits the GPU and driver), the rest from pip, after torch, so pip never pulls a second torch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

# import name -> pip requirement; torch is installed by the PyTorch extension instead.
PIP_REQUIREMENTS = {
    "monai": "monai>=1.3",
    "captum": "captum>=0.7",
    "matplotlib": "matplotlib>=3.8",
}
REQUIRED_MODULES = ("torch", *PIP_REQUIREMENTS)


def missingModules(isInstalled: Callable[[str], bool] | None = None) -> list[str]:
    """The engine's required modules that cannot be imported, in install order (torch first)."""
    isInstalled = isInstalled or _isInstalled
    return [name for name in REQUIRED_MODULES if not isInstalled(name)]


def pipRequirements(missing: list[str]) -> list[str]:
    """The pip requirements for the missing modules other than torch."""
    return [PIP_REQUIREMENTS[name] for name in missing if name in PIP_REQUIREMENTS]


def installMessage(missing: list[str]) -> str:
    """The question asked before installing."""
    parts = []
    if "torch" in missing:
        parts.append("PyTorch (through the PyTorch extension)")
    requirements = pipRequirements(missing)
    if requirements:
        parts.append(", ".join(requirements) + " (with pip)")
    return (
        "TorchEsegeta needs Python packages that are not installed in Slicer yet: "
        + " and ".join(parts)
        + ".\n\nInstall them now? This downloads several hundred megabytes and may take a few "
        "minutes; Slicer may need a restart afterwards."
    )


def ensureDependencies(askConfirmation: bool = True) -> None:
    """Install the missing packages in Slicer's Python (asking first), or raise.

    Raises:
        RuntimeError: the user declined, or an installation failed; the message says what to do.
    """
    import slicer

    missing = missingModules()
    if not missing:
        return
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(installMessage(missing)):
        raise RuntimeError(
            f"TorchEsegeta cannot run without {', '.join(missing)}; apply again to install them"
        )
    if "torch" in missing:
        try:
            import PyTorchUtils
        except ImportError as e:
            raise RuntimeError(
                "PyTorch is missing and the PyTorch extension is not installed: install the "
                "'PyTorch' extension from the Extensions Manager, restart Slicer and try again"
            ) from e
        # The user already agreed above; the extension asks again only about its own choices.
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation)
        if torch is None:
            raise RuntimeError("PyTorch was not installed; TorchEsegeta cannot run without it")
    requirements = pipRequirements(missing)
    if requirements:
        with slicer.util.WaitCursor():
            slicer.util.pip_install(requirements)
    still = missingModules()
    if still:
        raise RuntimeError(
            f"could not import {', '.join(still)} after installing; restart Slicer and try again"
        )


def _isInstalled(name: str) -> bool:
    importlib.invalidate_caches()
    return importlib.util.find_spec(name) is not None
