"""How a registration result is shown: the deformation grid over the slices and the Jacobian overlay.

The Jacobian overlay is a colour table with a transparent middle: |J - 1| < JACOBIAN_CLEAR (no visible volume
change) shows the CT unchanged, compression (J < 1) turns blue and expansion (J > 1) red, both already
clearly visible at 10 % and opaque enough at 20 % to read, and folding (J <= 0) is opaque yellow. The table
is made here (Slicer's colour files are not part of Slicer's libraries) and reused by name.
"""
from __future__ import annotations

JACOBIAN_COLOR_NAME = "Unleash Jacobian"
JACOBIAN_RANGE = (0.0, 2.0)  # the table's window: J = 1 in the middle
JACOBIAN_STEPS = 201  # one entry per 0.01 of J
JACOBIAN_CLEAR = 0.05  # |J - 1| below this: transparent
FOLDING_RGBA = (1.0, 0.9, 0.0, 1.0)
COMPRESSION_RGB, EXPANSION_RGB = (0.1, 0.35, 1.0), (1.0, 0.15, 0.1)
ALPHA_AT_10_PERCENT, ALPHA_MAX = 0.45, 0.85
MOVING_OPACITY = 0.5


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


def jacobianColorNode(scene):
    """The overlay's colour table node (made once a scene)."""
    import slicer

    existing = scene.GetFirstNodeByName(JACOBIAN_COLOR_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(JACOBIAN_COLOR_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(JACOBIAN_STEPS)
    low, high = JACOBIAN_RANGE
    for index in range(JACOBIAN_STEPS):
        j = low + (high - low) * index / (JACOBIAN_STEPS - 1)
        node.SetColor(index, f"J={j:.2f}", *jacobianRgba(j))
    scene.AddNode(node)
    return node


def showJacobian(volumeNode) -> None:
    """Colour the Jacobian volume with the overlay table over JACOBIAN_RANGE."""
    volumeNode.CreateDefaultDisplayNodes()
    display = volumeNode.GetDisplayNode()
    display.SetAndObserveColorNodeID(jacobianColorNode(volumeNode.GetScene()).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*JACOBIAN_RANGE)
    display.SetInterpolate(False)  # the colour of a voxel's own J, not a blend of blue and red across J = 1


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


def setSliceLayers(scene, background=None, foreground=None, foregroundOpacity: float | None = None) -> None:
    """Background and foreground volumes (None: left as they are) of every slice view of the scene."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        if foreground is not None:
            composite.SetForegroundVolumeID(foreground.GetID())
        if foregroundOpacity is not None:
            composite.SetForegroundOpacity(foregroundOpacity)


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
        showJacobian(result.jacobianVolume)
        setSliceLayers(scene, background, result.jacobianVolume, 1.0)  # the table's alpha does the blending
    elif movingNode is not None and movingNode.IsA("vtkMRMLScalarVolumeNode"):
        setSliceLayers(scene, background, movingNode, MOVING_OPACITY)
