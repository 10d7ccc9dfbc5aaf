"""Unleash Sampler: synthetic paired vessel volumes from the engine's sampler, loaded into the scene.

Generate runs `unleash sample -n N -o OUTPUT/samples-YYYYmmdd-HHMMSS --progress json` as a background job (the
command line comes from the engine's `unleash.jobs.sample_command`); the output folder is training data for
Unleash Training as it is. The first pairs are loaded as segmentations (fixed and moving segments) when the job ends.
"""
import datetime
import os
import pathlib
from typing import Annotated

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest

from unleash.jobs import sample_command
from unleash.jobspec import DEFAULT_DEVICE, DEFAULT_SCHEDULE, DEFAULT_TEMPERATURE, SCHEDULES
from UnleashCommon import pythonExecutable
from UnleashCommon.dependencies import ensureDependencies
from UnleashCommon.engine import checkModelFile, copyTrainingPairs, defaultRunFolders
from UnleashCommon.joblogic import JobLogic
from UnleashCommon.jobpanel import JobPanelWidget
from UnleashCommon.modelchoice import BROWSE, fillModelCombo, selectComboData
from UnleashCommon.runner import describeProgress
from UnleashCommon.scene import samples
from UnleashCommon.scene.context import sceneInSlicer

PAIRS_LOADED = 4  # pairs loaded into the scene at most; all are in the output folder

#
# UnleashSampler
#


class UnleashSampler(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Unleash Sampler")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["UnleashRegistration developers"]
        self.parent.helpText = _("""
Generates synthetic pairs of lung vessel volumes (fixed and moving) with the <b>unleash</b> engine's sampler,
for training and testing registration: each run writes a new folder of pairs (usable as training data in Unleash
Training as it is) and loads the first pairs as segmentations. Leave Model empty for the sampler that ships with the
extension, or choose a sampler model file trained in Unleash Training. The shipped sampler is a CPU-sized first
version: in the project's tests its pairs did not yet improve registration training (see its model card).
Measured against the ten real training pairs (medians): every scan's vessel share lies in the real range (1.25-4.39 %
of the box); 27.4 skeleton voxels per 1000 vessel voxels (real 30.6; 25.9 before the mask rule joined the pieces
along their faint centrelines, 22.5 before the 1 mm refiner), radius p90 3.53 mm (real 3.35 mm), 96.4 % of the
vessels in the 10 largest pieces (real 97.0 %); but the trees are still clustered in the middle of each lung, over
19 % of the box (real 30 %), and the two scans of a pair do not move like breathing lungs.
See <a href="https://github.com/unleash-registration/UnleashRegistration/blob/main/docs/slicer.md">the documentation</a>.
""")
        self.parent.acknowledgementText = _("Built on 3D Slicer's scripted module template.")


#
# UnleashSamplerParameterNode
#


@parameterNodeWrapper
class UnleashSamplerParameterNode:
    numberOfPairs: Annotated[int, WithinRange(1, 10000)] = 4
    schedule: Annotated[str, Choice(list(SCHEDULES))] = DEFAULT_SCHEDULE
    steps: Annotated[int, WithinRange(1, 5000)] = SCHEDULES[DEFAULT_SCHEDULE]
    temperature: Annotated[float, WithinRange(0.05, 2.0)] = DEFAULT_TEMPERATURE
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    device: str = DEFAULT_DEVICE
    outputFolder: pathlib.Path = pathlib.Path.home() / "unleash-samples"
    loadIntoScene: bool = True
    modelPath: str = ""  # "": the shipped sampler (the combo box is filled from disk, so it is not bound by connectGui)


#
# UnleashSamplerWidget
#


class UnleashSamplerWidget(JobPanelWidget):
    def __init__(self, parent=None) -> None:
        JobPanelWidget.__init__(self, parent)
        self.lastOutput = None

    def setup(self) -> None:
        self.setupPanel("UI/UnleashSampler.ui", UnleashSamplerLogic())
        self.ui.progressBar.visible = False
        self.ui.availabilityLabel.visible = False
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.scheduleComboBox.connect("currentIndexChanged(int)", self.onScheduleChanged)
        self.ui.saveTrainingFolderButton.connect("clicked(bool)", self.onSaveTrainingFolder)
        self.ui.modelComboBox.connect("activated(int)", self.onModelActivated)
        fillModelCombo(self.ui.modelComboBox, "sampler", _("Shipped sampler"), _("Browse for a model file..."))
        self.onParameterNodeSet()

    def onParameterNodeSet(self) -> None:
        if self.ui is not None and self.ui.modelComboBox.count:
            path = self._parameterNode.modelPath
            selectComboData(self.ui.modelComboBox, path, addLabel=path)

    def onModelActivated(self, index) -> None:
        if not self._parameterNode:
            return
        data = self.ui.modelComboBox.itemData(index)
        if data == BROWSE:
            path = qt.QFileDialog.getOpenFileName(self.parent, _("Choose a sampler model"), str(defaultRunFolders()[0]),
                                                  _("Unleash model files (*.safetensors)"))
            data = path or self._parameterNode.modelPath
        self._parameterNode.modelPath = data or ""
        selectComboData(self.ui.modelComboBox, self._parameterNode.modelPath, addLabel=self._parameterNode.modelPath)

    def onSaveTrainingFolder(self) -> None:
        target = qt.QFileDialog.getExistingDirectory(self.parent, _("Folder of training pairs"))
        if not target or not self.lastOutput:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not save the training folder."), waitCursor=True):
            copied = self.logic.saveAsTrainingFolder(self.lastOutput, target)
            self.ui.logTextEdit.appendPlainText(f"copied {len(copied) // 2} pairs to {target}")

    def onScheduleChanged(self, index) -> None:
        """Each schedule has its own sensible number of steps (the paper's is 256, MaskGIT's 12)."""
        schedule = self.ui.scheduleComboBox.currentText
        if self._parameterNode and schedule in SCHEDULES:
            self._parameterNode.steps = SCHEDULES[schedule]

    def onApplyButton(self) -> None:
        if self.logic.running:
            self.logic.cancel()
            return
        p = self._parameterNode
        try:
            if not ensureDependencies(slicer.app.temporaryPath, self.parent):
                return
        except RuntimeError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("Unleash Sampler"))
            return
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        self.ui.applyButton.text = _("Cancel")

        def onEvent(event):
            if event.get("event") == "progress":
                self.ui.progressBar.value, self.ui.progressLabel.text = describeProgress(event)
            elif event.get("event") in ("log", "error"):
                self.ui.logTextEdit.appendPlainText(str(event.get("message")))

        def onFinished(result, error):
            self.ui.progressBar.visible = False
            self.ui.applyButton.text = _("Generate")
            if result:
                report, _nodes = result
                self.ui.progressLabel.text = _("{count} pairs in {folder}").format(count=report["count"],
                                                                                   folder=report["output"])
                self.lastOutput = report["output"]
                self.ui.saveTrainingFolderButton.enabled = True
            elif error != "cancelled":
                self.ui.progressLabel.text = _("Failed: {error}").format(error=error)
                slicer.util.errorDisplay(error, windowTitle=_("Unleash Sampler"))
            else:
                self.ui.progressLabel.text = _("Cancelled; nothing was written")

        with slicer.util.tryWithErrorDisplay(_("Could not start sampling."), waitCursor=True):
            self.logic.samplePairs(numberOfPairs=p.numberOfPairs, schedule=p.schedule, steps=p.steps,
                                   temperature=p.temperature, seed=p.seed, device=p.device,
                                   modelPath=p.modelPath or None,
                                   outputFolder=str(p.outputFolder), loadIntoScene=p.loadIntoScene, wait=False,
                                   onEvent=onEvent, onFinished=onFinished)


#
# UnleashSamplerLogic
#


class UnleashSamplerLogic(ScriptedLoadableModuleLogic, JobLogic):
    """Console API: samplePairs (keyword arguments, wait flag), the job life cycle of JobLogic. A cancelled job
    leaves nothing half-done (the engine's output folder appears whole or not at all)."""

    busyMessage = _("Sampling is already running: cancel it first")

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        JobLogic.__init__(self)

    def getParameterNode(self):
        return UnleashSamplerParameterNode(super().getParameterNode())

    @staticmethod
    def newOutputPath(outputFolder) -> str:
        return str(pathlib.Path(outputFolder) / f"samples-{datetime.datetime.now():%Y%m%d-%H%M%S}")

    def samplePairs(self, numberOfPairs=4, schedule=DEFAULT_SCHEDULE, steps=None, temperature=DEFAULT_TEMPERATURE, seed=0,
                    device=DEFAULT_DEVICE,
                    modelPath=None, outputFolder=None, loadIntoScene=True, wait=True, onEvent=None, onFinished=None):
        """Sample `numberOfPairs` pairs into a new folder under `outputFolder`; with loadIntoScene, the first
        PAIRS_LOADED pairs become segmentation nodes. The result: (the job's result event, the loaded nodes).
        wait=True returns it; else the job, and onFinished(result, error) is called at the end."""
        if numberOfPairs < 1 or (steps is not None and steps < 1) or temperature <= 0:
            raise ValueError(_("numberOfPairs and steps must be at least 1, temperature above 0"))
        if modelPath:
            checkModelFile(modelPath, "sampler")
        self.checkIdle()
        outputFolder = outputFolder or str(pathlib.Path.home() / "unleash-samples")
        # (a schedule the engine does not have is refused here, by the job's option list)
        command = sample_command(self.newOutputPath(outputFolder), numberOfPairs, model=modelPath or None,
                                 schedule=schedule, steps=steps, temperature=temperature, seed=seed, device=device,
                                 overwrite=False, python=pythonExecutable())
        os.makedirs(outputFolder, exist_ok=True)

        def load(job):
            return job.result, self.loadPairs(job.result) if loadIntoScene else []

        return self.runJob(command, load=load, wait=wait, onEvent=onEvent, onFinished=onFinished)

    @staticmethod
    def loadPairs(result: dict) -> list:
        """The first PAIRS_LOADED pairs of a `result` event as segmentation nodes, one per pair with the segments
        `fixed` (magenta) and `moving` (green), shown in 3D."""
        return samples.loadSampledPairs(sceneInSlicer(), result, PAIRS_LOADED)

    @staticmethod
    def saveAsTrainingFolder(samplesFolder, targetFolder) -> list:
        """Copy the sampled pairs into targetFolder (a folder of pairs for Unleash Training's data list)."""
        return copyTrainingPairs(samplesFolder, targetFolder)


#
# UnleashSamplerTest
#


class UnleashSamplerTest(ScriptedLoadableModuleTest):
    """In Slicer: samples one pair with the shipped sampler and checks the loaded segmentation."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_parameter_defaults()
        self.setUp()
        self.test_sample_one_pair()

    def test_parameter_defaults(self):
        parameters = UnleashSamplerLogic().getParameterNode()
        self.assertEqual(parameters.numberOfPairs, 4)
        self.assertIn(parameters.schedule, SCHEDULES)
        self.assertEqual(parameters.steps, SCHEDULES[parameters.schedule])
        self.assertIsInstance(parameters.outputFolder, pathlib.Path)

    def test_sample_one_pair(self):
        logic = UnleashSamplerLogic()
        with self.assertRaises(ValueError):
            logic.samplePairs(numberOfPairs=0)
        result, nodes = logic.samplePairs(numberOfPairs=1, steps=4, outputFolder=slicer.util.tempDirectory("UnleashSamplerTest-"))
        self.assertEqual(result["count"], 1)
        self.assertEqual(len(nodes), 1)
        self.assertEqual(nodes[0].GetSegmentation().GetNumberOfSegments(), 2)
