"""The MRML scene and the module logics that the scene code uses, from Slicer or made headless.

The scene code (this package) touches only MRML nodes, Slicer's module logics and vtk, so that it runs the
same inside Slicer and on Slicer's libraries alone (the `slicer-core` wheel): tests and the screenshot
command make a headless scene with `headlessScene()`, the modules pass `sceneInSlicer()`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SceneLogics:
    scene: object  # vtkMRMLScene
    appLogic: object  # vtkSlicerApplicationLogic (colour nodes, slice logics for the views)
    volumes: object  # vtkSlicerVolumesLogic
    transforms: object  # vtkSlicerTransformLogic
    segmentations: object  # vtkSlicerSegmentationsModuleLogic
    plots: object  # vtkSlicerPlotsLogic


def sceneInSlicer() -> SceneLogics:
    """The running Slicer's scene and logics (needs the Slicer application)."""
    import slicer

    return SceneLogics(slicer.mrmlScene, slicer.app.applicationLogic(), slicer.modules.volumes.logic(),
                       slicer.modules.transforms.logic(), slicer.modules.segmentations.logic(),
                       slicer.modules.plots.logic())


def headlessScene() -> SceneLogics:
    """A new scene with what Slicer's application sets up for it: the application logic with the default
    colour nodes and slice orientation presets, a crosshair, and the module logics given the scene."""
    import slicer
    import vtk

    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    appLogic.GetColorLogic().SetMRMLScene(scene)
    appLogic.GetColorLogic().AddDefaultColorNodes()
    appLogic.SetSliceLogics(vtk.vtkCollection())
    appLogic.SetViewLogics(vtk.vtkCollection())
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    appLogic.SetModuleLogic("Colors", appLogic.GetColorLogic())  # the volumes logic asks for it by this name
    logics = {}
    for name, logic in (("Volumes", slicer.vtkSlicerVolumesLogic()), ("Transforms", slicer.vtkSlicerTransformLogic()),
                        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic()), ("Plots", slicer.vtkSlicerPlotsLogic())):
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(appLogic)
        appLogic.SetModuleLogic(name, logic)
        logics[name] = logic
    return SceneLogics(scene, appLogic, logics["Volumes"], logics["Transforms"], logics["Segmentations"], logics["Plots"])
