"""How a registration result is shown: the deformation grid over the slices and the Jacobian overlay.

The overlay is a label map made from the Jacobian determinant J (one label a 0.01 step of J), shown in the
slice views' label layer with a colour table that has a transparent middle: |J - 1| < JACOBIAN_CLEAR (no
visible volume change) leaves the scan as it is, compression (J < 1) is blue and expansion (J > 1) red, both
clearly visible at 10 % and stronger from 20 % on, and folding (J <= 0) is opaque yellow. (A scalar volume
cannot do this: Slicer drops its colour table's alpha and blends the whole foreground with one opacity.)
The colour table is made here, once a scene: Slicer's colour files are not part of Slicer's libraries.
"""
from __future__ import annotations

JACOBIAN_COLOR_NAME = "Unleash Jacobian"
JACOBIAN_STEP = 0.01  # label L >= 1 stands for J = (L - 1) * JACOBIAN_STEP; label 0 is outside the overlay
JACOBIAN_LABELS = 202  # 0, then J = 0.00 ... 2.00 (J above 2 takes the last label)
JACOBIAN_CLEAR = 0.05  # |J - 1| below this: transparent
FOLDING_RGBA = (1.0, 0.9, 0.0, 1.0)
COMPRESSION_RGB, EXPANSION_RGB = (0.1, 0.35, 1.0), (1.0, 0.15, 0.1)
ALPHA_AT_10_PERCENT, ALPHA_MAX = 0.45, 0.8
MOVING_OPACITY = 0.5
OVERLAY_ROLE = "unleashOverlay"  # reference from the Jacobian volume to its overlay label map


def jacobianRgba(j: float) -> tuple[float, float, float, float]:
    """The overlay's colour for a Jacobian determinant j."""
    if j <= 0.0:
        return FOLDING_RGBA
    change = abs(j - 1.0)
    if change < JACOBIAN_CLEAR:
        return (1.0, 1.0, 1.0, 0.0)
    # ALPHA_AT_10_PERCENT at |J - 1| = 0.1, rising to ALPHA_MAX at 0.5 (a little less between 0.05 and 0.1)
    alpha = min(ALPHA_MAX, ALPHA_AT_10_PERCENT + (change - 0.1) * (ALPHA_MAX - ALPHA_AT_10_PERCENT) / 0.4)
    return (*(COMPRESSION_RGB if j < 1.0 else EXPANSION_RGB), alpha)


def jacobianOfLabel(label: int) -> float:
    return (label - 1) * JACOBIAN_STEP


def jacobianLabels(jacobian):
    """J (a numpy array) -> the overlay's labels (uint8, same shape): J <= 0 (folding) is label 1."""
    import numpy as np

    steps = np.rint(np.clip(np.nan_to_num(jacobian, nan=1.0), 0.0, None) / JACOBIAN_STEP)
    return (1 + np.minimum(steps, JACOBIAN_LABELS - 2)).astype(np.uint8)


def jacobianColorNode(scene):
    """The overlay's colour table node (made once a scene)."""
    import slicer

    existing = scene.GetFirstNodeByName(JACOBIAN_COLOR_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(JACOBIAN_COLOR_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(JACOBIAN_LABELS)
    node.SetColor(0, "outside", 0.0, 0.0, 0.0, 0.0)
    for label in range(1, JACOBIAN_LABELS):
        node.SetColor(label, f"J={jacobianOfLabel(label):.2f}", *jacobianRgba(jacobianOfLabel(label)))
    scene.AddNode(node)
    return node


def jacobianOverlay(jacobianVolume):
    """The overlay label map of a Jacobian volume: made on first use, then found through its reference."""
    import vtk
    from vtk.util import numpy_support

    overlay = jacobianVolume.GetNodeReference(OVERLAY_ROLE)
    if overlay is not None:
        return overlay
    scene = jacobianVolume.GetScene()
    source = jacobianVolume.GetImageData()
    labels = vtk.vtkImageData()
    labels.SetDimensions(source.GetDimensions())
    values = jacobianLabels(numpy_support.vtk_to_numpy(source.GetPointData().GetScalars()))
    labels.GetPointData().SetScalars(numpy_support.numpy_to_vtk(values, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    overlay = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{jacobianVolume.GetName()} overlay")
    matrix = vtk.vtkMatrix4x4()
    jacobianVolume.GetIJKToRASMatrix(matrix)
    overlay.SetIJKToRASMatrix(matrix)
    overlay.SetAndObserveImageData(labels)
    overlay.SetAndObserveTransformNodeID(jacobianVolume.GetTransformNodeID())
    overlay.CreateDefaultDisplayNodes()
    overlay.GetDisplayNode().SetAndObserveColorNodeID(jacobianColorNode(scene).GetID())
    jacobianVolume.SetNodeReferenceID(OVERLAY_ROLE, overlay.GetID())
    return overlay


def showGrid(forwardTransform, regionNode, spacingMm: float = 15.0, visible: bool = True) -> None:
    """The forward transform's deformation grid in the slice views (not in 3D), limited to `regionNode`."""
    import slicer

    forwardTransform.CreateDefaultDisplayNodes()
    display = forwardTransform.GetDisplayNode()
    display.SetVisualizationMode(slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID)
    display.SetGridSpacingMm(float(spacingMm))
    if regionNode is not None:
        display.SetAndObserveRegionNode(regionNode)
    display.SetVisibility2D(True)
    display.SetVisibility3D(False)
    display.SetVisibility(bool(visible))


def setSliceLayers(scene, background=None, foreground=None, foregroundOpacity=None, label=None, labelOpacity=None) -> None:
    """The layers of every slice view of the scene: a node sets its layer, "none" empties it, None leaves it."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        for node, setLayer in ((background, composite.SetBackgroundVolumeID), (foreground, composite.SetForegroundVolumeID),
                               (label, composite.SetLabelVolumeID)):
            if node is not None:
                setLayer(None if node == "none" else node.GetID())
        if foregroundOpacity is not None:
            composite.SetForegroundOpacity(foregroundOpacity)
        if labelOpacity is not None:
            composite.SetLabelOpacity(labelOpacity)


def showRegistration(result, gridSpacingMm: float = 15.0, gridVisible: bool = True, jacobianVisible: bool = True,
                     setLayers: bool = True) -> None:
    """The grid, and (setLayers) in the slice views the fixed scan under the Jacobian overlay, or under the
    moving scan at half opacity when the overlay is off. A label map or segmentation as the fixed input keeps
    the current background."""
    from .registration import referencedNodes

    forward = result.forwardTransform
    if forward is None:
        return
    fixedNode, movingNode = referencedNodes(forward)
    region = fixedNode if fixedNode is not None and fixedNode.IsA("vtkMRMLVolumeNode") else result.jacobianVolume
    showGrid(forward, region, gridSpacingMm, gridVisible)
    if not setLayers:
        return
    scene = forward.GetScene()
    isScan = fixedNode is not None and fixedNode.IsA("vtkMRMLScalarVolumeNode") and not fixedNode.IsA("vtkMRMLLabelMapVolumeNode")
    background = fixedNode if isScan else None
    if jacobianVisible and result.jacobianVolume is not None:
        setSliceLayers(scene, background, foreground="none", label=jacobianOverlay(result.jacobianVolume), labelOpacity=1.0)
    elif movingNode is not None and movingNode.IsA("vtkMRMLScalarVolumeNode"):
        setSliceLayers(scene, background, movingNode, MOVING_OPACITY, label="none")
