"""Markups control points <-> voxel indices of a volume (the engine's landmark CSV has indices; see
UnleashCommon/landmarks.py for the coordinate systems)."""
from __future__ import annotations

from ..landmarks import rasToIjk


def worldToVolumeTransform(volumeNode):
    """World RAS -> the volume's local RAS (identity when the volume is under no transform)."""
    import slicer
    import vtk

    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volumeNode.GetParentTransformNode(), transform)
    return transform


def ijkToRasRows(volumeNode, inverse: bool = False) -> list[list[float]]:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    (volumeNode.GetRASToIJKMatrix if inverse else volumeNode.GetIJKToRASMatrix)(matrix)
    return [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]


def markupsToIjk(markupsNode, volumeNode) -> list[tuple[float, float, float]]:
    """The control points of a markups node as IJK indices of `volumeNode` (needs Slicer)."""
    import slicer

    worldToVolume = worldToVolumeTransform(volumeNode)
    local = []
    for index in range(markupsNode.GetNumberOfControlPoints()):
        if markupsNode.GetNthControlPointPositionStatus(index) != slicer.vtkMRMLMarkupsNode.PositionDefined:
            label = markupsNode.GetNthControlPointLabel(index)
            raise ValueError(f"{markupsNode.GetName()}: point {index + 1} ({label}) is not placed yet")
        world = [0.0, 0.0, 0.0]
        markupsNode.GetNthControlPointPositionWorld(index, world)
        local.append(worldToVolume.TransformPoint(world))
    return rasToIjk(local, ijkToRasRows(volumeNode, inverse=True))


def ijkToMarkups(scene, name: str, pointsIjk, volumeNode, labelPrefix: str = "L"):
    """A new point list with the voxel indices `pointsIjk` of `volumeNode` as world RAS points, labelled
    L1, L2, ... in order (so that two lists made from one landmark CSV are pairs)."""
    rows = ijkToRasRows(volumeNode)
    volumeToWorld = worldToVolumeTransform(volumeNode).GetInverse()
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for number, point in enumerate(rasToIjk(pointsIjk, rows), start=1):
        index = markups.AddControlPointWorld(*volumeToWorld.TransformPoint(point))
        markups.SetNthControlPointLabel(index, f"{labelPrefix}{number}")
    return markups
