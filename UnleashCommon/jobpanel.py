"""What the Unleash Sampler and Unleash Training panels share: the scripted-module template's
parameter-node life cycle, the device selector with its Refresh button, and stopping the module's job
when the module is closed. Needs Slicer (the modules import it; tests only compile and lint it).

A panel subclasses JobPanelWidget, calls setupPanel(ui file, logic) in setup(), and may override
onParameterNodeSet() (after the parameter node is bound to the GUI) and onEngineProbed() (after the
engine was asked for its devices and defaults). The logic needs getParameterNode() and cancel() (JobLogic).
"""
import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from unleash.jobspec import DEFAULT_DEVICE

from . import slicerjobs


class JobPanelWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setupPanel(self, uiFile: str, logic) -> None:
        """Load the .ui, bind the parameter node, and fill the device selector."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath(uiFile))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logic
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.refreshDevicesButton.connect("clicked(bool)", self.onRefreshDevices)
        self.initializeParameterNode()
        slicerjobs.fillDeviceCombo(self.ui.deviceComboBox, self._parameterNode.device)

    def cleanup(self) -> None:
        # closing Slicer or reloading the module stops the job the polite way (a training job saves a checkpoint)
        if self.logic:
            self.logic.cancel()
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
            self.onParameterNodeSet()

    def onParameterNodeSet(self) -> None:
        """Hook: the parameter node was just bound to the GUI."""

    # -- devices -----------------------------------------------------------------------------------------

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or DEFAULT_DEVICE

    def onRefreshDevices(self) -> None:
        """Ask the engine (in a job) for the GPUs and its defaults, then refill the device selector."""
        self.ui.refreshDevicesButton.enabled = False

        def done(info, error):
            self.ui.refreshDevicesButton.enabled = True
            if error:
                self.ui.logTextEdit.appendPlainText(_("could not ask the engine: {error}").format(error=error))
            device = self._parameterNode.device if self._parameterNode else DEFAULT_DEVICE
            slicerjobs.fillDeviceCombo(self.ui.deviceComboBox, device)
            self.onEngineProbed()

        slicerjobs.probeEngine(completedCallback=done)

    def onEngineProbed(self) -> None:
        """Hook: the engine's devices and defaults are known (slicerjobs.engineInfo())."""
