"""Unleash Training: train the engine's models on your own data (planned).

The engine command it will run, `unleash train`, is not part of this version of the engine. The module
lays out the planned settings (model kind, data folders with weights, iterations, batch size, learning
rate, device, run folder, Start/Stop/Resume, the loss plot, the list of runs) and, on Start or Resume,
asks the engine whether it has the command and says so; it does not pretend to train. The list of runs
is real: the subfolders of the run folder (model files found there are offered by Unleash Registration).
"""
import json
import os
import pathlib
import sys
from typing import Annotated

# From a source checkout the shared helpers are in ../UnleashRegistration (installed: next to this file).
sys.path.extend(p for p in [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "UnleashRegistration")]
                if os.path.isdir(os.path.join(p, "UnleashCommon")) and p not in sys.path)

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from UnleashCommon import slicerjobs
from UnleashCommon.engine import defaultRunFolders, listRuns

ENGINE_COMMAND = "train"
MODEL_KINDS = ["registration", "sampler"]

#
# UnleashTraining
#


class UnleashTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Unleash Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["UnleashRegistration developers"]
        self.parent.helpText = _("""
Trains the <b>unleash</b> engine's models (registration network, pair sampler) on folders of your own data, as a
background job that can be stopped and resumed. <b>Planned:</b> the engine command <code>unleash train</code> is not
part of this version; Start and Resume check for it and say so.
See <a href="https://github.com/unleash-registration/UnleashRegistration/blob/main/docs/slicer.md">the documentation</a>.
""")
        self.parent.acknowledgementText = _("Built on 3D Slicer's scripted module template.")


#
# UnleashTrainingParameterNode
#


@parameterNodeWrapper
class UnleashTrainingParameterNode:
    """dataFolders: JSON list of [folder, weight] (the table is not a widget connectGui can bind)."""

    modelKind: Annotated[str, Choice(MODEL_KINDS)] = "registration"
    dataFolders: str = "[]"
    iterations: Annotated[int, WithinRange(1, 1000000)] = 1500
    batchSize: Annotated[int, WithinRange(1, 256)] = 2
    learningRate: Annotated[float, WithinRange(1e-6, 1.0)] = 1e-4
    device: str = "auto"
    runFolder: pathlib.Path = defaultRunFolders()[0]


#
# UnleashTrainingWidget
#


class UnleashTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._fillingTable = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/UnleashTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = UnleashTrainingLogic()

        self.ui.progressBar.visible = False
        self.ui.availabilityLabel.text = _("Planned module: training needs the engine command 'unleash train'. "
                                           "Start and Resume check whether this engine has it.")
        self.ui.availabilityLabel.setStyleSheet("color: #b35c00")
        header = self.ui.dataFoldersTable.horizontalHeader()
        header.setSectionResizeMode(0, qt.QHeaderView.Stretch)
        header.setSectionResizeMode(1, qt.QHeaderView.ResizeToContents)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.startButton.connect("clicked(bool)", self.onStartButton)
        self.ui.resumeButton.connect("clicked(bool)", self.onResumeButton)
        self.ui.stopButton.connect("clicked(bool)", self.onStopButton)
        self.ui.addFolderButton.connect("clicked(bool)", self.onAddFolder)
        self.ui.removeFolderButton.connect("clicked(bool)", self.onRemoveFolder)
        self.ui.dataFoldersTable.connect("cellChanged(int,int)", self.onTableEdited)
        self.ui.refreshRunsButton.connect("clicked(bool)", lambda _checked: self.updateRuns())
        self.ui.runFolderButton.connect("directoryChanged(QString)", self.updateRuns)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.refreshDevicesButton.connect("clicked(bool)", self.onRefreshDevices)

        self.initializeParameterNode()
        slicerjobs.fillDeviceCombo(self.ui.deviceComboBox, self._parameterNode.device)
        self.updateRuns()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.fillTable()

    # -- data folders ------------------------------------------------------------------------------------

    def fillTable(self) -> None:
        self._fillingTable = True
        try:
            table = self.ui.dataFoldersTable
            folders = self.logic.parseDataFolders(self._parameterNode.dataFolders)
            table.setRowCount(len(folders))
            for row, (folder, weight) in enumerate(folders):
                folderItem = qt.QTableWidgetItem(folder)
                folderItem.setFlags(folderItem.flags() & ~qt.Qt.ItemIsEditable)
                table.setItem(row, 0, folderItem)
                table.setItem(row, 1, qt.QTableWidgetItem(f"{weight:g}"))
        finally:
            self._fillingTable = False

    def saveTable(self) -> None:
        table = self.ui.dataFoldersTable
        folders = []
        for row in range(table.rowCount):
            try:
                weight = float(table.item(row, 1).text())
            except (AttributeError, ValueError):
                weight = 1.0
            folders.append([table.item(row, 0).text(), weight if weight > 0 else 1.0])
        self._parameterNode.dataFolders = json.dumps(folders)
        self.fillTable()

    def onAddFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("Add a folder of training pairs"))
        if folder and self._parameterNode:
            folders = self.logic.parseDataFolders(self._parameterNode.dataFolders) + [[folder, 1.0]]
            self._parameterNode.dataFolders = json.dumps(folders)
            self.fillTable()

    def onRemoveFolder(self) -> None:
        rows = sorted({index.row() for index in self.ui.dataFoldersTable.selectedIndexes()}, reverse=True)
        for row in rows:
            self.ui.dataFoldersTable.removeRow(row)
        if rows:
            self.saveTable()

    def onTableEdited(self, row, column) -> None:
        if not self._fillingTable and self._parameterNode:
            self.saveTable()

    # -- runs and devices --------------------------------------------------------------------------------

    def updateRuns(self, folder=None) -> None:
        """List the runs of `folder` (default: the parameter node's run folder)."""
        self.ui.runsListWidget.clear()
        if folder is None and self._parameterNode:
            folder = self._parameterNode.runFolder
        for run, hasModel in listRuns(folder):
            item = qt.QListWidgetItem(run.name + (_("  (model file)") if hasModel else ""))
            item.setData(qt.Qt.UserRole, str(run))
            item.setToolTip(str(run))
            self.ui.runsListWidget.addItem(item)

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    def onRefreshDevices(self) -> None:
        self.ui.refreshDevicesButton.enabled = False

        def done(info, error):
            self.ui.refreshDevicesButton.enabled = True
            if error:
                self.ui.logTextEdit.appendPlainText(f"could not list the devices: {error}")
            slicerjobs.fillDeviceCombo(self.ui.deviceComboBox, self._parameterNode.device if self._parameterNode else "auto")

        slicerjobs.probeEngine(completedCallback=done)

    # -- Start / Stop / Resume ---------------------------------------------------------------------------

    def reportAvailability(self, button, label) -> None:
        button.enabled = False
        button.text = _("Checking...")

        def checked(available, message):
            button.enabled = True
            button.text = label
            if available:
                message = self.logic.notRunnableMessage()
            self.ui.availabilityLabel.text = message
            self.ui.logTextEdit.appendPlainText(message)
            slicer.util.infoDisplay(message, windowTitle=_("Unleash Training"))

        self.logic.engineCommandAvailable(wait=False, completedCallback=checked)

    def onStartButton(self) -> None:
        if not self.logic.parseDataFolders(self._parameterNode.dataFolders):
            slicer.util.warningDisplay(_("Add a folder of training pairs"), windowTitle=_("Unleash Training"))
            return
        self.reportAvailability(self.ui.startButton, _("Start"))

    def onResumeButton(self) -> None:
        if self.ui.runsListWidget.currentItem() is None:
            slicer.util.warningDisplay(_("Select a run in the list to resume"), windowTitle=_("Unleash Training"))
            return
        self.reportAvailability(self.ui.resumeButton, _("Resume"))

    def onStopButton(self) -> None:
        self.logic.stopTraining()


#
# UnleashTrainingLogic
#


class UnleashTrainingLogic(ScriptedLoadableModuleLogic):
    """The planned console API (keyword arguments, wait flag), like UnleashRegistrationLogic.registerVolumes."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.job = None  # the running training job, once there is an engine command to run

    def getParameterNode(self):
        return UnleashTrainingParameterNode(super().getParameterNode())

    @staticmethod
    def parseDataFolders(text: str) -> list:
        """The parameter node's JSON list of [folder, weight]; bad entries are dropped."""
        try:
            entries = json.loads(text or "[]")
        except json.JSONDecodeError:
            return []
        folders = []
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str):
                try:
                    folders.append([entry[0], float(entry[1])])
                except (TypeError, ValueError):
                    continue
        return folders

    @staticmethod
    def engineCommandAvailable(wait: bool = True, completedCallback=None):
        """Whether the engine has `unleash train`: (available, message) with wait=True, else completedCallback(...)."""
        answer = {}

        def done(available, message):
            answer["value"] = (available, message)
            if completedCallback:
                completedCallback(available, message)

        slicerjobs.checkEngineCommand(ENGINE_COMMAND, done, wait=wait)
        return answer.get("value") if wait else None

    @staticmethod
    def notRunnableMessage() -> str:
        return _("The engine has 'unleash train', but this version of the Unleash Training module cannot run it yet: "
                 "update the UnleashRegistration extension.")

    def startTraining(self, dataFolders, modelKind="registration", iterations=1500, batchSize=2, learningRate=1e-4,
                      device="auto", runFolder=None, wait=False):
        """Planned: train a `modelKind` model on dataFolders ([(folder, weight)]) into a new run under runFolder.
        Raises NotImplementedError with the reason while the engine (or this module) cannot run `unleash train`."""
        if not dataFolders:
            raise ValueError(_("Add at least one folder of training pairs"))
        if modelKind not in MODEL_KINDS:
            raise ValueError(_("modelKind must be one of {choices}").format(choices=", ".join(MODEL_KINDS)))
        if iterations < 1 or batchSize < 1 or learningRate <= 0:
            raise ValueError(_("iterations and batchSize must be at least 1, learningRate above 0"))
        available, message = self.engineCommandAvailable(wait=True)
        raise NotImplementedError(self.notRunnableMessage() if available else message)

    def resumeTraining(self, runPath, wait=False):
        """Planned: continue the run in runPath from its last checkpoint (same NotImplementedError as startTraining)."""
        if not os.path.isdir(runPath):
            raise ValueError(_("{path} is not a run folder").format(path=runPath))
        available, message = self.engineCommandAvailable(wait=True)
        raise NotImplementedError(self.notRunnableMessage() if available else message)

    def stopTraining(self) -> None:
        """Stop the running job (it saves a checkpoint on SIGTERM first); nothing to do when none runs."""
        if self.job is not None:
            self.job.cancel()


#
# UnleashTrainingTest
#


class UnleashTrainingTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_data_folders_round_trip()
        self.setUp()
        self.test_runs_are_listed()
        self.setUp()
        self.test_start_says_why_it_cannot_run()

    def test_data_folders_round_trip(self):
        logic = UnleashTrainingLogic()
        parameters = logic.getParameterNode()
        parameters.dataFolders = json.dumps([["/data/a", 2.0], ["/data/b", 1]])
        self.assertEqual(logic.parseDataFolders(parameters.dataFolders), [["/data/a", 2.0], ["/data/b", 1.0]])
        self.assertEqual(logic.parseDataFolders("not json"), [])

    def test_runs_are_listed(self):
        folder = pathlib.Path(slicer.util.tempDirectory("UnleashTrainingTest-"))
        (folder / "run-a").mkdir()
        (folder / "run-b").mkdir()
        (folder / "run-b" / "model.safetensors").write_bytes(b"")
        runs = {run.name: hasModel for run, hasModel in listRuns(folder)}
        self.assertEqual(runs, {"run-a": False, "run-b": True})

    def test_start_says_why_it_cannot_run(self):
        logic = UnleashTrainingLogic()
        with self.assertRaises(NotImplementedError) as raised:
            logic.startTraining([["/data/a", 1.0]], iterations=1)
        self.assertIn("unleash train", str(raised.exception))
        with self.assertRaises(ValueError):
            logic.startTraining([])
