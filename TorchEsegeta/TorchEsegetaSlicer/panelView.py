"""How the panel shows what its parameter node cannot bind by itself: which widgets are
visible, combo boxes and checkable lists filled at run time, the parameter forms of methods
and metrics. Functions take the panel's ``ui`` (its named child widgets) and parameter node."""

from __future__ import annotations

from . import jobBuilder, methodForms, modelInfo

MAX_INPUT_CHANNELS = 4


def showModelDependent(ui, p, card, offeredMethods) -> None:
    """Channel selectors, classes, devices, methods and metrics follow the model (``card``)."""
    ui.modelSummaryLabel.text = (
        card.summary() if card else "Load the model to see its channels and classes."
    )
    channels = min(card.in_channels if card else 1, MAX_INPUT_CHANNELS)
    channelWidgets = (
        (ui.inputVolume0Label, ui.inputVolume0Selector),
        (ui.inputVolume1Label, ui.inputVolume1Selector),
        (ui.inputVolume2Label, ui.inputVolume2Selector),
        (ui.inputVolume3Label, ui.inputVolume3Selector),
    )
    for index, widgets in enumerate(channelWidgets):
        for widget in widgets:
            widget.setVisible(index < channels)
    classes = modelInfo.classChoices(card)
    if p.targetClass not in classes.values():
        p.targetClass = modelInfo.defaultClass(card)
    fillComboBox(ui.targetClassComboBox, classes, p.targetClass)
    devices = jobBuilder.deviceChoices(jobBuilder.installedCudaDeviceCount())
    if p.device not in devices:
        p.device = "auto"
    fillComboBox(ui.deviceComboBox, devices, p.device)
    # A method the model cannot run (a layer method for TorchScript) is no longer checked.
    offered = {d["name"] for d in offeredMethods}
    if any(name not in offered for name in p.methods):
        p.methods = [name for name in p.methods if name in offered]
    fillCheckList(ui.methodListWidget, offeredMethods, p.methods)
    fillCheckList(ui.metricListWidget, methodForms.metricDescriptions(), p.metrics)


def showUnboundState(ui, p, running: bool) -> None:
    """Visibility and enabled state that follow the parameter node's values."""
    import ctk

    for widget in (ui.modelPathLabel, ui.modelPathLineEdit):
        widget.setVisible(p.modelKind != "demo")
    for widget in (
        ui.networkLabel,
        ui.networkLineEdit,
        ui.networkKwargsLabel,
        ui.networkKwargsLineEdit,
    ):
        widget.setVisible(p.modelKind == "monai")
    folder = p.modelKind in jobBuilder.FOLDER_KINDS
    for widget in (ui.trustModelCheckBox, ui.trustModelWarningLabel):
        widget.setVisible(folder)
    kind = ctk.ctkPathLineEdit.Dirs if folder else ctk.ctkPathLineEdit.Files
    ui.modelPathLineEdit.filters = kind | ctk.ctkPathLineEdit.Readable
    for region, widgets in (
        ("segment", (ui.targetSegmentLabel, ui.targetSegmentSelector)),
        ("ROI", (ui.targetRoiLabel, ui.targetRoiSelector)),
        ("point", (ui.targetPointLabel, ui.targetPointSelector)),
    ):
        for widget in widgets:
            widget.setVisible(p.targetRegion == region)
    ui.targetSegmentSelector.setCurrentNode(p.segmentation)
    if p.targetSegmentId:
        ui.targetSegmentSelector.setCurrentSegmentID(p.targetSegmentId)
    ready = bool(p.inputVolume0 and p.methods)
    ui.applyButton.enabled = ready and not running
    ui.applyButton.toolTip = (
        "Explain the segmentation with the checked methods"
        if ready
        else "Choose an input volume and check at least one method"
    )
    ui.cancelButton.enabled = running
    ui.segmentButton.enabled = bool(p.inputVolume0) and not running
    ui.openRunFolderButton.enabled = bool(p.lastRunFolder)
    ui.runFolderLabel.text = p.lastRunFolder


def fillComboBox(comboBox, values, current) -> None:
    """Items from ``{label: value}`` (or a list of values); select ``current``; no signals."""
    pairs = values.items() if isinstance(values, dict) else [(v, v) for v in values]
    wasBlocked = comboBox.blockSignals(True)
    comboBox.clear()
    for label, value in pairs:
        comboBox.addItem(label, value)
    comboBox.setCurrentIndex(max(0, comboBox.findData(current)))
    comboBox.blockSignals(wasBlocked)


def fillCheckList(listWidget, descriptions, checked) -> None:
    """One checkable item per registry entry (title shown, name as data); no signals."""
    import qt

    wasBlocked = listWidget.blockSignals(True)
    listWidget.clear()
    for description in descriptions:
        item = qt.QListWidgetItem(description.get("title") or description["name"])
        item.setData(qt.Qt.UserRole, description["name"])
        item.setToolTip(methodForms.itemToolTip(description))
        item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
        item.setCheckState(qt.Qt.Checked if description["name"] in checked else qt.Qt.Unchecked)
        listWidget.addItem(item)
    listWidget.blockSignals(wasBlocked)


def checkedNames(listWidget) -> list[str]:
    import qt

    return [
        listWidget.item(row).data(qt.Qt.UserRole)
        for row in range(listWidget.count)
        if listWidget.item(row).checkState() == qt.Qt.Checked
    ]


def showForm(listWidget, groupBox, descriptions, layerNames, savedJson, onChanged) -> dict:
    """Show the parameters of the list's current item in ``groupBox``; ``onChanged()`` is
    called on every edit. Returns the form for :func:`methodForms.savedWithForm`."""
    import qt

    item = listWidget.currentItem()
    byName = {d["name"]: d for d in descriptions}
    description = byName.get(item.data(qt.Qt.UserRole)) if item else None
    form = methodForms.parameterForm(groupBox.layout(), description, layerNames, savedJson)
    groupBox.title = f"Parameters of {item.text()}" if item else "Parameters"
    groupBox.setVisible(bool(form["specs"]))
    for spec in form["specs"]:
        form["widgets"][spec["name"]].connect(methodForms.changedSignal(spec), onChanged)
    return form
