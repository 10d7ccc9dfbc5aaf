"""Unleash Registration: inverse-consistent lung registration with the `unleash` engine, from Slicer.

This module is thin on purpose. It exports the selected nodes to files, builds the engine's command
line with `unleash.jobs.register_command` (the same function the engine's tests run), runs it as a
background job (UnleashCommon.runner), reads its JSON-lines events with `unleash.jobs.parse_event`,
and loads the output files into the scene. Everything numerical happens in the engine's process.
"""
import json
import logging
import os
import shutil
from typing import Annotated, Union

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTransformNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from unleash.jobs import register_command
from unleash.jobspec import DEFAULT_DEVICE, REGISTRATION_FILES
from UnleashCommon import pythonExecutable, slicerjobs
from UnleashCommon.dependencies import ensureDependencies
from UnleashCommon.engine import checkModelFile, defaultRunFolders, lowMemoryWarning
from UnleashCommon.joblogic import JobLogic
from UnleashCommon.modelchoice import BROWSE, fillModelCombo, selectComboData
from UnleashCommon.results import reportHtml
from UnleashCommon.runner import describeProgress, formatSeconds
from UnleashCommon.scene import display, inputs, registration
from UnleashCommon.scene.context import sceneInSlicer
from UnleashCommon.scene.landmarks import markupsToIjk

#
# UnleashRegistration
#


class UnleashRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Unleash Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []  # PyTorchUtils is used when present (checked on the first Apply)
        self.parent.contributors = ["UnleashRegistration developers"]
        self.parent.helpText = _("""
Deformable registration of lung CTs or vessel label maps with the <b>unleash</b> engine: a learned network
refined on the pair, with an inverse-consistent result. Select a fixed and a moving scan and press Apply;
the job runs in the background and can be cancelled. Results: the forward and inverse transforms, the moving
scan under the forward transform, the registered (resampled) moving scan, the deformation grid, the Jacobian
determinant as a colour overlay, and the quality numbers.
See <a href="https://github.com/unleash-registration/UnleashRegistration/blob/main/docs/slicer.md">the documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer's scripted module template and the PyTorch extension (SlicerPyTorch).
""")


#
# UnleashRegistrationParameterNode
#


@parameterNodeWrapper
class UnleashRegistrationParameterNode:
    """What the user chose (bound to the GUI with connectGui) and what the last run produced.

    refinementIterations: -1 means the engine's default (shown in the spin box once the engine was asked).
    modelPath: "" means the model shipped with the extension. device: auto, cpu or cuda:N.
    startFromNetwork: refine the model's prediction (--start network) instead of the engine's default start.
    """

    # typing.Union with None: the wrapper needs None in the union to store "nothing selected"
    fixedVolume: Union[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, None]  # noqa: UP007
    movingVolume: Union[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, None]  # noqa: UP007
    fixedLandmarks: vtkMRMLMarkupsFiducialNode
    movingLandmarks: vtkMRMLMarkupsFiducialNode
    modelPath: str = ""
    refinementIterations: Annotated[int, WithinRange(-1, 5000)] = -1
    startFromNetwork: bool = False
    device: str = DEFAULT_DEVICE
    keepFiles: bool = False
    showGrid: bool = True
    gridSpacingMm: Annotated[float, WithinRange(2.0, 100.0)] = 15.0
    showJacobian: bool = True
    forwardTransform: vtkMRMLTransformNode
    inverseTransform: vtkMRMLTransformNode
    warpedVolume: vtkMRMLScalarVolumeNode
    jacobianVolume: vtkMRMLScalarVolumeNode
    lastReport: str = ""


#
# UnleashRegistrationWidget
#


class UnleashRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingCombos = False
        self._shownReport = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/UnleashRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = UnleashRegistrationLogic()

        for placeWidget in (self.ui.fixedLandmarksPlaceWidget, self.ui.movingLandmarksPlaceWidget):
            placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
            placeWidget.buttonsVisible = True
        for selector, placeWidget in ((self.ui.fixedLandmarksSelector, self.ui.fixedLandmarksPlaceWidget),
                                      (self.ui.movingLandmarksSelector, self.ui.movingLandmarksPlaceWidget)):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", placeWidget.setCurrentNode)

        self.ui.progressBar.visible = False
        self.ui.deviceWarningLabel.visible = False
        self.ui.applyHintLabel.setStyleSheet("color: #b35c00")
        self.ui.deviceWarningLabel.setStyleSheet("color: #b35c00")

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.browseModelButton.connect("clicked(bool)", self.onBrowseModel)
        self.ui.modelComboBox.connect("activated(int)", self.onModelActivated)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.refreshDevicesButton.connect("clicked(bool)", self.onRefreshDevices)

        self.initializeParameterNode()
        self.populateModels()
        self.populateDevices()
        # Ask the engine for the GPUs and its default iterations in the background, and only when PyTorch is
        # already there (otherwise the first Apply installs it and asks then).
        if self.logic.torchAvailable():
            self.onRefreshDevices()

    def cleanup(self) -> None:
        if self.logic:
            self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic and self.logic.running:
            self.logic.cancel()  # its results would land in the next scene
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.fixedVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Apply's hint, the combos that are not bound by connectGui, and live display settings."""
        if not self._parameterNode:
            return
        missing = self.logic.missingInputs(self._parameterNode.fixedVolume, self._parameterNode.movingVolume)
        running = self.logic.running
        self.ui.applyHintLabel.text = "" if running else (missing or "")
        self.ui.applyButton.toolTip = missing or _("Register the moving scan to the fixed one in a background job.")
        self.selectComboData(self.ui.deviceComboBox, self._parameterNode.device)
        self.selectComboData(self.ui.modelComboBox, self._parameterNode.modelPath, addLabel=self._parameterNode.modelPath)
        self.logic.updateDisplay(self._parameterNode)
        if not running and self._parameterNode.lastReport != self._shownReport:
            self._shownReport = self._parameterNode.lastReport
            self.showResult(self.logic.resultFromParameterNode(self._parameterNode))

    # -- model and device choices (their entries come from disk and from the engine, so no connectGui) --

    def selectComboData(self, combo, data, addLabel=None) -> None:
        self._updatingCombos = True
        try:
            selectComboData(combo, data, addLabel)
        finally:
            self._updatingCombos = False

    def populateModels(self) -> None:
        self._updatingCombos = True
        try:
            fillModelCombo(self.ui.modelComboBox, "registration", _("Shipped default model"), _("Browse for a model file..."))
        finally:
            self._updatingCombos = False
        if self._parameterNode:
            self.selectComboData(self.ui.modelComboBox, self._parameterNode.modelPath, addLabel=self._parameterNode.modelPath)

    def onModelActivated(self, index) -> None:
        if self._updatingCombos or not self._parameterNode:
            return
        data = self.ui.modelComboBox.itemData(index)
        if data == BROWSE:
            self.onBrowseModel()
        else:
            self.setModelPath(data or "")

    def setModelPath(self, path: str) -> None:
        """A model of the user's own is there to be used: start the refinement from its prediction."""
        self._parameterNode.modelPath = path
        if path:
            self._parameterNode.startFromNetwork = True

    def onBrowseModel(self) -> None:
        current = self._parameterNode.modelPath if self._parameterNode else ""
        start = current or str(defaultRunFolders()[0])
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Choose a registration model"), start,
                                              _("Unleash model files (*.safetensors)"))
        if path and self._parameterNode:
            self.setModelPath(path)
            current = path
        self.selectComboData(self.ui.modelComboBox, current, addLabel=current)

    def populateDevices(self) -> None:
        slicerjobs.fillDeviceCombo(self.ui.deviceComboBox, self._parameterNode.device if self._parameterNode else DEFAULT_DEVICE)
        self.updateDeviceWarning()

    def onDeviceChanged(self, index) -> None:
        if self._updatingCombos or not self._parameterNode or index < 0:
            return
        self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or DEFAULT_DEVICE
        self.updateDeviceWarning()

    def updateDeviceWarning(self) -> None:
        device = self._parameterNode.device if self._parameterNode else DEFAULT_DEVICE
        warning = lowMemoryWarning(device, self.logic.devices)
        self.ui.deviceWarningLabel.text = warning or ""
        self.ui.deviceWarningLabel.visible = bool(warning)

    def onRefreshDevices(self) -> None:
        self.ui.refreshDevicesButton.enabled = False
        self.ui.refreshDevicesButton.text = _("Asking...")

        def done(info, error):
            self.ui.refreshDevicesButton.enabled = True
            self.ui.refreshDevicesButton.text = _("Refresh")
            if error:
                self.appendLog(f"could not list the devices: {error}")
            self.populateDevices()
            if self.logic.defaultAdaptIters is not None:
                self.ui.refinementIterationsSpinBox.specialValueText = _("default ({n})").format(n=self.logic.defaultAdaptIters)

        self.logic.probeEngine(completedCallback=done)

    # -- Apply / Cancel ----------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        if self.logic.running:
            self.logic.cancel()
            self.ui.progressLabel.text = _("Cancelling...")
            return
        p = self._parameterNode
        missing = self.logic.missingInputs(p.fixedVolume, p.movingVolume)
        if missing:
            slicer.util.warningDisplay(missing, windowTitle=_("Unleash Registration"))
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the registration."), waitCursor=True):
            self.ui.logTextEdit.clear()
            self.ui.resultLabel.text = _("Running...")
            job = self.logic.registerVolumes(
                fixedVolumeNode=p.fixedVolume, movingVolumeNode=p.movingVolume,
                fixedLandmarksNode=p.fixedLandmarks, movingLandmarksNode=p.movingLandmarks,
                modelPath=p.modelPath or None,
                refinementIterations=None if p.refinementIterations < 0 else p.refinementIterations,
                startFromNetwork=p.startFromNetwork, device=p.device, keepFiles=p.keepFiles,
                gridSpacingMm=p.gridSpacingMm, showGrid=p.showGrid, showJacobian=p.showJacobian, parameterNode=p, wait=False,
                logCallback=self.appendLog, onEvent=self.onEvent, onFinished=self.onFinished)
            if job is None:  # the user declined to install the dependencies
                self.ui.resultLabel.text = _("Not run: the Python packages it needs are not installed.")
                return
            self.setRunning(True)

    def setRunning(self, running: bool) -> None:
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.progressBar.visible = running
        if running:
            self.ui.progressBar.setRange(0, 0)  # busy until the first progress event
            self.ui.progressLabel.text = _("Starting the engine...")
        for widget in (self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton):
            widget.enabled = not running
        self.onParameterNodeModified()

    def appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def onEvent(self, event: dict) -> None:
        if event.get("event") != "progress":
            return  # the log events reach the log through logCallback
        percent, text = describeProgress(event)
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.value = percent
        self.ui.progressLabel.text = text

    def onFinished(self, result, error) -> None:
        self.setRunning(False)
        if self.logic.devices is None and self.logic.torchAvailable():
            self.onRefreshDevices()  # PyTorch may have been installed by this Apply
        if error:
            self.ui.progressLabel.text = _("Cancelled.") if error == "cancelled" else _("Failed.")
            self._shownReport = self._parameterNode.lastReport if self._parameterNode else None  # keep this message
            self.ui.resultLabel.text = _("No result: {error}").format(error=error)
            if error != "cancelled":
                slicer.util.errorDisplay(_("The registration failed:\n\n{error}").format(error=error),
                                         windowTitle=_("Unleash Registration"))
            return
        self.ui.progressLabel.text = _("Done in {t}.").format(t=formatSeconds(result.elapsedS))
        if result.workDir:
            self.ui.progressLabel.text += " " + _("Files kept in {folder}").format(folder=result.workDir)
        self._shownReport = None
        self.onParameterNodeModified()

    def showResult(self, result) -> None:
        """The result box: the report's numbers and the nodes the run added."""
        if result.forwardTransform is None and not result.report:
            self.ui.resultLabel.text = _("No registration yet.")
            return
        text = reportHtml(result.report) or _("The job reported no numbers.")
        names = [f"{label}: <i>{node.GetName()}</i>" for label, node in (
            (_("forward transform"), result.forwardTransform), (_("inverse transform"), result.inverseTransform),
            (_("registered moving volume"), result.warpedVolume), (_("Jacobian determinant"), result.jacobianVolume))
            if node is not None]
        if names:
            text += "<p>" + "<br>".join(names) + "</p>"
        self.ui.resultLabel.text = text


#
# UnleashRegistrationLogic
#


UnleashRegistrationResult = registration.RegistrationResult  # what one registration added to the scene


class UnleashRegistrationLogic(ScriptedLoadableModuleLogic, JobLogic):
    """Usable without the GUI, e.g. from the Python console:

        logic = slicer.util.getModuleLogic("UnleashRegistration")
        result = logic.registerVolumes(fixedVolumeNode=fixed, movingVolumeNode=moving, refinementIterations=50)
        result.forwardTransform, result.report["tre_after_mm"]

    The job life cycle of JobLogic: wait=True (the default) returns an UnleashRegistrationResult or raises
    RuntimeError; wait=False returns the running job at once and calls onFinished(result, error) when it ends.
    """

    busyMessage = _("A registration is already running: cancel it first")

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        JobLogic.__init__(self)
        self._displayState = None

    def getParameterNode(self):
        return UnleashRegistrationParameterNode(super().getParameterNode())

    @staticmethod
    def torchAvailable() -> bool:
        import importlib.util

        return importlib.util.find_spec("torch") is not None

    @staticmethod
    def missingInputs(fixedVolumeNode, movingVolumeNode) -> str | None:
        """What Apply still needs, in words, or None."""
        if fixedVolumeNode is None:
            return _("Select a fixed volume")
        if movingVolumeNode is None:
            return _("Select a moving volume")
        if fixedVolumeNode == movingVolumeNode:
            return _("Select two different volumes: fixed and moving are the same")
        return None

    # -- asking the engine -----------------------------------------------------------------------------

    @property
    def devices(self):
        """unleash.devices.list_devices() as the engine's process sees it, once asked (probeEngine), else None."""
        return (slicerjobs.engineInfo() or {}).get("devices")

    @property
    def defaultAdaptIters(self):
        """unleash.pipeline.DEFAULT_ADAPT_ITERS, once asked (probeEngine), else None."""
        return (slicerjobs.engineInfo() or {}).get("default_adapt_iters")

    @staticmethod
    def probeEngine(wait: bool = False, completedCallback=None):
        """Ask the engine (in a job) for its devices and default iterations. completedCallback(info, error)."""
        return slicerjobs.probeEngine(completedCallback=completedCallback, wait=wait)

    # -- the registration ------------------------------------------------------------------------------

    def registerVolumes(self, fixedVolumeNode, movingVolumeNode, fixedLandmarksNode=None, movingLandmarksNode=None,
                        modelPath=None, refinementIterations=None, startFromNetwork=False, device=DEFAULT_DEVICE,
                        keepFiles=False, gridSpacingMm=15.0, showGrid=True, showJacobian=True, installDependencies=True,
                        parameterNode=None, wait=True, timeoutS=None,
                        logCallback=None, onEvent=None, onFinished=None):
        """Register movingVolumeNode to fixedVolumeNode (scalar volumes, label maps or segmentations).

        fixedLandmarksNode/movingLandmarksNode: markups point lists of the same length, in corresponding order;
        the report then has the TRE before and after. modelPath None: the shipped model. refinementIterations
        None: the engine's default. startFromNetwork: refine the model's prediction instead of starting from the
        engine's default. device: "auto", "cpu", "cuda:N". keepFiles: keep the job's folder. logCallback(text):
        the job's log lines and this logic's own (also written to the job folder's job.log).
        """
        missing = self.missingInputs(fixedVolumeNode, movingVolumeNode)
        if missing:
            raise ValueError(missing)
        if (fixedLandmarksNode is None) != (movingLandmarksNode is None):
            raise ValueError(_("Select both landmark lists (fixed and moving), or neither"))
        self.checkIdle()
        inputs.checkInput(fixedVolumeNode, "fixed")
        inputs.checkInput(movingVolumeNode, "moving")
        if modelPath:
            checkModelFile(modelPath, "registration")

        workDir = slicer.util.tempDirectory("UnleashRegistration-")
        log = self._makeLog(workDir, logCallback)
        try:
            if installDependencies and not ensureDependencies(workDir):
                shutil.rmtree(workDir, ignore_errors=True)
                return None
            fixedPath, movingPath, landmarksPath = inputs.exportInputs(
                sceneInSlicer(), workDir, fixedVolumeNode, movingVolumeNode, fixedLandmarksNode, movingLandmarksNode, log)
            command = register_command(fixedPath, movingPath, os.path.join(workDir, "output"), model=modelPath or None,
                                       device=device, adapt_iters=refinementIterations, landmarks=landmarksPath,
                                       start="network" if startFromNetwork else None,
                                       python=pythonExecutable())
        except Exception:
            if not keepFiles:
                shutil.rmtree(workDir, ignore_errors=True)
            raise
        log("command: " + " ".join(command))

        def logEvent(event):
            kind = event.get("event")
            if kind == "log":
                log(str(event.get("message", "")))
            elif kind == "error":
                log("error: " + str(event.get("message", "")))
            if onEvent:
                onEvent(event)

        def onLine(stream, line):
            if stream == "stderr" or line.strip():
                log(line)

        def load(job):
            result = self._loadResults(job.result, os.path.join(workDir, "output"), fixedVolumeNode, movingVolumeNode,
                                       gridSpacingMm, showGrid, showJacobian)
            result.elapsedS = job.elapsedS
            result.workDir = workDir if keepFiles else None
            if parameterNode is not None:
                parameterNode.forwardTransform = result.forwardTransform
                parameterNode.inverseTransform = result.inverseTransform
                parameterNode.warpedVolume = result.warpedVolume
                parameterNode.jacobianVolume = result.jacobianVolume
                parameterNode.lastReport = json.dumps(result.report)
            log(f"done in {job.elapsedS:.1f} s")
            return result

        def finished(result, error):
            if error:
                log(f"finished: {error}")
            if keepFiles:
                log(f"files kept in {workDir}")
            else:
                shutil.rmtree(workDir, ignore_errors=True)
            if onFinished:
                onFinished(result, error)

        return self.runJob(command, load=load, wait=wait, timeoutS=timeoutS, cwd=workDir, onEvent=logEvent, onLine=onLine,
                           onFinished=finished)

    @staticmethod
    def _makeLog(workDir, logCallback):
        logFile = os.path.join(workDir, "job.log")

        def log(text):
            logging.info(f"Unleash: {text}")
            try:
                with open(logFile, "a", encoding="utf-8") as handle:
                    handle.write(text + "\n")
            except OSError:
                pass
            if logCallback:
                logCallback(text)

        return log

    def _loadResults(self, resultEvent, outputDir, fixedNode, movingNode, gridSpacingMm, showGrid, showJacobian):
        files = resultEvent.get("files") or self._defaultFiles(outputDir)
        report = {key: value for key, value in resultEvent.items() if key not in ("event", "files")}
        result = registration.loadRegistrationResult(sceneInSlicer(), files, fixedNode, movingNode, report)
        self._displayState = None
        self.applyDisplay(result, gridSpacingMm, showGrid, showJacobian)
        return result

    @staticmethod
    def _defaultFiles(outputDir) -> dict:
        """Only when an engine's result event has no file list: the names the engine writes."""
        return {key: os.path.join(outputDir, name) for key, name in REGISTRATION_FILES.items()}

    # -- display ---------------------------------------------------------------------------------------

    def applyDisplay(self, result, gridSpacingMm=15.0, showGrid=True, showJacobian=True) -> None:
        """Grid in the slice views and the overlay; called after a run and when the display settings change.
        The slice layers are set only when the overlay choice changes, not on every setting."""
        state = (result.jacobianVolume.GetID() if result.jacobianVolume else None, bool(showJacobian))
        display.showRegistration(result, gridSpacingMm, showGrid, showJacobian, setLayers=state != self._displayState)
        self._displayState = state

    def updateDisplay(self, parameterNode) -> None:
        """Live display settings from the parameter node (grid spacing, grid on/off, overlay)."""
        if parameterNode.forwardTransform is None or self.running:
            return
        self.applyDisplay(self.resultFromParameterNode(parameterNode), parameterNode.gridSpacingMm,
                          parameterNode.showGrid, parameterNode.showJacobian)

    @staticmethod
    def resultFromParameterNode(parameterNode):
        """The last run's nodes and report, kept on its forward transform (survives a scene save and load)."""
        return registration.resultFromTransform(parameterNode.forwardTransform)


#
# UnleashRegistrationTest
#


class UnleashRegistrationTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (ctest, or Reload and Test): the logic end to end on SampleData's CTChest."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_missing_inputs_are_named()
        self.setUp()
        self.test_landmarks_become_voxel_indices()
        self.setUp()
        self.test_register_deformed_ct()

    def test_missing_inputs_are_named(self):
        logic = UnleashRegistrationLogic()
        self.assertEqual(logic.missingInputs(None, None), "Select a fixed volume")
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        self.assertEqual(logic.missingInputs(volume, None), "Select a moving volume")
        with self.assertRaises(ValueError):
            logic.registerVolumes(fixedVolumeNode=volume, movingVolumeNode=None)

    def test_landmarks_become_voxel_indices(self):
        import numpy as np

        volume = slicer.util.addVolumeFromArray(np.zeros((10, 12, 14), dtype=np.int16))
        volume.SetSpacing(0.5, 0.7, 2.0)
        volume.SetOrigin(-20.0, 15.0, 3.0)
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        expected = [(1.0, 2.0, 3.0), (13.0, 0.0, 9.0)]
        for ijk in expected:
            ras = ijkToRas.MultiplyPoint((*ijk, 1.0))[:3]
            points.AddControlPointWorld(*ras)
        for got, want in zip(markupsToIjk(points, volume), expected):
            self.assertTrue(np.allclose(got, want, atol=1e-4), f"{got} != {want}")

    def test_register_deformed_ct(self):
        import numpy as np
        import SampleData

        self.delayDisplay("Loading CTChest")
        fixed = SampleData.downloadSample("CTChest")
        self.delayDisplay("Making a smoothly deformed copy")
        moving = slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, fixed, "CTChest deformed")
        deformation = self._smoothDeformation(fixed, amplitudeMm=6.0)
        moving.SetAndObserveTransformNodeID(deformation.GetID())
        slicer.vtkSlicerTransformLogic().hardenTransform(moving)
        slicer.mrmlScene.RemoveNode(deformation)

        fixedArray = slicer.util.arrayFromVolume(fixed).astype(np.float32)
        movingArray = slicer.util.arrayFromVolume(moving).astype(np.float32)
        self.assertEqual(fixedArray.shape, movingArray.shape)
        before = float(np.abs(movingArray - fixedArray).mean())

        self.delayDisplay("Registering (a few refinement iterations)")
        logic = UnleashRegistrationLogic()
        result = logic.registerVolumes(fixedVolumeNode=fixed, movingVolumeNode=moving, refinementIterations=20,
                                       device=DEFAULT_DEVICE, wait=True, timeoutS=3600)
        self.assertIsNotNone(result)
        self.assertTrue(result.forwardTransform.IsA("vtkMRMLTransformNode"))
        self.assertTrue(result.inverseTransform.IsA("vtkMRMLTransformNode"))
        self.assertEqual(moving.GetTransformNodeID(), result.forwardTransform.GetID())
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(result.warpedVolume.GetID()))
        self.assertIn("folding_fraction", result.report)
        gridDisplay = result.forwardTransform.GetDisplayNode()
        self.assertEqual(gridDisplay.GetVisualizationMode(), slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID)
        self.assertTrue(gridDisplay.GetVisibility2D())

        warpedArray = slicer.util.arrayFromVolume(result.warpedVolume).astype(np.float32)
        self.assertEqual(warpedArray.shape, fixedArray.shape)
        after = float(np.abs(warpedArray - fixedArray).mean())
        self.delayDisplay(f"mean |moving - fixed| {before:.1f} HU, after registration {after:.1f} HU")
        self.assertLess(after, before)

    @staticmethod
    def _smoothDeformation(volumeNode, amplitudeMm):
        """A smooth displacement (sine bumps, zero at the volume's border) as a grid transform node."""
        import numpy as np

        bounds = [0.0] * 6
        volumeNode.GetRASBounds(bounds)
        size = 12
        grid = vtk.vtkImageData()
        grid.SetOrigin(bounds[0], bounds[2], bounds[4])
        grid.SetSpacing(*[(bounds[2 * a + 1] - bounds[2 * a]) / (size - 1) for a in range(3)])
        grid.SetDimensions(size, size, size)
        grid.AllocateScalars(vtk.VTK_DOUBLE, 3)
        transform = slicer.vtkOrientedGridTransform()
        transform.SetDisplacementGridData(grid)
        transform.SetInterpolationModeToCubic()
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "Unleash test deformation")
        node.SetAndObserveTransformFromParent(transform)
        displacement = slicer.util.arrayFromGridTransform(node)  # (k, j, i, 3)
        k, j, i = np.meshgrid(*[np.linspace(0, np.pi, size)] * 3, indexing="ij")
        bump = np.sin(i) * np.sin(j) * np.sin(k)
        displacement[..., 0] = amplitudeMm * bump
        displacement[..., 1] = 0.5 * amplitudeMm * np.sin(2 * i) * np.sin(j) * np.sin(k)
        displacement[..., 2] = 0.7 * amplitudeMm * bump
        slicer.util.arrayFromGridTransformModified(node)
        return node
