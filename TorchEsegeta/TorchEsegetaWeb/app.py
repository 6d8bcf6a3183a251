"""The viewer: a trame server holding one trame-slicer scene, its views and the side panel.

Browser actions change the trame state; each state change becomes one call of the Slicer
module's display helpers (``showAsForeground``, ``setMapOpacity``, ``linkCompareViews``) on the
scene, and trame-slicer streams the re-rendered views back as lossless PNG images, so the
colours on screen are those of the colour tables.
"""

from __future__ import annotations

from pathlib import Path

import slicer
from TorchEsegetaSlicer.display import setMapOpacity, showAsForeground
from TorchEsegetaSlicer.layouts import MAX_COMPARED, linkCompareViews, orientationLetters
from trame_rca.encoders import RcaImageEncoder
from trame_slicer import module as trameSlicerModule
from trame_slicer.app.ui import (
    create_vertical_slice_view_gutter_ui,
    create_vertical_view_gutter_ui,
)
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories

from TorchEsegetaLib.figures import display as engineDisplay
from TorchEsegetaLib.figures.metric_figures import format_value
from TorchEsegetaLib.runs.structures import read_structures_csv
from TorchEsegetaLib.runs.summary import summary_of
from TorchEsegetaLib.runs.summary_text import colour_meaning, describe_run

from . import panel, views
from .caseScene import CaseNodes, loadCase, unloadCase
from .httpFiles import addFileRoute, fileUrl
from .metricsView import (
    curvesDataUrl,
    rankingTable,
    scoresByMethod,
    structuresByMethod,
    uncertaintyTable,
)
from .runSource import ViewerRun, openRun


class ViewerApp:
    """One viewer on ``server``: the cases it can show, by name (one for a single run folder).

    Args:
        server: a trame server (``trame.app.get_server(client_type="vue3")``).
        cases: ``{name: run folder}``; the first is shown first.
        images: input images that replace the runs' own (``--image``), or None.
        fileRoot: the folder whose files the page may link to (the run or results folder).
    """

    def __init__(self, server, cases: dict, images=None, fileRoot=None):
        self.server = server
        self.cases = dict(cases)
        self.images = images
        self.case: CaseNodes | None = None
        self.slicerApp = SlicerApp()
        scene = self.scene = self.slicerApp.scene
        # The glue's slicer.util calls find the scene here, as in the application.
        slicer.mrmlScene = scene
        # The colour legends of the Slicer module; the node class is the Colors module's.
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
        self.colorLogic = slicer.vtkSlicerColorLogic()
        server.enable_module(trameSlicerModule)
        register_rca_factories(
            self.slicerApp.view_manager,
            server,
            slice_view_ui_f=self._sliceViewUi,
            three_d_view_ui_f=self._threeDViewUi,
            rca_encoder=RcaImageEncoder.PNG,
        )
        self.layoutManager = LayoutManager(scene, self.slicerApp.view_manager, server)
        self.layoutManager.register_layout(views.VIEWS_LAYOUT_ID, views.viewsLayout())
        self.layoutManager.set_layout(views.VIEWS_LAYOUT_ID)
        for name in views.MAIN_SLICE_VIEWS:
            self.slicerApp.view_manager.get_view(name).set_visible_in_3d(True)
        self.crosshair = views.linkCrosshair(scene, self._onCursorMoved)
        if fileRoot is not None:
            server.controller.on_server_bind.add(lambda wslink: addFileRoute(wslink.app, fileRoot))
        self.fileRoot = fileRoot
        self._initialState()
        self.ui = panel.buildUi(server, self.layoutManager, cohort=len(self.cases) > 1)
        self._bindState()
        self.showCase(next(iter(self.cases)))

    # --- cases ---------------------------------------------------------------------------------

    def showCase(self, name: str) -> None:
        """Replace the shown case (its scene nodes, panel and views) with ``name``."""
        run = openRun(self.cases[name], self.images)
        if self.case is not None:
            unloadCase(self.scene, self.case)
            self.case = None
        self.case = loadCase(self.scene, self.colorLogic, run)
        state = self.server.state
        maps = self.case.maps
        summary = summary_of(run.folder, run.record)
        structures = read_structures_csv(run.folder)
        sentences = describe_run(run.record, summary, structures)
        state.current_case = name
        state.method_items = [
            {"value": m.label, "title": _mapTitle(m)} for m in run.maps if m.label in maps
        ]
        state.channel_items = [
            {"value": index, "title": node.GetName()}
            for index, node in enumerate(self.case.channels)
        ]
        state.channel = 0
        state.summary_paragraphs = [text for topic, text in sentences if topic != "caveat"]
        state.summary_caveats = [text for topic, text in sentences if topic == "caveat"]
        state.ranking = rankingTable(summary)
        state.scores = scoresByMethod(run.evaluation)
        state.structures = structuresByMethod(structures)
        # The map to look at first (summary.json), then the others in the ranking's order.
        ranked = [row["method"] for row in state.ranking if row["method"] in maps]
        ordered = ranked + [label for label in maps if label not in ranked]
        lookFirst = (summary or {}).get("look_first")
        state.method = lookFirst if lookFirst in maps else ordered[0]
        state.compare = _compared(run, ordered)
        state.curves_src = curvesDataUrl(run.evaluation)
        state.uncertainty = uncertaintyTable(run.record.get("uncertainty_summary"))
        state.run_info = _runInfo(run)
        state.links = self._links(name, run)
        state.skipped = [f"{label}: {status}" for label, status in run.skipped.items()]
        self._showBackground(0)
        self._showMethod(state.method)
        self._showCompare()
        self._showViewLetters()
        self._setSegmentationVisible(state.outline)
        views.centreCrosshair(self.crosshair, self.case.channels[0])
        for view in self.slicerApp.view_manager.get_views():
            view.reset_view()

    # --- state -> scene ------------------------------------------------------------------------

    def _initialState(self) -> None:
        state = self.server.state
        state.trame__title = "TorchEsegeta viewer"
        state.case_items = list(self.cases)
        state.opacity = engineDisplay.MAP_OPACITY  # the Slicer module's and the figures'
        state.outline = True
        # The panel's legend never covers the image; Slicer's own legend in the views is optional.
        state.legend = False
        state.legend_info = {}
        state.view_letters = {}
        state.mode = "views"
        state.compare_orientation = "Axial"
        state.compare_titles = []
        state.cursor = ""
        state.uncertainty = {"headers": [], "rows": []}

    def _bindState(self) -> None:
        state = self.server.state

        # "case" itself is a JavaScript keyword: the page's expressions cannot name it.
        @state.change("current_case")
        def caseChanged(current_case, **_):
            if self.case is not None and current_case in self.cases:
                if current_case != self.case.run.folder.name:
                    self.showCase(current_case)

        @state.change("method")
        def methodChanged(method, **_):
            self._showMethod(method)

        @state.change("opacity")
        def opacityChanged(opacity, **_):
            setMapOpacity(self.scene, float(opacity))
            self._render()

        @state.change("outline")
        def outlineChanged(outline, **_):
            self._setSegmentationVisible(outline)

        @state.change("channel")
        def channelChanged(channel, **_):
            self._showBackground(int(channel))

        @state.change("legend")
        def legendChanged(**_):
            self._showLegends()
            self._render()

        @state.change("mode", "compare", "compare_orientation")
        def compareChanged(**_):
            if len(state.compare) > MAX_COMPARED:
                state.compare = state.compare[:MAX_COMPARED]
                return
            self._showCompare()

    def _showMethod(self, label: str) -> None:
        if self.case is None or label not in self.case.maps:
            return
        mainViews = views.compositeNodesOf(self.scene, views.MAIN_SLICE_VIEWS)
        showAsForeground(self.scene, self.case.maps[label], self.server.state.opacity, mainViews)
        self.server.state.legend_info = self._legendInfo(label)
        self._showLegends()
        self._render()

    def _legendInfo(self, label: str) -> dict:
        """The panel's colour legend of a map: its colours, window ends and what they mean."""
        entry = next(m for m in self.case.run.record.get("methods", []) if m.get("label") == label)
        signed = bool(entry.get("signed"))
        values = slicer.util.arrayFromVolume(self.case.maps[label])
        low, high = engineDisplay.map_window(values, signed)
        colours = engineDisplay.DIVERGING_COLOURS if signed else engineDisplay.SEQUENTIAL_COLOURS
        stops = ", ".join(
            f"rgb({round(255 * r)}, {round(255 * g)}, {round(255 * b)}) {100 * i / (len(colours) - 1):.0f}%"
            for i, (r, g, b) in enumerate(colours)
        )
        target = self.case.run.record.get("target") or {}
        return {
            "gradient": f"linear-gradient(to right, {stops})",
            "low": format_value(low),
            "high": format_value(high),
            "middle": "0" if signed else "",
            "meaning": colour_meaning(entry, str(target.get("class") or "the target")),
        }

    def _showViewLetters(self) -> None:
        """Each slice view's name and the patient directions at its edges."""
        letters = {}
        for index in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            node = self.scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
            letters[node.GetLayoutName()] = {
                **orientationLetters(node),
                "name": node.GetOrientation(),
            }
        self.server.state.view_letters = letters

    def _showCompare(self) -> None:
        state = self.server.state
        labels = [label for label in state.compare if self.case and label in self.case.maps]
        if state.mode != "compare" or not labels:
            self.layoutManager.set_layout(views.VIEWS_LAYOUT_ID)
            state.compare_titles = []
        else:
            self.layoutManager.register_layout(
                views.COMPARE_LAYOUT_ID, views.compareLayout(len(labels), state.compare_orientation)
            )
            self.layoutManager.set_layout(views.COMPARE_LAYOUT_ID)
            names = views.allCompareViewNames()[: len(labels)]
            for name in names:
                self.slicerApp.view_manager.get_view(name).set_orientation(
                    state.compare_orientation
                )
            background = self.case.channels[int(state.channel)]
            mapNodes = [self.case.maps[label] for label in labels]
            linkCompareViews(self.scene, names, background, mapNodes, state.opacity)
            titles = {m.label: m.title for m in self.case.run.maps}
            state.compare_titles = [titles[label] for label in labels]
        self._showViewLetters()
        self._showLegends()
        self._render()

    def _showLegends(self) -> None:
        state = self.server.state
        shown = set(state.compare) if state.mode == "compare" else {state.method}
        for label, legend in self.case.legends.items():
            legend.SetVisibility(bool(state.legend) and label in shown)

    def _showBackground(self, channel: int) -> None:
        if self.case is None or not 0 <= channel < len(self.case.channels):
            return
        background = self.case.channels[channel].GetID()
        for index in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            self.scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode").SetBackgroundVolumeID(
                background
            )
        self._render()

    def _setSegmentationVisible(self, visible: bool) -> None:
        if self.case is not None and self.case.segmentation is not None:
            self.case.segmentation.GetDisplayNode().SetVisibility(bool(visible))
            self._render()

    def _render(self) -> None:
        for view in self.slicerApp.view_manager.get_views():
            view.schedule_render()

    # --- the views' overlays and the cursor readout ------------------------------------------

    def _sliceViewUi(self, server, viewId, view) -> None:
        create_vertical_slice_view_gutter_ui(server, viewId, view)
        views.fitOnResize(view)
        name = view.get_singleton_tag()
        panel.viewMarker(name)
        panel.viewOrientation(name)
        if views.isCompareView(name):
            panel.compareViewTitle(views.compareIndex(name))

    def _threeDViewUi(self, server, viewId, view) -> None:
        create_vertical_view_gutter_ui(server, viewId, view)
        panel.viewMarker(view.get_singleton_tag())
        panel.viewName("3D")

    def _onCursorMoved(self, ras) -> None:
        state = self.server.state
        if ras is None or self.case is None:
            text = ""
        else:
            image = views.valueAt(self.case.channels[int(state.channel)], ras)
            mapNode = self.case.maps.get(state.method)
            value = views.valueAt(mapNode, ras) if mapNode is not None else None
            position = ", ".join(f"{c:.1f}" for c in ras)
            title = next((m.title for m in self.case.run.maps if m.label == state.method), "map")
            text = f"RAS ({position}) mm   image {_number(image)}   {title} {_number(value)}"
        if text != state.cursor:
            with state:
                state.cursor = text

    def _links(self, name: str, run: ViewerRun) -> list[dict]:
        if self.fileRoot is None:
            return []
        prefix = "" if len(self.cases) == 1 else f"{name}/"
        names = ["report.html", "metrics.csv"] + [
            f"figures/{p.name}" for p in sorted((run.folder / "figures").glob("*.png"))
        ]
        return [
            {"title": n, "href": fileUrl(prefix + n)} for n in names if (run.folder / n).is_file()
        ]


def _compared(run: ViewerRun, ordered: list[str]) -> list[str]:
    """The maps compared at first, in ``ordered``'s order (the recommendation's): the
    attributions, and the first uncertainty map (the entropy) beside them when the run has one
    (as the Slicer module's compare layout)."""
    uncertainLabels = {m.label for m in run.maps if m.uncertainty}
    attributions = [label for label in ordered if label not in uncertainLabels]
    uncertain = [label for label in ordered if label in uncertainLabels]
    if uncertain:
        return attributions[: MAX_COMPARED - 1] + uncertain[:1]
    return attributions[:MAX_COMPARED]


def _mapTitle(entry) -> str:
    if entry.uncertainty:
        return entry.title
    return f"{entry.title} ({'signed' if entry.signed else 'unsigned'})"


def _runInfo(run: ViewerRun) -> list[dict]:
    record = run.record
    target = record.get("target") or {}
    model = record.get("model") or {}
    rows = [
        ("run", run.title),
        ("folder", _shown(run.folder)),
        ("input", ", ".join(_shown(p) for p in run.images)),
        ("target", ", ".join(f"{k} {v}" for k, v in target.items() if isinstance(v, (str, int)))),
        ("model", str(model.get("kind") or model.get("name") or "")),
    ]
    rows += [("warning", str(w)) for w in record.get("warnings") or []]
    return [{"key": key, "value": value} for key, value in rows if value]


def _shown(path: Path) -> str:
    """A path as the user gave it: relative to the working folder when inside it."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _number(value) -> str:
    return "-" if value is None else format_value(value)
