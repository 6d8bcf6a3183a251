import pathlib
import time
from typing import Annotated

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from TorchEsegetaSlicer import display, jobBuilder, methodForms, modelInfo, panelView
from TorchEsegetaSlicer.jobBuilder import MODEL_KINDS, OUTPUTS, PRECISIONS, REGION_KINDS
from TorchEsegetaSlicer.panelView import MAX_INPUT_CHANNELS

DOCUMENTATION_URL = "https://github.com/soumickmj/TorchEsegeta#3d-slicer"


class TorchEsegeta(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TorchEsegeta")
        self.parent.categories = [_("Segmentation")]
        # torch comes from the PyTorch extension at first use, not when the module loads.
        self.parent.dependencies = []
        self.parent.contributors = ["TorchEsegeta developers"]
        self.parent.helpText = _(
            "Explain a 3D segmentation model: which voxels drove its decision. Pick the input "
            "volume(s), a model (TorchScript, MONAI network + checkpoint, MONAI bundle, or the "
            "built-in demo), the class and region to explain and the attribution methods, then "
            "Apply. Each map becomes a volume over the input, coloured sequentially (unsigned "
            "maps) or blue-white-red around zero (signed maps), in one folder per run.<br><br>"
            "Python console: <code>slicer.util.getModuleLogic('TorchEsegeta').explain(volume, "
            "methods=['saliency', 'gradcam'])</code>. See the "
            f'<a href="{DOCUMENTATION_URL}">documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "Based on: A. Chatterjee, C. Sarasaen, et al., <i>TorchEsegeta: Framework for "
            "Interpretability and Explainability of Image-based Deep Learning Models</i>, "
            "Applied Sciences 12(4):1834, 2022, "
            '<a href="https://doi.org/10.3390/app12041834">doi:10.3390/app12041834</a>. '
            "Attribution methods after captum; models through MONAI and PyTorch."
        )


@parameterNodeWrapper
class TorchEsegetaParameterNode:
    """Everything the panel shows, saved with the scene."""

    inputVolume0: vtkMRMLScalarVolumeNode
    inputVolume1: vtkMRMLScalarVolumeNode
    inputVolume2: vtkMRMLScalarVolumeNode
    inputVolume3: vtkMRMLScalarVolumeNode
    modelKind: Annotated[str, Choice(list(MODEL_KINDS))] = "demo"
    modelPath: pathlib.Path
    networkName: str = "UNet"
    networkKwargs: str = ""
    segmentation: vtkMRMLSegmentationNode
    targetClass: str = ""
    targetRegion: Annotated[str, Choice(list(REGION_KINDS))] = "predicted mask"
    targetSegmentId: str = ""
    targetRoi: vtkMRMLMarkupsROINode
    targetPoint: vtkMRMLMarkupsFiducialNode
    targetOutput: Annotated[str, Choice(list(OUTPUTS))] = "logits"
    methods: list[str]
    methodParameters: str = "{}"
    metrics: list[str]
    metricParameters: str = "{}"
    device: str = "auto"
    precision: Annotated[str, Choice(list(PRECISIONS))] = "float32"
    timeBudget: Annotated[float, WithinRange(0.0, 86400.0)] = 0.0
    outputFolder: pathlib.Path
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    showCompare: bool = True
    lastRunFolder: str = ""


class TorchEsegetaWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the .ui to the parameter node and hands every action to the logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._forms = {}
        self._shownModel = None
        self._updatingGUI = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TorchEsegeta.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TorchEsegetaLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onPollRun)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.loadDemoButton.connect("clicked(bool)", self.onLoadDemo)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.openRunFolderButton.connect("clicked(bool)", self.onOpenRunFolder)
        for listWidget in (self.ui.methodListWidget, self.ui.metricListWidget):
            listWidget.connect("itemChanged(QListWidgetItem*)", self.onCheckedChanged)
            listWidget.connect("currentRowChanged(int)", self.onCurrentItemChanged)
        self.ui.targetClassComboBox.connect("currentIndexChanged(int)", self.onTargetClassChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.targetSegmentSelector.connect(
            "currentSegmentChanged(QString)", self.onTargetSegmentChanged
        )
        self.ui.evaluationCollapsibleButton.setVisible(methodForms.evaluationAvailable())
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()
        self._timer.stop()
        if self._run is not None and not self._run.finished:
            self._run.worker.kill()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume0:
            self._parameterNode.inputVolume0 = slicer.mrmlScene.GetFirstNodeByClass(
                "vtkMRMLScalarVolumeNode"
            )

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
            self._shownModel = None
            self._updateGUI()

    # --- what the parameter node cannot bind by itself -------------------------------------

    def _showForms(self):
        p = self._parameterNode
        self._forms = {
            "methodParameters": panelView.showForm(
                self.ui.methodListWidget,
                self.ui.methodParametersGroupBox,
                methodForms.methodDescriptions(),
                self.logic.layerNames(p),
                p.methodParameters,
                lambda *args: self.onParameterEdited("methodParameters"),
            ),
            "metricParameters": panelView.showForm(
                self.ui.metricListWidget,
                self.ui.metricParametersGroupBox,
                methodForms.metricDescriptions(),
                None,
                p.metricParameters,
                lambda *args: self.onParameterEdited("metricParameters"),
            ),
        }

    def _updateGUI(self, caller=None, event=None):
        p = self._parameterNode
        if p is None or self._updatingGUI:
            return
        # Setting widgets below may write back to the parameter node: no re-entry.
        self._updatingGUI = True
        try:
            model = self.logic.modelState(p)
            if model != self._shownModel:
                # Channels, classes, layers (methods) follow the model; rebuilt only when it changes.
                self._shownModel = model
                card = self.logic.modelCard(p)
                panelView.showModelDependent(self.ui, p, card, self.logic.offeredMethods(p))
                self._showForms()
            running = self._run is not None and not self._run.finished
            panelView.showUnboundState(self.ui, p, running)
            display.setMapOpacity(slicer.mrmlScene, p.opacity)
        finally:
            self._updatingGUI = False

    # --- handlers --------------------------------------------------------------------------

    def onLoadDemo(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to load the demo."), waitCursor=True):
            self._parameterNode.inputVolume0 = self.logic.loadDemoVolume()
            self._parameterNode.modelKind = "demo"

    def onLoadModel(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to load the model."), waitCursor=True):
            self.logic.loadModel(self._parameterNode)
            self._updateGUI()

    def onSegment(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to segment."), waitCursor=True):
            self._parameterNode.segmentation = self.logic.segment(self._parameterNode)

    def onCheckedChanged(self, item=None):
        with slicer.util.tryWithErrorDisplay(_("Failed to update the selection.")):
            self._parameterNode.methods = panelView.checkedNames(self.ui.methodListWidget)
            self._parameterNode.metrics = panelView.checkedNames(self.ui.metricListWidget)

    def onCurrentItemChanged(self, row=None):
        with slicer.util.tryWithErrorDisplay(_("Failed to show the parameters.")):
            self._showForms()

    def onParameterEdited(self, field):
        with slicer.util.tryWithErrorDisplay(_("Failed to save the parameter.")):
            saved = methodForms.savedWithForm(
                self._forms[field], getattr(self._parameterNode, field)
            )
            setattr(self._parameterNode, field, saved)

    def onTargetClassChanged(self, index):
        with slicer.util.tryWithErrorDisplay(_("Failed to set the class.")):
            if index >= 0:
                self._parameterNode.targetClass = self.ui.targetClassComboBox.itemData(index)

    def onDeviceChanged(self, index):
        with slicer.util.tryWithErrorDisplay(_("Failed to set the device.")):
            if index >= 0:
                self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onTargetSegmentChanged(self, segmentId):
        with slicer.util.tryWithErrorDisplay(_("Failed to set the segment.")):
            self._parameterNode.targetSegmentId = segmentId or ""

    def onApply(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to start the run."), waitCursor=True):
            self.ui.logTextEdit.clear()
            self._run = self.logic.startRun(self._parameterNode)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting...")
            self._timer.start()
            self._updateGUI()

    def onCancel(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to cancel the run.")):
            if self._run is not None:
                self._run.cancel()
                self.ui.statusLabel.text = _("Cancelling...")

    def onPollRun(self):
        with slicer.util.tryWithErrorDisplay(_("The run failed.")):
            protocol = self._run.protocol
            logged = len(protocol.log)
            self._run.poll()
            for line in protocol.log[logged:]:
                self.ui.logTextEdit.appendPlainText(line)
            self.ui.progressBar.value = int(100 * protocol.fraction)
            self.ui.statusLabel.text = protocol.message
            if self._run.finished:
                self._timer.stop()
                self._updateGUI()
                self.logic.finishRun(self._run, self._parameterNode)

    def onOpenRunFolder(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to open the run folder.")):
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(self._parameterNode.lastRunFolder))


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
            model: "demo", a TorchScript file or MONAI bundle folder path, or a model reference
                dict such as ``{"kind": "monai", "network": "UNet", "kwargs": {...},
                "checkpoint": "model.pt"}``.
            methods: method names (``torchesegeta methods`` lists them) or
                ``{"name": ..., "params": {...}}`` dicts.
            target: None (the predicted mask of ``targetClass``), a segmentation node
                (``segmentId=`` picks the segment), a markups ROI node, a markups point list,
                or an engine target such as "voxel:32,30,20".
            show: overlay the first map on the input and compare up to four side by side.
            options: metrics, targetClass, segmentId, output ("logits" or "probabilities"),
                card, device, seed, methodBudgetSeconds, maxBatch, folderName.

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
        from TorchEsegetaSlicer import layouts

        maps = list(nodes["maps"].values())
        if not maps or not slicer.app.layoutManager():
            return
        slicer.util.setSliceViewerLayers(background=backgroundNode, fit=True)
        display.showAsForeground(slicer.mrmlScene, maps[0], opacity)
        display.showColorLegend(slicer.modules.colors.logic(), maps[0])
        if compare and len(maps) > 1:
            layouts.showCompareLayout(maps, backgroundNode, opacity)

    def modelReference(self, p):
        return jobBuilder.modelReference(p.modelKind, p.modelPath, p.networkName, p.networkKwargs)

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
        card = self.modelCard(p)
        channels = card.in_channels if card else 1
        if channels > MAX_INPUT_CHANNELS:
            raise ValueError(
                f"the model takes {channels} channels; the panel offers {MAX_INPUT_CHANNELS}: "
                "use TorchEsegetaLogic().explain or batch mode"
            )
        nodes = [getattr(p, f"inputVolume{index}") for index in range(channels)]
        if not all(nodes):
            raise ValueError(f"the model takes {channels} input volume(s); choose each of them")
        return nodes

    def segment(self, p):
        """Run the model on the inputs; returns a new segmentation node (segments named by class)."""
        from TorchEsegetaSlicer import consoleApi

        loaded = self.loadModel(p)
        return consoleApi.segmentNodes(slicer.mrmlScene, self.inputVolumes(p), loaded, p.device)

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
        from TorchEsegetaSlicer.process import CANCELLED, DONE

        if run.protocol.state == CANCELLED:
            return None
        if run.protocol.state != DONE:
            raise RuntimeError(run.protocol.errorMessage)
        nodes = run.load(slicer.mrmlScene)
        p.lastRunFolder = str(run.runFolder)
        self.showResults(nodes, run.referenceVolumeNode, p.opacity, p.showCompare)
        return nodes


class TorchEsegetaTest(ScriptedLoadableModuleTest):
    """Runs in Slicer: the demo explained in-process and through the worker, nodes checked."""

    def setUp(self):
        from TorchEsegetaSlicer import dependencies

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
