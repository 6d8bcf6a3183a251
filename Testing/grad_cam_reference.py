"""pytorch-grad-cam (``pip install --no-deps grad-cam``), imported for the agreement tests.

pytorch-grad-cam imports torchvision at module level for image helpers (``Compose``,
``Normalize``, ``ToTensor``, ``resize``) that its CAM computations never call. torchvision's
wheels on PyPI are CUDA builds that would replace a CPU torch (and do not load beside one), so
where torchvision is absent the import sees a stand-in whose names raise when called.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


def _unavailable(name: str) -> Any:
    def call(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"torchvision.{name} is not installed (a stand-in for the import)")

    return call


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    torchvision = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    for name in ("Compose", "Normalize", "ToTensor"):
        setattr(transforms, name, _unavailable(f"transforms.{name}"))
    functional.resize = _unavailable("transforms.functional.resize")  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    torchvision.transforms = transforms  # type: ignore[attr-defined]
    return {
        "torchvision": torchvision,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    }


def pytorch_grad_cam() -> types.ModuleType:
    """The ``pytorch_grad_cam`` package; raises ImportError when grad-cam is not installed."""
    if "pytorch_grad_cam" in sys.modules:
        return sys.modules["pytorch_grad_cam"]
    importlib.util.find_spec("pytorch_grad_cam") or _missing()
    try:
        importlib.import_module("torchvision")
        return importlib.import_module("pytorch_grad_cam")
    except ImportError:
        pass
    stand_in = _torchvision_stand_in()
    saved = {name: sys.modules.get(name) for name in stand_in}
    sys.modules.update(stand_in)
    try:
        return importlib.import_module("pytorch_grad_cam")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _missing() -> None:
    raise ImportError(
        "grad-cam is not installed: pip install --no-deps grad-cam ttach opencv-python-headless"
    )
