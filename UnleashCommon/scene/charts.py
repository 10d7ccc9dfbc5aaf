"""A training run's loss as a table node drawn by a plot chart (the layout's plot view, in Slicer)."""
from __future__ import annotations

TABLE_NAME, SERIES_NAME, CHART_NAME = "Unleash training loss", "loss", "Unleash training"
COLUMNS = ("step", "loss")


def fillTable(tableNode, steps, losses) -> None:
    """The table's two columns, step and loss, replaced by the values given (floats)."""
    import vtk

    if len(steps) != len(losses):
        raise ValueError(f"{len(steps)} steps and {len(losses)} losses")
    table = tableNode.GetTable()
    wasModifying = tableNode.StartModify()
    table.Initialize()
    for name, values in zip(COLUMNS, (steps, losses)):
        column = vtk.vtkDoubleArray()
        column.SetName(name)
        for value in values:
            column.InsertNextValue(float(value))
        table.AddColumn(column)
    tableNode.Modified()
    tableNode.EndModify(wasModifying)


def lossChart(logics, steps, losses, tableNode=None, showInLayout: bool = True):
    """Show the loss against the step; returns the table node to pass back in (None or a removed node: the
    table, its line series and the chart are made anew)."""
    scene = logics.scene
    if tableNode is not None and scene.IsNodePresent(tableNode):
        fillTable(tableNode, steps, losses)
        return tableNode
    import slicer

    tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", TABLE_NAME)
    fillTable(tableNode, steps, losses)
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", SERIES_NAME)
    series.SetAndObserveTableNodeID(tableNode.GetID())
    series.SetXColumnName(COLUMNS[0])
    series.SetYColumnName(COLUMNS[1])
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeLine)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", CHART_NAME)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetXAxisTitle(COLUMNS[0])
    chart.SetYAxisTitle(COLUMNS[1])
    if showInLayout:
        logics.plots.ShowChartInLayout(chart)
    return tableNode
