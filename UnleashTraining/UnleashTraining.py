"""Unleash Training: train the engine's models on your own data from a panel.

Start runs `unleash train KIND --data ... --out RUNFOLDER/KIND-YYYYmmdd-HHMMSS --progress json` as a background job
(the command line comes from the engine's `unleash.jobs.train_command`); its events drive the progress bar, the loss
plot (a table node and a plot chart shown in the layout) and the log. Stop sends SIGTERM: the job finishes its step,
saves a resumable checkpoint and exits. Resume runs `unleash train KIND --resume RUN` on the run selected in the list.
Model files of finished runs appear in Unleash Registration's model list (and sampler files in Unleash Sampler's).
"""
import datetime
import json
import os
import pathlib
from typing import Annotated

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest

from unleash.jobs import train_command
from unleash.jobspec import DEFAULT_DEVICE, TRAIN_KINDS, TRAINING_DEFAULTS
from unleash.train.rundir import list_runs, read_metrics, run_summary
from UnleashCommon import pythonExecutable
from UnleashCommon.dependencies import ensureDependencies
from UnleashCommon.engine import defaultRunFolders, describeRun
from UnleashCommon.joblogic import JobLogic
from UnleashCommon.jobpanel import JobPanelWidget
from UnleashCommon.runner import describeProgress
from UnleashCommon.scene import charts
from UnleashCommon.scene.context import sceneInSlicer

STOP_GRACE_S = 600.0  # a stopped job finishes its step (and a validation under way) before it saves and exits
PLOT_EVERY_STEPS = 5

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
Trains the <b>unleash</b> engine's models (registration network, VQ-autoencoder, denoiser) on folders of your own
data, as a background job that can be stopped and resumed. The loss is plotted while the job runs; every run keeps
its settings, loss log, checkpoints and model files in its own folder.
See <a href="https://github.com/unleash-registration/UnleashRegistration/blob/main/docs/slicer.md">the documentation</a>.
""")
        self.parent.acknowledgementText = _("Built on 3D Slicer's scripted module template.")


#
# UnleashTrainingParameterNode
#


@parameterNodeWrapper
class UnleashTrainingParameterNode:
    """dataFolders: JSON list of [folder, weight] (the table is not a widget connectGui can bind)."""

    modelKind: Annotated[str, Choice(list(TRAIN_KINDS))] = TRAIN_KINDS[0]
    dataFolders: str = "[]"
    iterations: Annotated[int, WithinRange(1, 1000000)] = TRAINING_DEFAULTS[TRAIN_KINDS[0]]["iterations"]
    batchSize: Annotated[int, WithinRange(1, 256)] = TRAINING_DEFAULTS[TRAIN_KINDS[0]]["batch_size"]
    learningRate: Annotated[float, WithinRange(1e-6, 1.0)] = TRAINING_DEFAULTS[TRAIN_KINDS[0]]["learning_rate"]
    device: str = DEFAULT_DEVICE
    runFolder: pathlib.Path = defaultRunFolders()[0]


#
# UnleashTrainingWidget
#


class UnleashTrainingWidget(JobPanelWidget):
    def __init__(self, parent=None) -> None:
        JobPanelWidget.__init__(self, parent)
        self._fillingTable = False

    def setup(self) -> None:
        self.setupPanel("UI/UnleashTraining.ui", UnleashTrainingLogic())
        self.ui.progressBar.visible = False
        self.ui.availabilityLabel.visible = False
        header = self.ui.dataFoldersTable.horizontalHeader()
        header.setSectionResizeMode(0, qt.QHeaderView.Stretch)
        header.setSectionResizeMode(1, qt.QHeaderView.ResizeToContents)
        self.ui.startButton.connect("clicked(bool)", self.onStartButton)
        self.ui.resumeButton.connect("clicked(bool)", self.onResumeButton)
        self.ui.stopButton.connect("clicked(bool)", self.onStopButton)
        self.ui.addFolderButton.connect("clicked(bool)", self.onAddFolder)
        self.ui.removeFolderButton.connect("clicked(bool)", self.onRemoveFolder)
        self.ui.dataFoldersTable.connect("cellChanged(int,int)", self.onTableEdited)
        self.ui.refreshRunsButton.connect("clicked(bool)", lambda _checked: self.updateRuns())
        self.ui.runFolderButton.connect("directoryChanged(QString)", self.updateRuns)
        self.ui.runsListWidget.connect("currentItemChanged(QListWidgetItem*,QListWidgetItem*)", self.onRunSelected)
        self.ui.modelKindComboBox.connect("currentIndexChanged(int)", self.onKindChanged)
        self.updateRuns()
        self.updateButtons()

    def onParameterNodeSet(self) -> None:
        self.fillTable()

    def onKindChanged(self, index) -> None:
        """The engine's defaults for the kind."""
        kind = self.ui.modelKindComboBox.currentText
        defaults = TRAINING_DEFAULTS.get(kind)
        if defaults and self._parameterNode:
            self._parameterNode.iterations = int(defaults["iterations"])
            self._parameterNode.batchSize = int(defaults["batch_size"])
            self._parameterNode.learningRate = float(defaults["learning_rate"])
        self.ui.vqaePathLineEdit.enabled = kind == "denoiser"

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
        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("Add a folder of training data"))
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
        """List the runs of `folder` (default: the parameter node's run folder) with their state."""
        self.ui.runsListWidget.clear()
        if folder is None and self._parameterNode:
            folder = self._parameterNode.runFolder
        for run, _hasModel in list_runs(folder):
            item = qt.QListWidgetItem(describeRun(run_summary(run)))
            item.setData(qt.Qt.UserRole, str(run))
            item.setToolTip(str(run))
            self.ui.runsListWidget.addItem(item)

    def selectedRun(self):
        item = self.ui.runsListWidget.currentItem()
        return item.data(qt.Qt.UserRole) if item is not None else None

    def onRunSelected(self, current, previous) -> None:
        if current is not None and not self.logic.running:
            self.logic.plotRun(current.data(qt.Qt.UserRole))

    # -- Start / Stop / Resume ---------------------------------------------------------------------------

    def updateButtons(self) -> None:
        running = self.logic.running
        self.ui.startButton.enabled = not running
        self.ui.resumeButton.enabled = not running
        self.ui.stopButton.enabled = running
        self.ui.progressBar.visible = running

    def onEvent(self, event) -> None:
        kind = event.get("event")
        if kind == "progress":
            percent, text = describeProgress(event)
            if event.get("loss") is not None:
                text += f", loss {event['loss']:.4g}"
            for name, value in (event.get("metric") or {}).items():
                text += f", {name} {value:.4g}"
            self.ui.progressBar.value = percent
            self.ui.progressLabel.text = text
        elif kind in ("log", "validation", "checkpoint", "stopped", "error"):
            self.ui.logTextEdit.appendPlainText(self.logic.eventLine(event))
            if kind == "stopped":
                self.ui.progressLabel.text = _("Stopped at step {step} of {total}; Resume continues the run.").format(
                    step=event["step"], total=event["total"])

    def onFinished(self, result, error) -> None:
        self.updateButtons()
        self.updateRuns()
        if result:
            self.ui.progressLabel.text = _("Done: {path}").format(path=result.get("model"))
            self.ui.logTextEdit.appendPlainText(f"model file: {result.get('model')}")
        elif error != "cancelled":
            self.ui.progressLabel.text = _("Failed: {error}").format(error=error)
            slicer.util.errorDisplay(error, windowTitle=_("Unleash Training"))

    def startJob(self, start) -> None:
        """Run start() (a logic call that launches a job), with the dependencies checked first."""
        try:
            if not ensureDependencies(slicer.app.temporaryPath, self.parent):
                return
            with slicer.util.tryWithErrorDisplay(_("Could not start the training job."), waitCursor=True):
                start()
        except RuntimeError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("Unleash Training"))
        self.updateButtons()

    def onStartButton(self) -> None:
        p = self._parameterNode
        folders = self.logic.parseDataFolders(p.dataFolders)
        if not folders:
            slicer.util.warningDisplay(_("Add a folder of training data"), windowTitle=_("Unleash Training"))
            return
        validation = self.ui.validationPathLineEdit.currentPath
        self.ui.logTextEdit.clear()
        self.startJob(lambda: self.logic.startTraining(
            folders, modelKind=p.modelKind, iterations=p.iterations, batchSize=p.batchSize, learningRate=p.learningRate,
            device=p.device, runFolder=str(p.runFolder), validationFolders=[validation] if validation else [],
            configFile=self.ui.configPathLineEdit.currentPath or None,
            vqaeFile=(self.ui.vqaePathLineEdit.currentPath or None) if p.modelKind == "denoiser" else None,
            initFile=self.ui.initPathLineEdit.currentPath or None,
            onEvent=self.onEvent, onFinished=self.onFinished))

    def onResumeButton(self) -> None:
        run = self.selectedRun()
        if run is None:
            slicer.util.warningDisplay(_("Select a run in the list to resume"), windowTitle=_("Unleash Training"))
            return
        self.startJob(lambda: self.logic.resumeTraining(run, device=self._parameterNode.device,
                                                        onEvent=self.onEvent, onFinished=self.onFinished))

    def onStopButton(self) -> None:
        self.ui.progressLabel.text = _("Stopping: the job saves a checkpoint after its current step...")
        self.logic.cancel()


#
# UnleashTrainingLogic
#


class UnleashTrainingLogic(ScriptedLoadableModuleLogic, JobLogic):
    """Console API: startTraining / resumeTraining (keyword arguments, wait flag), the job life cycle of
    JobLogic; cancel() stops the job: it saves a resumable checkpoint, reports `stopped` and exits."""

    busyMessage = _("A training job is running; stop it first")
    terminateGraceS = STOP_GRACE_S

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        JobLogic.__init__(self)
        self.steps: list = []
        self.losses: list = []
        self.tableNode = None

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
    def newRunPath(runFolder, modelKind: str) -> str:
        """RUNFOLDER/KIND-YYYYmmdd-HHMMSS: a new folder for every run, never an old run overwritten."""
        return str(pathlib.Path(runFolder) / f"{modelKind}-{datetime.datetime.now():%Y%m%d-%H%M%S}")

    @staticmethod
    def eventLine(event: dict) -> str:
        """One log line for a job event."""
        kind = event.get("event")
        if kind == "validation":
            values = ", ".join(f"{k} {v:.4g}" for k, v in event.items() if isinstance(v, float))
            return f"step {event.get('step')}: validation {values}"
        if kind == "checkpoint":
            return f"step {event.get('step')}: checkpoint saved"
        if kind == "stopped":
            return f"stopped at step {event.get('step')} ({event.get('reason')}); resume: {event.get('resume')}"
        return str(event.get("message", event))

    def startTraining(self, dataFolders, modelKind="registration", iterations=None, batchSize=None, learningRate=None,
                      device=DEFAULT_DEVICE, runFolder=None, validationFolders=(), configFile=None, vqaeFile=None, initFile=None,
                      seed=None, wait=False, onEvent=None, onFinished=None):
        """Train a `modelKind` model on dataFolders ([(folder, weight)]) into a new run folder under runFolder.
        The result is the job's `result` event (its `model` names the model file): wait=True returns it, else
        the job, and onFinished(result, error) is called at the end. initFile: a model file of the same kind to
        start from (fine-tuning) instead of a new network."""
        self.checkIdle()
        if not dataFolders:
            raise ValueError(_("Add at least one folder of training data"))
        runFolder = runFolder or str(defaultRunFolders()[0])
        # (a kind the engine does not train is refused here, by the job's option list)
        command = train_command(modelKind, data=[(folder, weight) for folder, weight in dataFolders],
                                out=self.newRunPath(runFolder, modelKind), validation=list(validationFolders),
                                config=configFile, vqae=vqaeFile, init=initFile, iterations=iterations, batch_size=batchSize,
                                learning_rate=learningRate, seed=seed, device=device, python=pythonExecutable())
        os.makedirs(runFolder, exist_ok=True)
        return self._run(command, wait, onEvent, onFinished)

    def resumeTraining(self, runPath, iterations=None, device=DEFAULT_DEVICE, wait=False, onEvent=None, onFinished=None):
        """Continue the run in runPath from its last checkpoint (optionally to a higher total of iterations)."""
        self.checkIdle()
        kind = run_summary(runPath)["kind"]
        if kind not in TRAIN_KINDS:
            raise ValueError(_("{path} is not a training run folder").format(path=runPath))
        command = train_command(kind, resume=runPath, iterations=iterations, device=device, python=pythonExecutable())
        self.plotRun(runPath)
        return self._run(command, wait, onEvent, onFinished, keepPlot=True)

    def _run(self, command, wait, onEvent, onFinished, keepPlot=False):
        if not keepPlot:
            self.steps, self.losses = [], []

        def event(e):
            if e.get("event") == "progress" and e.get("loss") is not None:
                self.steps.append(e["step"])
                self.losses.append(e["loss"])
                if e["step"] % PLOT_EVERY_STEPS == 0 or e["step"] == e.get("total"):
                    self.updatePlot()
            if onEvent:
                onEvent(e)

        return self.runJob(command, wait=wait, onEvent=event, onFinished=onFinished)

    # -- the loss plot -----------------------------------------------------------------------------------

    def plotRun(self, runPath) -> None:
        """Show the loss log of a run (RUN/metrics.csv)."""
        metrics = read_metrics(runPath)
        self.steps, self.losses = list(metrics.get("step", [])), list(metrics.get("loss", []))
        self.updatePlot()

    def updatePlot(self) -> None:
        """The loss against the step in a table node, drawn by a plot chart in the layout's plot view."""
        if self.steps:
            self.tableNode = charts.lossChart(sceneInSlicer(), self.steps, self.losses, self.tableNode)


#
# UnleashTrainingTest
#


class UnleashTrainingTest(ScriptedLoadableModuleTest):
    """In Slicer: trains a tiny registration model on the shared training pairs (UNLEASH_DATA) and plots its loss.
    Stop and resume are tested without Slicer, with the same job runner (Testing/test_slicer_extension.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_data_folders_round_trip()
        self.setUp()
        self.test_train_a_tiny_model()

    def test_data_folders_round_trip(self):
        logic = UnleashTrainingLogic()
        parameters = logic.getParameterNode()
        parameters.dataFolders = json.dumps([["/data/a", 2.0], ["/data/b", 1]])
        self.assertEqual(logic.parseDataFolders(parameters.dataFolders), [["/data/a", 2.0], ["/data/b", 1.0]])
        self.assertEqual(logic.parseDataFolders("not json"), [])

    def test_train_a_tiny_model(self):
        data = os.environ.get("UNLEASH_DATA")
        if not data or not os.path.isdir(os.path.join(data, "lung250m4b_vessels", "train")):
            self.delayDisplay("UNLEASH_DATA is not set: the training test is skipped")
            return
        runFolder = slicer.util.tempDirectory("UnleashTrainingTest-")
        config = os.path.join(runFolder, "tiny.json")
        with open(config, "w") as handle:
            json.dump({"model": {"shape_xyz": [81, 57, 81], "spacing_mm": 4.0, "lattice_mm": 4.0, "channels": [4, 8]}}, handle)
        logic = UnleashTrainingLogic()
        result = logic.startTraining([[os.path.join(data, "lung250m4b_vessels", "train"), 1.0]], iterations=4,
                                     runFolder=runFolder, configFile=config, wait=True)
        self.assertTrue(os.path.isfile(result["model"]))
        self.assertEqual(logic.tableNode.GetNumberOfRows(), 4)
