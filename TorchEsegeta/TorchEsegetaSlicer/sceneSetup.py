"""A scene with the module logics the glue needs, for Python without the Slicer application.

Inside Slicer the application builds all of this; the batch script and the tests, run with a
plain Python interpreter on the ``slicer-core`` wheel, use :func:`newScene` instead.
"""

from __future__ import annotations

import slicer

MODULE_LOGICS = {
    "Colors": "vtkSlicerColorLogic",
    "Volumes": "vtkSlicerVolumesLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
}


def hasApplication() -> bool:
    """Whether this Python runs inside the Slicer application (its scene and logics exist)."""
    return hasattr(slicer, "app") and hasattr(slicer, "mrmlScene")


def newScene(cacheFolder):
    """A new scene with the Colors/Volumes/Segmentations/SubjectHierarchy logics registered and
    the default colours added; it becomes ``slicer.mrmlScene``. Returns (scene, {name: logic}).

    ``cacheFolder`` plays the application's cache: reading a .mrb unpacks it there.
    """
    scene = slicer.vtkMRMLScene()
    cacheManager = slicer.vtkCacheManager()
    cacheManager.SetRemoteCacheDirectory(str(cacheFolder))
    dataIOManager = slicer.vtkDataIOManager()
    dataIOManager.SetCacheManager(cacheManager)
    scene.SetCacheManager(cacheManager)
    scene.SetDataIOManager(dataIOManager)
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    logics = {"Application": appLogic}
    for moduleName, className in MODULE_LOGICS.items():
        logic = getattr(slicer, className)()
        logic.SetMRMLApplicationLogic(appLogic)
        logic.SetMRMLScene(scene)
        appLogic.SetModuleLogic(moduleName, logic)
        logics[moduleName] = logic
    logics["Colors"].AddDefaultColorNodes()
    logics["DataIO"] = dataIOManager
    slicer.mrmlScene = scene
    return scene, logics
