"""The module's panel: binds the .ui to the parameter node and hands every action to the logic.

A mixin of the module's widget (TorchEsegeta.py), which loads the .ui and makes the logic; it
needs the application (``qt``, ``slicer.util.loadUI``), so it is checked statically in tests.
"""

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

from . import display, methodForms, panelView


class PanelWidget(VTKObservationMixin):
    def __init__(self):
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._forms = {}
        self._shownModel = None
        self._updatingGUI = False

    def setupPanel(self, uiWidget, logic):
        """Connect the loaded .ui (already in the panel's layout) to ``logic``."""
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logic
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
        self.ui.targetVersusComboBox.connect("currentIndexChanged(int)", self.onTargetVersusChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.targetSegmentSelector.connect(
            "currentSegmentChanged(QString)", self.onTargetSegmentChanged
        )
        # a point target is one point: each click places one (the list's first is the target)
        self.ui.targetPointPlaceWidget.placeMultipleMarkups = (
            slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        )
        self.ui.evaluationCollapsibleButton.setVisible(methodForms.evaluationAvailable())
        self.initializeParameterNode()

    def cleanupPanel(self):
        """Stop observing and polling; a run still going is killed."""
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

    def onTargetVersusChanged(self, index):
        with slicer.util.tryWithErrorDisplay(_("Failed to set the class to contrast with.")):
            if index >= 0:
                self._parameterNode.targetVersus = self.ui.targetVersusComboBox.itemData(index)

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
                nodes = self.logic.finishRun(self._run, self._parameterNode)
                # what the run noted (approximations, fallbacks, incomplete sums) goes to the log
                for warning in (nodes or {}).get("run", {}).get("warnings", []):
                    self.ui.logTextEdit.appendPlainText(_("Note: ") + warning)

    def onOpenRunFolder(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to open the run folder.")):
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(self._parameterNode.lastRunFolder))
