"""A registration's result in the scene: the forward and inverse transforms (with their fixed/moving
references), the moving node under the forward transform, the registered volume and the Jacobian volume.

The engine writes ITK displacement fields in LPS mm: forward (on the fixed grid) maps a fixed point x to
x + u(x) in the moving scan, which is the resampling direction, i.e. Slicer's transform "from parent" that
shows the moving scan on the fixed one. The fields are read as vector volumes and turned into grid
transforms here: Slicer's transform reader would warn on every NIfTI vector field whose intent code is not
1006, and SimpleITK writes 1007 (1006 would make ITK 5.4 read the vectors as RAS, older ITK as LPS).

The result is kept on the forward transform node (references to the other nodes, the report as an
attribute), so it survives saving and loading the scene: resultFromTransform() finds it again.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from unleash.jobspec import REGISTRATION_FILES

from .nodes import removedOnFailure, removeNode, uniqueName

ROLES = tuple(role for role in REGISTRATION_FILES if role != "report")  # the files a result loads
REPORT_ATTRIBUTE = "Unleash.report"
INVERSE_ROLE, WARPED_ROLE, JACOBIAN_ROLE = "unleashInverse", "unleashRegistered", "unleashJacobian"


@dataclass
class RegistrationResult:
    """What one registration added to the scene, and its report (report.json)."""

    forwardTransform: object = None  # vtkMRMLGridTransformNode: fixed point -> moving point (resampling direction)
    inverseTransform: object = None  # vtkMRMLGridTransformNode: moving point -> fixed point
    warpedVolume: object = None  # the moving scan resampled onto the fixed grid by the engine (a separate volume)
    jacobianVolume: object = None  # det of the forward transform's Jacobian on the fixed grid
    report: dict = field(default_factory=dict)
    workDir: str | None = None  # set when the job's files were kept
    elapsedS: float = 0.0


def checkFiles(files: dict) -> None:
    missing = [role for role in ROLES if not files.get(role) or not os.path.isfile(files[role])]
    if missing:
        shown = ", ".join(f"{role} ({files.get(role) or 'not named'})" for role in missing)
        raise ValueError(f"The registration result is incomplete: missing {shown}")


def loadDisplacementField(logics, path: str, name: str):
    """An ITK displacement field file (LPS vectors on an oriented grid) as a grid transform node, stored
    "from parent", in RAS. The vector volume read on the way is removed again."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    vectors = logics.volumes.AddArchetypeVolume(path, f"{name} (reading)", 0)
    if vectors is None or vectors.GetImageData() is None or vectors.GetImageData().GetNumberOfScalarComponents() != 3:
        if vectors is not None:
            removeNode(logics.scene, vectors)
        raise ValueError(f"{path} is not a displacement field (3 components a voxel)")
    try:
        grid = vtk.vtkImageData()
        grid.DeepCopy(vectors.GetImageData())
        displacement = numpy_support.vtk_to_numpy(grid.GetPointData().GetScalars())  # (voxels, 3), a view
        displacement[:, :2] *= -1  # LPS -> RAS
        grid.SetOrigin(vectors.GetOrigin())
        grid.SetSpacing(vectors.GetSpacing())
        direction = vtk.vtkMatrix4x4()
        vectors.GetIJKToRASDirectionMatrix(direction)
    finally:
        removeNode(logics.scene, vectors)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    transform.SetGridDirectionMatrix(direction)
    transform.SetInterpolationModeToLinear()  # as ITK and the engine interpolate the field (Slicer reads files cubic)
    node = logics.scene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    node.SetAndObserveTransformFromParent(transform)
    return node


def loadRegistrationResult(logics, files: dict, fixedNode, movingNode, report: dict | None = None) -> RegistrationResult:
    """The engine's output files (`files`: role -> path, see ROLES) into the scene, for the moving node
    registered to the fixed node. All or nothing: a missing file is named before anything is added, and a
    load that fails removes what it added (the moving node keeps its parent transform)."""
    import slicer

    checkFiles(files)
    scene = logics.scene
    base = f"{movingNode.GetName()} to {fixedNode.GetName()}"
    movingIsLabels = movingNode.IsA("vtkMRMLLabelMapVolumeNode") or movingNode.IsA("vtkMRMLSegmentationNode")
    parentBefore = movingNode.GetTransformNodeID()
    try:
        with removedOnFailure(scene):
            forward = loadDisplacementField(logics, files["displacement"], uniqueName(scene, f"{base} (Unleash)"))
            inverse = loadDisplacementField(logics, files["inverse_displacement"], uniqueName(scene, f"{base} inverse (Unleash)"))
            for transform, fixedRole, movingRole in ((forward, fixedNode, movingNode), (inverse, movingNode, fixedNode)):
                transform.SetNodeReferenceID(slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole(), fixedRole.GetID())
                transform.SetNodeReferenceID(slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole(), movingRole.GetID())
            warpedName = uniqueName(scene, f"{movingNode.GetName()} registered")
            warped = logics.volumes.AddArchetypeVolume(files["warped_moving"], warpedName, 1 if movingIsLabels else 0)
            jacobian = logics.volumes.AddArchetypeVolume(files["jacobian_determinant"], uniqueName(scene, f"{base} Jacobian"), 0)
            if warped is None or jacobian is None:
                raise ValueError(f"Could not read {files['warped_moving'] if warped is None else files['jacobian_determinant']}")
            for node in (forward, inverse, warped, jacobian):
                node.CreateDefaultDisplayNodes()
                node.StorableModified()  # the job's files are temporary: saving the scene writes the nodes anew
            inverse.GetDisplayNode().SetVisibility(False)
            result = RegistrationResult(forward, inverse, warped, jacobian, dict(report or {}))
            storeResult(result)
            movingNode.SetAndObserveTransformNodeID(forward.GetID())  # applied, not hardened
    except BaseException:
        movingNode.SetAndObserveTransformNodeID(parentBefore)
        raise
    return result


def storeResult(result: RegistrationResult) -> None:
    forward = result.forwardTransform
    for role, node in ((INVERSE_ROLE, result.inverseTransform), (WARPED_ROLE, result.warpedVolume),
                       (JACOBIAN_ROLE, result.jacobianVolume)):
        forward.SetNodeReferenceID(role, node.GetID() if node is not None else None)
    forward.SetAttribute(REPORT_ATTRIBUTE, json.dumps(result.report))


def resultFromTransform(forwardTransform) -> RegistrationResult:
    """The result that loadRegistrationResult() kept on its forward transform (also after a scene reload)."""
    if forwardTransform is None:
        return RegistrationResult()
    try:
        report = json.loads(forwardTransform.GetAttribute(REPORT_ATTRIBUTE) or "{}")
    except json.JSONDecodeError:
        report = {}
    return RegistrationResult(forwardTransform, forwardTransform.GetNodeReference(INVERSE_ROLE),
                              forwardTransform.GetNodeReference(WARPED_ROLE), forwardTransform.GetNodeReference(JACOBIAN_ROLE),
                              report)


def referencedNodes(forwardTransform):
    """(fixed node, moving node) of a forward transform: its registration references."""
    import slicer

    return (forwardTransform.GetNodeReference(slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole()),
            forwardTransform.GetNodeReference(slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()))
