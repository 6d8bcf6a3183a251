"""Metrics as table nodes and curves (e.g. deletion/insertion) as plot chart nodes."""

from __future__ import annotations

import numbers

import numpy as np
import vtk

from .display import DISTINCT_COLORS


def tableNodeFromMetrics(scene, rows, name: str):
    """A table node with one row per entry of ``rows`` (one per method).

    Columns are the keys in order of first appearance; a column whose values are all numbers
    (or missing) is a double column with NaN for missing values, any other a string column.

    Args:
        scene: the scene to add the node to.
        rows: list of dicts such as ``{"method": "saliency", "infidelity": 0.1}``.
        name: node name.

    Returns:
        The new vtkMRMLTableNode.
    """
    columnNames = list(dict.fromkeys(key for row in rows for key in row))
    tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    for columnName in columnNames:
        values = [row.get(columnName) for row in rows]
        tableNode.AddColumn(_column(columnName, values))
    return tableNode


def plotChartFromCurves(scene, curves, name: str, xTitle: str, yTitle: str):
    """A plot chart node with one line per curve, each backed by its own table node.

    Args:
        scene: the scene to add the nodes to.
        curves: ``{series name: (x values, y values)}``, e.g. one deletion curve per method.
        name: chart name; tables and series are named "<name> <series name>".
        xTitle: x axis title, also the x column name.
        yTitle: y axis title, also the y column name.

    Returns:
        The new vtkMRMLPlotChartNode.
    """
    chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chartNode.SetTitle(name)
    chartNode.SetXAxisTitle(xTitle)
    chartNode.SetYAxisTitle(yTitle)
    for index, (seriesName, (x, y)) in enumerate(curves.items()):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(
                f"curve {seriesName!r} needs x and y of the same length; got shapes {x.shape} and {y.shape}"
            )
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} {seriesName}")
        tableNode.AddColumn(_doubleColumn(xTitle, x))
        tableNode.AddColumn(_doubleColumn(yTitle, y))
        seriesNode = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {seriesName}")
        seriesNode.SetAndObserveTableNodeID(tableNode.GetID())
        seriesNode.SetXColumnName(xTitle)
        seriesNode.SetYColumnName(yTitle)
        seriesNode.SetPlotType(seriesNode.PlotTypeScatter)
        seriesNode.SetMarkerStyle(seriesNode.MarkerStyleNone)
        seriesNode.SetColor(*DISTINCT_COLORS[index % len(DISTINCT_COLORS)])
        chartNode.AddAndObservePlotSeriesNodeID(seriesNode.GetID())
    return chartNode


def _column(name: str, values: list):
    present = [value for value in values if value is not None]
    if all(isinstance(value, numbers.Real) for value in present):
        return _doubleColumn(name, [np.nan if value is None else float(value) for value in values])
    column = vtk.vtkStringArray()
    column.SetName(name)
    for value in values:
        column.InsertNextValue("" if value is None else str(value))
    return column


def _doubleColumn(name: str, values):
    column = vtk.vtkDoubleArray()
    column.SetName(name)
    for value in values:
        column.InsertNextValue(float(value))
    return column
