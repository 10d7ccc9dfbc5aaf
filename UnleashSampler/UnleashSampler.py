"""Unleash Sampler: synthetic paired vessel volumes from the engine's sampler (planned).

The engine command it will run, `unleash sample`, is not part of this version of the engine. The module
lays out the planned settings and, on Generate, asks the engine whether it has the command (running
`python -m unleash sample --help` in a background job) and says so; it does not pretend to sample.
"""
import os
import pathlib
import sys
from typing import Annotated

# From a source checkout the shared helpers are in ../UnleashRegistration (installed: next to this file).
sys.path.extend(p for p in [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "UnleashRegistration")]
                if os.path.isdir(os.path.join(p, "UnleashCommon")) and p not in sys.path)

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

ENGINE_COMMAND = "sample"
SCHEDULES = ["maskgit", "paper"]  # the engine's names (unleash.sample.SCHEDULES)

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
for training and testing registration. <b>Planned:</b> the engine command <code>unleash sample</code> is not
part of this version; Generate checks for it and says so.
See <a href="https://github.com/unleash-registration/UnleashRegistration/blob/main/docs/slicer.md">the documentation</a>.
""")
        self.parent.acknowledgementText = _("Built on 3D Slicer's scripted module template.")


#
# UnleashSamplerParameterNode
#


@parameterNodeWrapper
class UnleashSamplerParameterNode:
    numberOfPairs: Annotated[int, WithinRange(1, 10000)] = 4
    schedule: Annotated[str, Choice(SCHEDULES)] = "maskgit"
    steps: Annotated[int, WithinRange(1, 5000)] = 50
    temperature: Annotated[float, WithinRange(0.0, 2.0)] = 1.0
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    device: str = "auto"
    outputFolder: pathlib.Path = pathlib.Path.home() / "unleash-samples"
    loadIntoScene: bool = True


#
# UnleashSamplerWidget
#


class UnleashSamplerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/UnleashSampler.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = UnleashSamplerLogic()

        self.ui.progressBar.visible = False
        self.ui.availabilityLabel.text = _("Planned module: generating pairs needs the engine command 'unleash sample'. "
                                           "Generate checks whether this engine has it.")
        self.ui.availabilityLabel.setStyleSheet("color: #b35c00")

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.refreshDevicesButton.connect("clicked(bool)", self.onRefreshDevices)

        self.initializeParameterNode()
        slicerjobs.fillDeviceCombo(self.ui.deviceComboBox, self._parameterNode.device)

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

    def onApplyButton(self) -> None:
        self.ui.applyButton.enabled = False
        self.ui.applyButton.text = _("Checking the engine...")

        def checked(available, message):
            self.ui.applyButton.enabled = True
            self.ui.applyButton.text = _("Generate")
            if available:
                message = self.logic.notRunnableMessage()
            self.ui.availabilityLabel.text = message
            self.ui.logTextEdit.appendPlainText(message)
            slicer.util.infoDisplay(message, windowTitle=_("Unleash Sampler"))

        self.logic.engineCommandAvailable(wait=False, completedCallback=checked)


#
# UnleashSamplerLogic
#


class UnleashSamplerLogic(ScriptedLoadableModuleLogic):
    """The planned console API (keyword arguments, wait flag), like UnleashRegistrationLogic.registerVolumes."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return UnleashSamplerParameterNode(super().getParameterNode())

    @staticmethod
    def engineCommandAvailable(wait: bool = True, completedCallback=None):
        """Whether the engine has `unleash sample`: (available, message) with wait=True, else completedCallback(...)."""
        answer = {}

        def done(available, message):
            answer["value"] = (available, message)
            if completedCallback:
                completedCallback(available, message)

        slicerjobs.checkEngineCommand(ENGINE_COMMAND, done, wait=wait)
        return answer.get("value") if wait else None

    @staticmethod
    def notRunnableMessage() -> str:
        return _("The engine has 'unleash sample', but this version of the Unleash Sampler module cannot run it yet: "
                 "update the UnleashRegistration extension.")

    def samplePairs(self, numberOfPairs=4, schedule="maskgit", steps=32, temperature=0.9, seed=0, device="auto",
                    outputFolder=None, loadIntoScene=True, wait=True):
        """Planned: generate `numberOfPairs` synthetic pairs into `outputFolder`. Raises NotImplementedError with the
        reason while the engine (or this module) cannot run `unleash sample`."""
        if numberOfPairs < 1 or steps < 1 or temperature < 0:
            raise ValueError(_("numberOfPairs and steps must be at least 1, temperature at least 0"))
        if schedule not in SCHEDULES:
            raise ValueError(_("schedule must be one of {choices}").format(choices=", ".join(SCHEDULES)))
        available, message = self.engineCommandAvailable(wait=True)
        raise NotImplementedError(self.notRunnableMessage() if available else message)


#
# UnleashSamplerTest
#


class UnleashSamplerTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_parameter_defaults()
        self.setUp()
        self.test_generate_says_why_it_cannot_run()

    def test_parameter_defaults(self):
        parameters = UnleashSamplerLogic().getParameterNode()
        self.assertEqual(parameters.numberOfPairs, 4)
        self.assertIn(parameters.schedule, SCHEDULES)
        self.assertEqual(parameters.device, "auto")
        self.assertIsInstance(parameters.outputFolder, pathlib.Path)

    def test_generate_says_why_it_cannot_run(self):
        logic = UnleashSamplerLogic()
        _available, message = logic.engineCommandAvailable(wait=True)
        self.assertTrue(message)
        with self.assertRaises(NotImplementedError) as raised:
            logic.samplePairs(numberOfPairs=1, steps=1, outputFolder=slicer.util.tempDirectory("UnleashSamplerTest-"))
        self.assertIn("unleash sample", str(raised.exception))
        with self.assertRaises(ValueError):
            logic.samplePairs(numberOfPairs=0)
