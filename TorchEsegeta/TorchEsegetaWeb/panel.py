"""The page: views on the left (each named, with the patient directions at its edges), the
side panel on the right: the run in plain words, the map (opacity, outline, its colour legend,
which never covers the image), compare, cursor value, the methods in the recommendation's order,
the shown map's scores and structures, curves, run facts. Everything fits the panel's width, so
the page works from 1280 px. Widgets only; the state they bind is set by :mod:`.app`. Element
ids (``tv-...``) are what the browser tests look for."""

from __future__ import annotations

from TorchEsegetaSlicer.layouts import MAX_COMPARED
from trame.ui.vuetify3 import VAppLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3

PANEL_WIDTH = 420
_COMPACT = {"density": "compact", "hide_details": True}
_STYLE = """
.tv-metrics td, .tv-metrics th { padding: 2px 6px !important; }
.tv-metrics tr.tv-selected td { background: rgba(255, 255, 255, 0.14); font-weight: 600; }
.tv-metrics tbody tr { cursor: pointer; }
.tv-compare-title { position: absolute; top: 4px; left: 50%; transform: translateX(-50%);
  color: white; background: rgba(0, 0, 0, 0.55); padding: 0 8px; border-radius: 4px;
  pointer-events: none; font-size: 13px; }
.tv-letter, .tv-view-name { position: absolute; color: #ffd54f; font: 600 13px sans-serif;
  text-shadow: 0 0 3px black; pointer-events: none; z-index: 2; }
.tv-view-name { top: 4px; right: 8px; color: white; }
.tv-letter-left { left: 36px; top: 50%; transform: translateY(-50%); }
.tv-letter-right { right: 8px; top: 50%; transform: translateY(-50%); }
.tv-letter-top { top: 24px; left: 50%; transform: translateX(-50%); }
.tv-letter-bottom { bottom: 30px; left: 50%; transform: translateX(-50%); }
.tv-summary p { margin: 0 0 6px 0; } .tv-summary ul { margin: 0 0 6px 16px; padding: 0; }
.tv-legend-bar { height: 12px; border-radius: 2px; }
"""


def buildUi(server, layoutManager, cohort: bool) -> VAppLayout:
    """The whole page; ``cohort`` adds the case picker."""
    with VAppLayout(server, full_height=True, theme="dark") as layout:
        # Vue drops <style> elements in templates; client.Style adds them to the page.
        client.Style(_STYLE)
        with v3.VAppBar(density="compact"):
            v3.VToolbarTitle("TorchEsegeta viewer", classes="flex-grow-0 mr-4")
            if cohort:
                v3.VSelect(
                    id="tv-case",
                    label="case",
                    items=("case_items",),
                    v_model=("current_case",),
                    **_COMPACT,
                    style="max-width: 280px",
                )
            v3.VSpacer()
            with v3.VBtnToggle(v_model=("mode",), mandatory=True, density="compact", id="tv-mode"):
                v3.VBtn("Views", value="views", id="tv-mode-views")
                v3.VBtn("Compare", value="compare", id="tv-mode-compare")
        with v3.VMain(), html.Div(style="display: flex; height: calc(100vh - 48px);"):
            with html.Div(style="flex: 1; display: flex; min-width: 0;", id="tv-views"):
                layoutManager.initialize_layout_grid(layout)
            with html.Div(
                id="tv-panel",
                style=f"flex: 0 0 {PANEL_WIDTH}px; width: {PANEL_WIDTH}px; overflow: auto; "
                "padding: 8px 12px; font-size: 13px;",
            ):
                _summary()
                _mapControls()
                _legend()
                _compareControls()
                _cursor()
                _metrics()
                _uncertainty()
                _runFacts()
    return layout


def viewMarker(viewName: str) -> None:
    """An empty element beside a view's image, to find the view in the page (``tv-view-Red``)."""
    html.Span(id=f"tv-view-{viewName}", style="display: none;")


def viewOrientation(viewName: str) -> None:
    """A slice view's orientation name and its edge letters (state ``view_letters``)."""
    letters = f"view_letters['{viewName}']"
    html.Div(f"{{{{ {letters}.name }}}}", v_if=letters, classes="tv-view-name")
    for edge in ("left", "right", "top", "bottom"):
        html.Div(
            f"{{{{ {letters}.{edge} }}}}",
            v_if=letters,
            classes=f"tv-letter tv-letter-{edge}",
            id=f"tv-letter-{viewName}-{edge}",
        )


def viewName(name: str) -> None:
    html.Div(name, classes="tv-view-name")


def compareViewTitle(index: int) -> None:
    """The method shown in compare view ``index`` (inside that view's overlay)."""
    html.Div(
        f"{{{{ compare_titles[{index}] }}}}",
        v_if=f"compare_titles.length > {index}",
        classes="tv-compare-title",
    )


def _summary() -> None:
    """The run in plain words (the library's sentences, as in the report and Slicer)."""
    with html.Div(
        id="tv-summary",
        classes="tv-summary mb-2",
        style="max-height: 240px; overflow-y: auto;",
        v_if="summary_paragraphs.length",
    ):
        html.P("{{ text }}", v_for="(text, index) in summary_paragraphs", key="index")
        with html.Div(v_if="summary_caveats.length"):
            html.B("Keep in mind:")
            with html.Ul():
                html.Li("{{ text }}", v_for="(text, index) in summary_caveats", key="index")


def _legend() -> None:
    """The shown map's colours, window ends and meaning, beside the views, not over them."""
    with html.Div(id="tv-legend-panel", v_if="legend_info.gradient", classes="my-2"):
        html.Div(classes="tv-legend-bar", style=("{ background: legend_info.gradient }",))
        with html.Div(classes="d-flex text-caption"):
            html.Span("{{ legend_info.low }}")
            html.Span("{{ legend_info.middle }}", classes="flex-grow-1 text-center")
            html.Span("{{ legend_info.high }}")
        html.Div("{{ legend_info.meaning }}", classes="text-caption")


def _mapControls() -> None:
    v3.VSelect(
        id="tv-method",
        label="attribution map",
        items=("method_items",),
        v_model=("method",),
        **_COMPACT,
        classes="mb-2",
    )
    v3.VSelect(
        v_if="channel_items.length > 1",
        label="image (input channel)",
        items=("channel_items",),
        v_model=("channel",),
        **_COMPACT,
        classes="mb-2",
    )
    with html.Div(classes="d-flex align-center"):
        html.Span("opacity", classes="mr-2")
        v3.VSlider(
            id="tv-opacity",
            v_model=("opacity",),
            min=0,
            max=1,
            step=0.05,
            hide_details=True,
            density="compact",
            thumb_label=True,
        )
    # side by side where the panel is wide enough, one under the other where not
    with html.Div(classes="d-flex flex-wrap"):
        v3.VSwitch(
            id="tv-outline",
            label="segmentation outline",
            v_model=("outline",),
            style="flex: 0 0 auto; margin-right: 16px;",
            **_COMPACT,
        )
        v3.VSwitch(
            id="tv-legend",
            label="legend in the views",
            v_model=("legend",),
            style="flex: 0 0 auto;",
            **_COMPACT,
        )


def _compareControls() -> None:
    with html.Div(v_if="mode === 'compare'", classes="mb-2"):
        v3.VSelect(
            id="tv-compare",
            label=f"compare (up to {MAX_COMPARED})",
            items=("method_items",),
            v_model=("compare",),
            multiple=True,
            chips=True,
            closable_chips=True,
            **_COMPACT,
            classes="mb-2",
        )
        v3.VSelect(
            label="compare orientation",
            items=("['Axial', 'Coronal', 'Sagittal']",),
            v_model=("compare_orientation",),
            **_COMPACT,
        )


def _cursor() -> None:
    html.Div(
        "{{ cursor || 'Move the mouse over a slice view; Shift + move jumps the other views.' }}",
        id="tv-cursor",
        classes="text-caption my-2",
        style="min-height: 2.5em;",
    )


def _metrics() -> None:
    with html.Div(v_if="ranking.length", classes="mb-2"):
        html.Div("Maps, most faithful first (click a row to show it)", classes="text-subtitle-2")
        with v3.VTable(density="compact", id="tv-metrics", classes="tv-metrics"):
            with html.Thead(), html.Tr():
                html.Th("map")
                html.Th("faithfulness", title="0: no better than a random order of the voxels")
                html.Th("randomisation check")
            with html.Tbody():
                with html.Tr(
                    v_for="row in ranking",
                    key="row.method",
                    click="method = row.method",
                    title=("row.verdict",),
                    classes=(
                        "(row.method === method ? 'tv-selected' : '') + "
                        "(row.chosen ? ' tv-chosen' : '')",
                    ),
                ):
                    html.Td("{{ row.chosen ? '\u2605 ' : '' }}{{ row.title }}")
                    html.Td("{{ row.score }}")
                    html.Td("{{ row.check }}")
    with html.Div(v_if="scores[method]", classes="mb-2"):
        html.Div("Scores of the shown map", classes="text-subtitle-2")
        with v3.VTable(density="compact", id="tv-scores", classes="tv-metrics"):
            with html.Tbody():
                with html.Tr(v_for="row in scores[method]", key="row.metric", title=("row.note",)):
                    html.Td("{{ row.metric }}")
                    html.Td("{{ row.value }}")
    with html.Div(v_if="structures[method]", classes="mb-2"):
        html.Div("The shown map by structure", classes="text-subtitle-2")
        with v3.VTable(density="compact", id="tv-structures", classes="tv-metrics"):
            with html.Thead(), html.Tr():
                html.Th("structure")
                html.Th("attribution")
                html.Th("volume")
                html.Th("enrichment")
            with html.Tbody():
                with html.Tr(v_for="row in structures[method]", key="row.structure"):
                    html.Td("{{ row.structure }}")
                    html.Td("{{ row.share }}")
                    html.Td("{{ row.volume }}")
                    html.Td("{{ row.enrichment }}")
    html.Img(v_if="curves_src", src=("curves_src",), id="tv-curves", style="width: 100%;")
    html.Div(
        "This run has not been evaluated (torchesegeta evaluate RUN adds the metrics).",
        v_if="!ranking.length",
        classes="text-caption my-2",
    )


def _uncertainty() -> None:
    with html.Div(v_if="uncertainty.rows.length", classes="mb-2", id="tv-uncertainty"):
        html.Div(
            "Uncertainty in the target region (its maps are in the map list)",
            classes="text-subtitle-2",
        )
        with html.Div(style="overflow-x: auto;"):
            with v3.VTable(density="compact", classes="tv-metrics"):
                with html.Thead(), html.Tr():
                    html.Th(
                        "{{ header.title }}",
                        v_for="header in uncertainty.headers",
                        key="header.key",
                    )
                with html.Tbody():
                    with html.Tr(v_for="row in uncertainty.rows", key="row.method"):
                        html.Td("{{ cell }}", v_for="(cell, index) in row.cells", key="index")


def _runFacts() -> None:
    with html.Div(classes="text-caption mt-2", id="tv-run"):
        with html.Div(v_for="row in run_info", key="row.key + row.value"):
            html.B("{{ row.key }}: ")
            html.Span("{{ row.value }}")
        with html.Div(v_if="skipped.length"):
            html.B("not shown: ")
            html.Span("{{ skipped.join(', ') }}")
        with html.Div(v_if="links.length", classes="mt-1"):
            html.B("files: ")
            html.A(
                "{{ link.title }} ",
                v_for="link in links",
                key="link.href",
                href=("link.href",),
                target="_blank",
                classes="mr-2",
            )
