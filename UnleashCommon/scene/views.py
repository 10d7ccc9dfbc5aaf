"""Slice and 3D views of a scene rendered offscreen by Slicer's own displayable managers, as pictures.

What Slicer's view widgets do, without Qt: a slice logic (or a 3D view node) in the scene, a displayable
manager group from Slicer's factory on a renderer, and, for slices, the slice logic's blended image drawn
behind what the managers draw (the grid, segment outlines). Used by the tests and by
tools/slicer_screenshots.py; inside Slicer the application's own views show the same nodes.
"""
from __future__ import annotations

import os

SLICE_ORIENTATIONS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
SLICE_MANAGERS = ("vtkMRMLTransformsDisplayableManager2D", "vtkMRMLSegmentationsDisplayableManager2D",
                  "vtkMRMLModelSliceDisplayableManager")
THREED_MANAGERS = ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                   "vtkMRMLSegmentationsDisplayableManager3D", "vtkMRMLModelDisplayableManager")


def offscreenWindow(size: tuple[int, int]):
    """An offscreen render window; without an X display, EGL (Mesa's, on a machine without a GPU)."""
    import vtk

    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()  # the displayable managers expect one (they observe it)
    interactor.SetRenderWindow(window)
    interactor.Initialize()
    return window, renderer


def managerGroup(factory, names, appLogic, renderer, viewNode):
    import slicer

    factory.SetMRMLApplicationLogic(appLogic)
    for name in names:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.Initialize(factory, renderer)
    group.SetMRMLDisplayableNode(viewNode)
    return group


def pixels(window):
    """The last frame as an (height, width, 3) uint8 array, top row first."""
    import vtk
    from vtk.util import numpy_support

    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, 3)[::-1].copy()


def savePng(window, path: str) -> None:
    import vtk

    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()


class SliceView:
    """One slice view (Red: axial, Yellow: sagittal, Green: coronal) of the scene."""

    def __init__(self, logics, name: str = "Red", size: tuple[int, int] = (640, 640)):
        import slicer
        import vtk

        self.window, self.renderer = offscreenWindow(size)
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(logics.appLogic)
        self.logic.SetMRMLScene(logics.scene)
        logics.appLogic.GetSliceLogics().AddItem(self.logic)
        self.node = self.logic.AddSliceNode(name)
        self.node.SetOrientation(SLICE_ORIENTATIONS[name])
        self.composite = self.logic.GetSliceCompositeNode()
        self.managers = managerGroup(slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance(), SLICE_MANAGERS,
                                     logics.appLogic, self.renderer, self.node)
        mapper = vtk.vtkImageMapper()  # the slice logic's RGBA image, 0-255
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        self.image = vtk.vtkActor2D()
        self.image.SetMapper(mapper)
        self.image.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.image)
        self.logic.ResizeSliceNode(*size)

    def fit(self) -> None:
        """Fit the slice to the background volume, through its centre."""
        self.logic.ResizeSliceNode(*self.window.GetSize())
        self.logic.FitSliceToBackground(*self.window.GetSize())
        self.logic.SnapSliceOffsetToIJK()

    def moveThrough(self, pointRas) -> None:
        """Move the slice to pass through a point (RAS mm): the offset is along the slice's normal."""
        sliceToRas = self.node.GetSliceToRAS()
        self.logic.SetSliceOffset(sum(sliceToRas.GetElement(row, 2) * float(pointRas[row]) for row in range(3)))

    def render(self):
        """Draw the current slice; returns its pixels (see pixels())."""
        self.image.GetMapper().SetInputConnection(self.logic.GetImageDataConnection())
        self.window.Render()
        return pixels(self.window)


class ThreeDView:
    """The 3D view of the scene (segmentations' surfaces, models), seen from the front."""

    def __init__(self, logics, size: tuple[int, int] = (640, 640)):
        import slicer

        self.window, self.renderer = offscreenWindow(size)
        self.node = logics.scene.AddNewNodeByClass("vtkMRMLViewNode", "View1")
        self.node.SetBoxVisible(False)
        self.node.SetAxisLabelsVisible(False)
        self.managers = managerGroup(slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance(), THREED_MANAGERS,
                                     logics.appLogic, self.renderer, self.node)

    def render(self, azimuthDeg: float = 0.0):
        """Look at everything shown from the front (anterior), turned by azimuthDeg; returns the pixels."""
        camera = self.renderer.GetActiveCamera()
        camera.SetFocalPoint(0.0, 0.0, 0.0)
        camera.SetPosition(0.0, 1.0, 0.0)  # anterior, in RAS
        camera.SetViewUp(0.0, 0.0, 1.0)
        camera.Azimuth(azimuthDeg)
        self.renderer.ResetCamera()
        self.window.Render()
        return pixels(self.window)
