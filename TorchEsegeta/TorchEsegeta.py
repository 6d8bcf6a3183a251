import logging
import pathlib
import time

import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from TorchEsegetaSlicer.compatibility import pythonProblem

# Up to here the file runs on Python 3.9 (Slicer 5.8 and older); the panel and the engine need
# 3.10, so an older Slicer gets one line and a module that shows it instead of a traceback.
PYTHON_PROBLEM = pythonProblem()
if PYTHON_PROBLEM:
    logging.error(PYTHON_PROBLEM)
    PanelWidget = object
else:
    from TorchEsegetaSlicer import jobBuilder, layouts, methodForms, modelInfo
    from TorchEsegetaSlicer.panelWidget import PanelWidget
    from TorchEsegetaSlicer.parameterNode import TorchEsegetaParameterNode


class TorchEsegeta(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TorchEsegeta")
        self.parent.categories = [_("Segmentation")]
        # torch comes from the PyTorch extension at first use, not when the module loads.
        self.parent.dependencies = []
        self.parent.contributors = ["TorchEsegeta developers"]
        self.parent.helpText = PYTHON_PROBLEM or _(
            "Explain a 3D segmentation model: which voxels drove its decision. Pick the input "
            "volume(s), a model (TorchScript, MONAI network + checkpoint, MONAI bundle, nnU-Net v2 model folder, or the "
            "built-in demo), the class and region to explain and the attribution methods, then "
            "Apply. Each map becomes a volume over the input, coloured sequentially (unsigned "
            "maps) or blue-white-red around zero (signed maps), in one folder per run.<br><br>"
            "Python console: <code>slicer.util.getModuleLogic('TorchEsegeta').explain(volume, "
            "methods=['saliency', 'gradcam'])</code>. The README.md of the TorchEsegeta "
            "repository (the folder above this module's) documents the methods, the metrics, "
            "the batch script and the command line."
        )
        self.parent.acknowledgementText = _(
            "Based on: S. Chatterjee, A. Das, C. Mandal, B. Mukhopadhyay, M. Vipinraj, A. Shukla, "
            "R. Nagaraja Rao, C. Sarasaen, O. Speck, A. Nürnberger, <i>TorchEsegeta: "
            "Framework for Interpretability and Explainability of Image-based Deep Learning "
            "Models</i>, Applied Sciences 12(4):1834, 2022, "
            '<a href="https://doi.org/10.3390/app12041834">doi:10.3390/app12041834</a>. '
            "Attribution methods after captum; models through MONAI and PyTorch."
        )


class TorchEsegetaWidget(ScriptedLoadableModuleWidget, PanelWidget):
    """The panel (TorchEsegetaSlicer/panelWidget.py) on the module's .ui and logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        PanelWidget.__init__(self)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        if PYTHON_PROBLEM:
            import qt

            self.layout.addWidget(qt.QLabel(PYTHON_PROBLEM))
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TorchEsegeta.ui"))
        self.layout.addWidget(uiWidget)
        self.setupPanel(uiWidget, TorchEsegetaLogic())

    def cleanup(self):
        if not PYTHON_PROBLEM:
            self.cleanupPanel()


class TorchEsegetaLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, usable without it (Python console, other modules, tests)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._models = modelInfo.ModelCache()

    def getParameterNode(self):
        return TorchEsegetaParameterNode(super().getParameterNode())

    def explain(
        self, volumeNodes, model="demo", methods=("saliency",), target=None, show=True, **options
    ):
        """Explain a segmentation in this process; blocks, returns the new nodes.

        Args:
            volumeNodes: a scalar volume node, or one per model input channel.
            model: "demo", a TorchScript file, MONAI bundle folder or nnU-Net v2 model folder path, or a model reference
                dict such as ``{"kind": "monai", "network": "UNet", "kwargs": {...},
                "checkpoint": "model.pt"}``.
            methods: method names (``torchesegeta methods`` lists them) or
                ``{"name": ..., "params": {...}}`` dicts.
            target: None (the predicted mask of ``targetClass``), a segmentation node
                (``segmentId=`` picks the segment), a markups ROI node, a markups point list,
                or an engine target such as "voxel:32,30,20".
            show: overlay the first map on the input and compare up to four side by side.
            options: metrics, targetClass, segmentId, output ("logits" or "probabilities"),
                card, device, seed, methodBudgetSeconds, maxBatch, precision ("float32",
                "bfloat16" or "float16"), cropMargin (whole-volume models: explain on the
                target's box grown by this many voxels, a measured approximation),
                flushDenormals (default True: on the CPU, denormal floats flushed to zero
                during the run only, checked against exact arithmetic first), folderName.

        Returns:
            ``{"maps": {label: volume node}, "segmentation": node, "table": node or None,
            "charts": {...}, "folderItemId": ..., "skipped": {...}, "result": ...}``.

        Example::

            logic = slicer.util.getModuleLogic("TorchEsegeta")
            volume = logic.loadDemoVolume()
            nodes = logic.explain(volume, methods=["saliency", "gradcam"], targetClass="vessel")
            roi = slicer.util.getNode("R")
            nodes = logic.explain(volume, methods=["integrated_gradients"], target=roi)
        """
        from TorchEsegetaSlicer import consoleApi, dependencies

        dependencies.ensureDependencies()
        nodes = consoleApi.explainNodes(
            slicer.mrmlScene, volumeNodes, model, methods, target, **options
        )
        if show:
            reference = volumeNodes[0] if isinstance(volumeNodes, (list, tuple)) else volumeNodes
            self.showResults(nodes, reference)
        return nodes

    def showResults(self, nodes, backgroundNode, opacity=0.5, compare=True):
        """Overlay the first map with its colour legend; compare up to four maps side by side."""
        layouts.showResults(slicer.mrmlScene, nodes, backgroundNode, opacity, compare)

    def modelReference(self, p):
        return jobBuilder.modelReference(
            p.modelKind, p.modelPath, p.networkName, p.networkKwargs, p.trustModel
        )

    def loadModel(self, p):
        """Load (once) the panel's model, installing torch & co. first if needed."""
        from TorchEsegetaSlicer import dependencies

        dependencies.ensureDependencies()
        return self._models.load(self.modelReference(p))

    def _referenceOrNone(self, p):
        try:
            return self.modelReference(p)
        except jobBuilder.PanelInputError:
            return None

    def modelCard(self, p):
        return self._models.card(self._referenceOrNone(p))

    def modelState(self, p):
        return self._models.state(self._referenceOrNone(p))

    def layerNames(self, p):
        return self._models.layers(self._referenceOrNone(p))

    def offeredMethods(self, p):
        return methodForms.offeredMethods(methodForms.methodDescriptions(), self.layerNames(p))

    def loadDemoVolume(self):
        """Add the demo's synthetic MRA-like volume to the scene and show it."""
        from TorchEsegetaSlicer import consoleApi

        node = consoleApi.addDemoVolume(slicer.mrmlScene)
        slicer.util.setSliceViewerLayers(background=node, fit=True)
        return node

    def inputVolumes(self, p):
        from TorchEsegetaSlicer import panelRun

        return panelRun.inputVolumes(p, self.modelCard(p))

    def segment(self, p):
        """Run the model on the inputs; returns a new segmentation node (segments named by class)."""
        from TorchEsegetaSlicer import consoleApi

        loaded = self.loadModel(p)
        return consoleApi.segmentNodes(
            slicer.mrmlScene, self.inputVolumes(p), loaded, p.device, p.flushDenormals
        )

    def startRun(self, p):
        """Start the worker process for the panel's settings; returns the run to poll."""
        from TorchEsegetaSlicer import dependencies, panelRun

        dependencies.ensureDependencies()
        request = panelRun.requestFromPanel(
            p,
            self.inputVolumes(p),
            self.modelReference(p),
            defaultOutputFolder=pathlib.Path(slicer.app.temporaryPath) / "TorchEsegeta",
        )
        return panelRun.startRun(request)

    def finishRun(self, run, p):
        """Load a finished run (or raise with the engine's message); returns the new nodes."""
        from TorchEsegetaSlicer import panelRun

        nodes = panelRun.loadFinishedRun(slicer.mrmlScene, run, p)
        if nodes is not None:
            self.showResults(nodes, run.referenceVolumeNode, p.opacity, p.showCompare)
        return nodes


class TorchEsegetaTest(ScriptedLoadableModuleTest):
    """Runs in Slicer: the demo explained in-process and through the worker, nodes checked."""

    def setUp(self):
        from TorchEsegetaSlicer import dependencies

        if PYTHON_PROBLEM:
            self.skipTest(PYTHON_PROBLEM)
        if dependencies.missingModules():
            self.skipTest("install torch, monai and captum first (Apply once in the panel)")
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ExplainDemoInProcess()
        self.setUp()
        self.test_PanelRunThroughWorker()

    def test_ExplainDemoInProcess(self):
        self.delayDisplay("Explaining the demo with two methods in-process")
        logic = TorchEsegetaLogic()
        volumeNode = logic.loadDemoVolume()
        nodes = logic.explain(volumeNode, methods=["saliency", "integrated_gradients"])
        self.assertEqual(set(nodes["maps"]), {"saliency", "integrated_gradients"})
        self._checkNodes(nodes, volumeNode)
        self.delayDisplay("In-process explanation passed")

    def test_PanelRunThroughWorker(self):
        self.delayDisplay("Explaining the demo through the worker process")
        logic = TorchEsegetaLogic()
        p = logic.getParameterNode()
        p.inputVolume0 = logic.loadDemoVolume()
        p.modelKind = "demo"
        p.methods = ["saliency", "gradcam"]
        run = logic.startRun(p)
        while not run.finished:
            run.poll()
            slicer.app.processEvents()
            time.sleep(0.1)
        self.assertEqual(run.protocol.state, "done", run.protocol.errorMessage)
        nodes = logic.finishRun(run, p)
        self.assertEqual(set(nodes["maps"]), {"saliency", "gradcam"})
        self._checkNodes(nodes, p.inputVolume0)
        self.assertTrue(pathlib.Path(p.lastRunFolder, "run.json").is_file())
        self.delayDisplay("Worker run passed")

    def _checkNodes(self, nodes, volumeNode):
        import numpy as np
        from TorchEsegetaSlicer.volumeNodes import ijkToRasArray

        shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
        for node in nodes["maps"].values():
            np.testing.assert_allclose(ijkToRasArray(node), ijkToRasArray(volumeNode), atol=1e-5)
            colorNode = node.GetDisplayNode().GetColorNode()
            self.assertTrue(colorNode.GetName().startswith("TorchEsegeta"))
            item = shNode.GetItemByDataNode(node)
            self.assertEqual(shNode.GetItemParent(item), nodes["folderItemId"])
        segmentation = nodes["segmentation"].GetSegmentation()
        self.assertTrue(segmentation.GetSegmentIdBySegmentName("vessel"))
