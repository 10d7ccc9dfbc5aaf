"""The registration's inputs, written for the engine: volumes and label maps as they are, segmentations as
label maps on a full scan grid, markups as the engine's landmark CSV.

All the checks come before anything is written; a temporary label map made for the export is removed again.
"""
from __future__ import annotations

import os

from ..landmarks import writeLandmarksCsv
from .landmarks import markupsToIjk
from .nodes import hasVoxels, removedAfterwards, removeNode


def checkInput(node, role: str) -> None:
    """One clear line for an input the engine cannot use (no voxels, a segmentation with no segments)."""
    if node is None:
        raise ValueError(f"Select a {role} volume")
    if node.IsA("vtkMRMLSegmentationNode"):
        if node.GetSegmentation().GetNumberOfSegments() == 0:
            raise ValueError(f"The {role} segmentation {node.GetName()} has no segments")
    elif not node.IsA("vtkMRMLScalarVolumeNode"):
        raise ValueError(f"The {role} input {node.GetName()} is neither a volume nor a segmentation")
    elif not hasVoxels(node):
        raise ValueError(f"The {role} volume {node.GetName()} has no image data")


def hasReferenceGeometry(segmentationNode) -> bool:
    import slicer

    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    return bool(segmentationNode.GetSegmentation().GetConversionParameter(name))


def segmentationAsLabelmap(logics, segmentationNode, gridVolume=None):
    """A temporary label map of all segments on a whole scan grid, not on the grid cropped to the segments
    (the engine registers the grid it is given, and the result lands on it): the segmentation's reference
    geometry (set when it was made from or for a volume), else the grid of `gridVolume`."""
    import slicer
    import vtk

    if not hasReferenceGeometry(segmentationNode) and gridVolume is None:
        raise ValueError(f"The segmentation {segmentationNode.GetName()} has no reference geometry: choose a volume "
                         "as its geometry (Segmentations module, Export/import) or register it with a volume")
    labelmap = logics.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{segmentationNode.GetName()} (Unleash input)")
    segmentIds = vtk.vtkStringArray()
    segmentationNode.GetSegmentation().GetSegmentIDs(segmentIds)
    if hasReferenceGeometry(segmentationNode):
        exported = logics.segmentations.ExportSegmentsToLabelmapNode(
            segmentationNode, segmentIds, labelmap, None, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    else:
        exported = logics.segmentations.ExportSegmentsToLabelmapNode(segmentationNode, segmentIds, labelmap, gridVolume)
    if not exported or not hasVoxels(labelmap):
        removeNode(logics.scene, labelmap)
        raise RuntimeError(f"Could not export the segmentation {segmentationNode.GetName()} as a label map")
    labelmap.SetAndObserveTransformNodeID(segmentationNode.GetTransformNodeID())
    return labelmap


def writeVolume(volumeNode, path: str) -> None:
    """An uncompressed NRRD, without touching the node's own storage node."""
    import slicer

    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    storage.SetUseCompression(False)
    if not storage.WriteData(volumeNode):
        raise RuntimeError(f"Could not write {volumeNode.GetName()} to {path}")


def exportInputs(logics, workDir: str, fixedNode, movingNode, fixedLandmarks=None, movingLandmarks=None, log=print):
    """fixed.nrrd, moving.nrrd and (with both landmark lists) landmarks.csv in workDir: their paths
    (landmarks None without landmarks). A segmentation without a geometry of its own is exported on the other
    input's grid when that is a volume."""
    checkInput(fixedNode, "fixed")
    checkInput(movingNode, "moving")
    if (fixedLandmarks is None) != (movingLandmarks is None):
        raise ValueError("Select both landmark lists (fixed and moving), or neither")
    paths = {"fixed": os.path.join(workDir, "fixed.nrrd"), "moving": os.path.join(workDir, "moving.nrrd")}
    with removedAfterwards(logics.scene):  # the temporary label maps, with their display and colour nodes
        grids = {}
        for role, node, other in (("fixed", fixedNode, movingNode), ("moving", movingNode, fixedNode)):
            grids[role] = node
            if node.IsA("vtkMRMLSegmentationNode"):
                otherGrid = other if other.IsA("vtkMRMLScalarVolumeNode") else None
                if not hasReferenceGeometry(node) and otherGrid is not None:
                    log(f"note: the {role} segmentation {node.GetName()} has no geometry of its own; "
                        f"it is exported on the grid of {other.GetName()}")
                grids[role] = segmentationAsLabelmap(logics, node, otherGrid)
        landmarks = None
        if fixedLandmarks is not None:
            # voxel indices of the exported files (see UnleashCommon/landmarks.py for the coordinate systems)
            fixedIjk, movingIjk = markupsToIjk(fixedLandmarks, grids["fixed"]), markupsToIjk(movingLandmarks, grids["moving"])
            landmarks = os.path.join(workDir, "landmarks.csv")
            writeLandmarksCsv(landmarks, fixedIjk, movingIjk)
        for role, node in (("fixed", fixedNode), ("moving", movingNode)):
            writeVolume(grids[role], paths[role])
            if node.GetParentTransformNode() is not None:
                log(f"note: the {role} node {node.GetName()} is under the transform "
                    f"{node.GetParentTransformNode().GetName()}; its voxels are registered without that transform")
    return paths["fixed"], paths["moving"], landmarks
