"""Slicer module "Reasoning Segmentation": a chat beside the slice views that writes coded segments into the scene.

Why the file is called ``scripted_module.py``: Slicer names a scripted module, and the classes it looks for, after
the file (``<name>``, ``<name>Widget``, ``<name>Logic``, ``<name>Test``), and a ``MedSegReasoning.py`` would shadow
the ``MedSegReasoning`` package that this module imports.

Why it is thin and torch-free: the engine (reasoner, segmenter) runs in its own process, reached through an HTTP
client; this file only wires the GUI. Everything testable without a Slicer application lives in
``MedSegReasoning.slicer`` (scene writing, chat panel), imported lazily in ``setup()``, so importing this file
costs nothing and pulls in no numpy-heavy engine module.
"""

from __future__ import annotations

import os
import sys

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Loading through "Additional module paths" puts this folder, and so the MedSegReasoning package beside the file,
# on the path only for the module itself; make the package importable whichever way the module was loaded.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

SETTINGS_SERVER_URL = "MedSegReasoning/ServerURL"
SETTINGS_SERVER_TOKEN = "MedSegReasoning/ServerToken"
SETTINGS_CONSENT_PREFIX = "MedSegReasoning/ConsentedServers/"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class scripted_module(ScriptedLoadableModule):
    """Module metadata shown in Slicer's module list."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "Reasoning Segmentation"
        parent.categories = ["Segmentation"]
        parent.dependencies = []
        parent.contributors = ["MedSegReasoning contributors"]
        parent.helpText = (
            "Ask a question about the loaded scan and get named, coded segments with the reasoning behind them. "
            "Research use only, not for diagnosis."
        )
        parent.acknowledgementText = "Builds on LiteMedSAM (MedSAM), segment-anything and highdicom."


@parameterNodeWrapper
class scripted_moduleParameterNode:
    """What survives a scene save/load: the input volume and the session it belongs to (never the server token)."""

    inputVolume: vtkMRMLScalarVolumeNode
    sessionId: str = ""


class scripted_moduleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: input volume, server status, and the chat; built from ``Resources/UI/scripted_module.ui``."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.chat = None
        self._parameterNode = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/scripted_module.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = scripted_moduleLogic()

        from MedSegReasoning.slicer.chat_panel import ChatPanel

        self.chat = ChatPanel(backend=None, parent=self.ui.chatContainer)
        self.ui.chatContainer.layout().addWidget(self.chat.widget)
        self.chat.set_entity_selected_callback(self.logic.centreOnEntity)

        settings = qt.QSettings()
        self.ui.serverUrlEdit.text = settings.value(SETTINGS_SERVER_URL, "http://127.0.0.1:8765")
        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.chat is not None:
            self.chat.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, parameter_node) -> None:
        if self._parameterNode is not None and getattr(self, "_parameterNodeGuiTag", None):
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = parameter_node
        if self._parameterNode is not None:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def onConnect(self) -> None:
        """Remember the server (in Slicer's settings, never in the scene) and hand a client to the chat."""
        url = self.ui.serverUrlEdit.text.strip()
        settings = qt.QSettings()
        settings.setValue(SETTINGS_SERVER_URL, url)
        if not self.logic.hasConsent(url) and not slicer.util.confirmYesNoDisplay(
            f"Images of the input volume will be sent to {url}, which is not this computer. Continue?"
        ):
            self.ui.statusLabel.text = "Not connected: sending images to that server was declined."
            return
        self.logic.recordConsent(url)
        with slicer.util.tryWithErrorDisplay("Could not connect to the reasoning server.", waitCursor=True):
            backend = self.logic.connect(url, settings.value(SETTINGS_SERVER_TOKEN, ""))
            self.chat.set_backend(backend)
            self.ui.statusLabel.text = f"Connected to {url}."


class scripted_moduleLogic(ScriptedLoadableModuleLogic):
    """GUI-free actions: parameter node, server consent, connection, centring the views on an entity."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return scripted_moduleParameterNode(super().getParameterNode())

    @staticmethod
    def isLocalServer(url: str) -> bool:
        host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        return host in LOCAL_HOSTS

    def hasConsent(self, url: str) -> bool:
        """Images leave this computer only after the user agreed once for that server (kept in Slicer's settings)."""
        return self.isLocalServer(url) or qt.QSettings().value(SETTINGS_CONSENT_PREFIX + url, "") == "yes"

    def recordConsent(self, url: str) -> None:
        if not self.isLocalServer(url):
            qt.QSettings().setValue(SETTINGS_CONSENT_PREFIX + url, "yes")

    def connect(self, url: str, token: str):
        """A chat backend for the server; the HTTP client is imported here so module import stays free."""
        from MedSegReasoning.slicer.chat_panel import connect_backend

        return connect_backend(url, token)

    def centreOnEntity(self, entity_id: str) -> None:
        """Jump the slice views to the entity's markup (its key-slice centroid)."""
        for node in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode"):
            if node.GetAttribute("MedSegReasoning.EntityId") == entity_id and node.GetNumberOfControlPoints():
                position = [0.0, 0.0, 0.0]
                node.GetNthControlPointPositionWorld(0, position)
                slicer.modules.markups.logic().JumpSlicesToLocation(*position, True)
                return


class scripted_moduleTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test): scene writing on Slicer's own sample data, no backend needed."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_scene_writing_on_sample_data()

    def test_scene_writing_on_sample_data(self) -> None:
        import numpy as np
        import SampleData

        from MedSegReasoning.masks import CompactMask
        from MedSegReasoning.slicer.scene import SceneEntity, SessionScene

        self.delayDisplay("Loading MRHead")
        volume = SampleData.downloadSample("MRHead")
        session = SessionScene.create(slicer.mrmlScene, volume, "self-test")
        mask = np.zeros(slicer.util.arrayFromVolume(volume).shape, dtype=bool)
        mask[60:70, 100:140, 100:140] = True
        session.write_entity(SceneEntity("E1", "Brain", CompactMask.from_dense(mask), (220, 120, 60), 65, "test"))
        written = slicer.util.arrayFromSegmentBinaryLabelmap(session.segmentation_node, "E1", volume)
        self.assertTrue(np.array_equal(written.astype(bool), mask))
        self.assertEqual(session.changes(), [])
        self.delayDisplay("Scene writing test passed")
