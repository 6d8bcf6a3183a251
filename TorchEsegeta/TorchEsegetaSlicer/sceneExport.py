"""Save the scene as one Medical Reality Bundle (.mrb) and read one back."""

from __future__ import annotations

from pathlib import Path

import slicer


def saveSceneBundle(scene, path) -> Path:
    """Write every node of the scene, with its data files, into one ``.mrb`` file.

    Raises:
        ValueError: the file name does not end in .mrb.
        RuntimeError: Slicer could not write the bundle (the messages say why).
    """
    path = Path(path)
    if path.suffix.lower() != ".mrb":
        raise ValueError(f"{path} must end in .mrb (a Medical Reality Bundle)")
    path.parent.mkdir(parents=True, exist_ok=True)
    messages = slicer.vtkMRMLMessageCollection()
    if not scene.WriteToMRB(str(path), None, messages):
        raise RuntimeError(f"could not save the scene to {path}: {_text(messages)}")
    return path


def loadSceneBundle(scene, path, clear: bool = True) -> None:
    """Read a ``.mrb`` file into ``scene`` (emptied first unless ``clear`` is False).

    Raises:
        RuntimeError: Slicer could not read the bundle (the messages say why).
    """
    messages = slicer.vtkMRMLMessageCollection()
    if not scene.ReadFromMRB(str(path), clear, messages):
        raise RuntimeError(f"could not load the scene bundle {path}: {_text(messages)}")


def _text(messages) -> str:
    return messages.GetAllMessagesAsString() or "no details reported"
