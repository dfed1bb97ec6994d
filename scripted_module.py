"""Slicer module "Reasoning Segmentation": a chat beside the slice views that writes coded segments into the scene.

Why the file is ``scripted_module.py`` and the module ``MedSegReasoningChat``: Slicer names a scripted module, and the
classes it looks for (``<name>``, ``<name>Widget``, ``<name>Logic``, ``<name>Test``), after its file. A
``MedSegReasoning.py`` would shadow the package this file imports, and ``scripted_module`` is a name any extension
built from Slicer's template could collide with; so the build installs this file as ``MedSegReasoningChat.py``
(CMakeLists.txt). Loaded from the repository folder, Slicer names it after this file: the aliases at the end let it
load that way too (``MedSegReasoning.slicer.module_name`` says what moved with the name).

Why it is thin and torch-free: the engine runs in its own process, reached through an HTTP client; this file only
wires the GUI to ``MedSegReasoning.slicer``, where everything testable without a Slicer application lives (scene
writing, the backend session and set-up, consent, prompt markups, views, the saved conversation, exports, the chat).
Those modules are imported lazily (``_lib``): importing this file costs nothing and pulls in no engine module.
"""

from __future__ import annotations

import importlib
import os
import queue
import sys
import threading

import qt
import slicer
import vtk
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
SETTINGS_PACS_URL = "MedSegReasoning/PacsURL"
SETTINGS_BACKEND_VENV = "MedSegReasoning/BackendVenv"
SETTINGS_VERIFIER = "MedSegReasoning/VerifierName"  # Last^First: confirmed findings are exported as VERIFIED in the SR
EXPORT_CHOICES = (("seg", "sr"), ("seg",), ("seg-nrrd",), ("nifti",))  # the .ui's exportFormatCombo, in order


def _lib(name: str):
    """``MedSegReasoning.slicer.<name>``, imported when first needed, so that importing this file stays light."""
    return importlib.import_module(f"MedSegReasoning.slicer.{name}")


class MedSegReasoningChat(ScriptedLoadableModule):
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
class MedSegReasoningChatParameterNode:
    """What survives a scene save/load: the input volume and the session it belongs to (never the server token)."""

    inputVolume: vtkMRMLScalarVolumeNode
    sessionId: str = ""


class MedSegReasoningChatWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: input volume, server (install / start / connect), status line, chat, undo, export."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.chat = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._statusQueue = queue.Queue()  # backend set-up status from worker threads, shown by a timer

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/MedSegReasoningChat.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSegReasoningChatLogic()

        self.chat = _lib("chat_panel").ChatPanel(
            backend=None, parent=self.ui.chatContainer, on_entity=self.logic.onTarget, on_event=self.onRoundEvent
        )
        placement, self._placeWidgets = _lib("prompt_markups").placement_row()  # Inside / Outside / Box buttons
        self.ui.chatContainer.layout().addWidget(placement)
        self.ui.chatContainer.layout().addWidget(self.chat.widget)
        self.chat.set_entity_selected_callback(self.logic.centreOnEntity)
        # what goes with each question: the view the user last pointed at, and the clicks/boxes placed in the views
        self.chat.set_view_provider(self.logic.currentView)
        self.chat.set_prompts_provider(self.logic.pendingPrompts, clear=self.logic.clearPrompts)

        settings = qt.QSettings()
        self.ui.serverUrlEdit.text = settings.value(SETTINGS_SERVER_URL, "")
        self.ui.serverTokenEdit.text = settings.value(SETTINGS_SERVER_TOKEN, "")
        self.ui.pacsUrlEdit.text = settings.value(SETTINGS_PACS_URL, "")
        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        self.ui.installButton.connect("clicked(bool)", self.onInstall)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.cancelSetupButton.connect("clicked(bool)", self.logic.cancelSetup)
        self.ui.undoRoundButton.connect("clicked(bool)", self.onUndoRound)
        self.ui.exportFolderButton.connect("clicked(bool)", self.onExportFolder)
        self.ui.exportDatabaseButton.connect("clicked(bool)", self.onExportDatabase)
        self.ui.exportPacsButton.connect("clicked(bool)", self.onExportPacs)
        # Ctrl+Z inside this panel undoes the last round; elsewhere (Segment Editor) Slicer's own undo keeps it.
        self.undoShortcut = qt.QShortcut(qt.QKeySequence("Ctrl+Z"), self.parent)
        self.undoShortcut.setContext(qt.Qt.WidgetWithChildrenShortcut)
        self.undoShortcut.connect("activated()", self.onUndoRound)
        self.statusTimer = qt.QTimer()
        self.statusTimer.setInterval(200)
        self.statusTimer.connect("timeout()", self.showQueuedStatus)
        self.statusTimer.start()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.showStatus(self.logic.backendSetup().status)

    def resourcePath(self, filename: str) -> str:
        """``Resources`` beside this file, whatever Slicer named the module (installed, or from the repository)."""
        return os.path.join(_HERE, "Resources", filename)

    def cleanup(self) -> None:
        self.removeObservers()
        self.statusTimer.stop()
        if self.chat is not None:
            self.chat.shutdown()
        self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode is not None and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        # the closed scene took the prompt nodes with it: the place buttons get new ones in the new scene
        for role, place in getattr(self, "_placeWidgets", {}).items():
            place.setCurrentNode(self.logic.promptNode(role))
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, parameter_node) -> None:
        if self._parameterNode is not None and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = parameter_node
        if self._parameterNode is not None:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            saved = self.logic.savedConversation(self._parameterNode)
            if saved and self.chat is not None and not self.chat.busy:
                self.chat.restore(saved)  # the chat as it was saved with the scene; no server needed to show it

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Another input volume: a new conversation about it (the chat starts empty; the old one stays saved)."""
        if self.chat is not None and not self.chat.busy and self.logic.switchVolume(self._parameterNode):
            self.chat.set_backend(self.logic.link)
            self.chat.restore({"rounds": [], "entities": []})

    # -- status line ------------------------------------------------------------------------------------------------
    def showStatus(self, status) -> None:
        self.ui.statusLabel.text = status.line()

    def showQueuedStatus(self) -> None:
        while not self._statusQueue.empty():
            self.showStatus(self._statusQueue.get_nowait())
        setup = self.logic.backendSetup()
        busy = setup.status.state.value in ("installing", "starting", "loading-model")
        self.ui.cancelSetupButton.enabled = busy
        self.ui.installButton.enabled = self.ui.startButton.enabled = not busy
        if setup.device is not None:
            self.ui.deviceLabel.text = "Device: " + setup.device.describe()

    # -- server: install, start, connect -------------------------------------------------------------------------------
    def onInstall(self) -> None:
        """Install the backend into its own environment, on a worker thread (status and progress via the queue)."""
        self.logic.runInBackground(self.logic.installBackend, self._statusQueue.put)

    def onStart(self) -> None:
        """Start the local backend on a worker thread; the chat gets its client once it is ready."""
        results = []
        worker = self.logic.runInBackground(self.logic.startBackend, self._statusQueue.put, on_result=results.append)
        self._waitForClient(worker, results)

    def _waitForClient(self, worker, results) -> None:
        if results:
            self.chat.set_backend(self.logic.makeLink(results[0], self._parameterNode))
        elif worker.is_alive():
            qt.QTimer.singleShot(200, lambda: self._waitForClient(worker, results))

    def onConnect(self) -> None:
        """Remember the server (in Slicer's settings, never in the scene) and hand a client to the chat."""
        url = self.ui.serverUrlEdit.text.strip()
        token = self.ui.serverTokenEdit.text.strip()
        if not url:
            self.ui.statusLabel.text = "Enter the server's address and token, or press Start for a local backend."
            return
        settings = qt.QSettings()
        settings.setValue(SETTINGS_SERVER_URL, url)
        settings.setValue(SETTINGS_SERVER_TOKEN, token)
        if not self.logic.hasConsent(url) and not slicer.util.confirmYesNoDisplay(
            f"Images of the input volume will be sent to {url}, which is not this computer. Continue?"
        ):
            self.ui.statusLabel.text = "Not connected: sending images to that server was declined."
            return
        self.logic.recordConsent(url)
        with slicer.util.tryWithErrorDisplay("Could not connect to the reasoning server.", waitCursor=True):
            client = self.logic.connect(url, token)
            self.chat.set_backend(self.logic.makeLink(client, self._parameterNode))
            self.ui.statusLabel.text = f"Connected to {url}."

    # -- rounds --------------------------------------------------------------------------------------------------------
    def onRoundEvent(self, event) -> None:
        """After a round: remember the session in the parameter node and bring the scene in line with the backend."""
        if event.kind == "done":
            session_id = self.logic.afterRound()
            if session_id and self._parameterNode is not None:
                self._parameterNode.sessionId = session_id
        elif event.kind == "review":
            self.logic.onReviewed(event.data["id"], event.data["review"])

    def onUndoRound(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not undo the last round.", waitCursor=True):
            outcome = self.logic.undoRound()
            removed = ", ".join(outcome.removed) or "nothing"
            self.ui.statusLabel.text = f"Round {outcome.round} undone: removed {removed}."

    # -- export --------------------------------------------------------------------------------------------------------
    def _formats(self):
        return EXPORT_CHOICES[max(self.ui.exportFormatCombo.currentIndex, 0)]

    def _checkedExport(self) -> bool:
        problems = self.logic.exportProblems(self._formats())
        if problems:
            slicer.util.errorDisplay("Not exported yet:\n\n" + "\n\n".join(str(p) for p in problems))
        return not problems

    def onExportFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(self.parent, "Export to folder")
        if not folder or not self._checkedExport():
            return
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            files = self.logic.exportToFolder(self._formats(), folder)
            self.ui.statusLabel.text = f"Exported {len(files)} file(s) to {folder}."

    def onExportDatabase(self) -> None:
        if not self._checkedExport():
            return
        with slicer.util.tryWithErrorDisplay("Export to the DICOM database failed.", waitCursor=True):
            files = self.logic.exportToDicomDatabase(self._formats())
            self.ui.statusLabel.text = f"Added {len(files)} object(s) to Slicer's DICOM database."

    def onExportPacs(self) -> None:
        url = self.ui.pacsUrlEdit.text.strip()
        qt.QSettings().setValue(SETTINGS_PACS_URL, url)
        if not url:
            slicer.util.errorDisplay("Enter the PACS's DICOMweb address first (e.g. https://pacs/dicom-web).")
            return
        if not self._checkedExport():
            return
        with slicer.util.tryWithErrorDisplay("Sending to the PACS failed.", waitCursor=True):
            files = self.logic.exportToPacs(self._formats(), url)
            self.ui.statusLabel.text = f"Sent {len(files)} object(s) to {url}."


class MedSegReasoningChatLogic(ScriptedLoadableModuleLogic):
    """GUI-free actions; each delegates to a ``MedSegReasoning.slicer`` submodule. It holds the module's state: the
    client, the chat's backend link (and the volume it was made for), the scene side of the session, the set-up."""

    # as prompt_markups.PROMPT_* (not imported: importing this file stays light; a test checks that they agree)
    PROMPT_INCLUDE, PROMPT_EXCLUDE, PROMPT_BOX = "prompt-include", "prompt-exclude", "prompt-box"

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.client = None
        self.link = None
        self.linkedVolumeId = None
        self.sync = None
        self._setup = None
        _lib("child_process").start_children_like_slicer()  # not with Slicer's launcher settings

    def getParameterNode(self):
        _lib("module_name").adopt_old_parameter_node(slicer.mrmlScene)  # saved when the module was "scripted_module"
        return MedSegReasoningChatParameterNode(super().getParameterNode())

    # -- backend: install, start, connect ---------------------------------------------------------------------------------
    def backendSetup(self):
        if self._setup is None:  # in the folder the settings name, else the per-user default
            self._setup = _lib("backend_setup").BackendSetup.in_folder(qt.QSettings().value(SETTINGS_BACKEND_VENV, ""))
        return self._setup

    def runInBackground(self, work, on_status, on_result=None) -> threading.Thread:
        """Run a set-up step off the GUI thread; its status updates go to ``on_status`` (a thread-safe queue's put)."""
        return _lib("backend_setup").run_in_background(self.backendSetup, work, on_status, on_result)

    def installBackend(self):
        return self.backendSetup().install()

    def startBackend(self):
        self.client = self.backendSetup().start()
        return self.client

    def cancelSetup(self) -> None:
        self.backendSetup().cancel()

    @staticmethod
    def isLocalServer(url: str) -> bool:
        return _lib("consent").is_local_server(url)

    def hasConsent(self, url: str) -> bool:
        """Images leave this computer only after the user agreed once for that server (kept in Slicer's settings)."""
        return _lib("consent").has_consent(qt.QSettings(), url)

    def recordConsent(self, url: str) -> None:
        _lib("consent").record_consent(qt.QSettings(), url)

    def connect(self, url: str, token: str):
        """A checked client for a configured server (the HTTP client is imported here so module import stays free)."""
        from MedSegReasoning.wire.process import connect_or_start

        self.client, _ = connect_or_start(url, token)
        return self.client

    def makeLink(self, client, parameterNode):
        """The chat's backend over ``client``: the input volume (sent with the first round), the session kept in the
        parameter node, and the user's segment edits pushed before each round."""
        from MedSegReasoning.slicer.session_link import link_for, scene_sync_for

        self.client = client
        volume = parameterNode.inputVolume if parameterNode is not None else None
        session_id = (parameterNode.sessionId if parameterNode is not None else "") or None
        saved = self.savedConversation(parameterNode)
        self.link = link_for(client, volume, session_id, saved, before_round=self.pendingEdits)
        self.linkedVolumeId = volume.GetID() if volume is not None else None
        if volume is not None:
            self.sync = scene_sync_for(volume, session_id) if session_id else None
        return self.link

    def switchVolume(self, parameterNode) -> bool:
        """The user chose another input volume: the conversation so far is about the old one, so questions now go
        to a new session on the new volume (the old session's segments and saved chat stay in the scene). True when
        it switched."""
        if self.link is None or parameterNode is None:
            return False
        volume = parameterNode.inputVolume
        volume_id = volume.GetID() if volume is not None else None
        if volume_id == self.linkedVolumeId:
            return False
        parameterNode.sessionId = ""
        self.sync = None
        self.makeLink(self.client, parameterNode)
        return True

    def _currentSync(self):
        self.sync = _lib("session_link").current_sync(self.link, self.sync, self.getParameterNode().inputVolume)
        return self.sync

    # -- rounds and the scene ---------------------------------------------------------------------------------------------
    def promptNode(self, role: str):
        return _lib("prompt_markups").prompt_node(role)

    def pendingPrompts(self) -> dict:
        return _lib("prompt_markups").pending_prompts(self.getParameterNode().inputVolume)

    def clearPrompts(self) -> None:
        _lib("prompt_markups").clear_prompts()

    def currentView(self):
        return _lib("views").current_view(self.getParameterNode().inputVolume)

    def pendingEdits(self):
        """Segment Editor edits since the last sync (the chat sends them before the round)."""
        return self.sync.pending_edits() if self.sync is not None else {}

    def onTarget(self, data: dict) -> None:
        """A round's new entity (GUI thread): write its segment and markup at once, from the event's own mask."""
        entity = data.get("entity_object")
        if entity is None or self.link is None or self.link.session_id is None:
            return
        self._currentSync().write(entity)

    def afterRound(self) -> str | None:
        """Make the scene the backend's entities (edits the round took are acknowledged, revisions rewritten)."""
        if self.link is None or self.link.session_id is None:
            return None
        self._currentSync().reconcile(self.client)
        self.saveConversation()
        return self.link.session_id

    def saveConversation(self) -> None:
        _lib("saved_conversation").save_conversation(self.link, self.sync)

    def savedConversation(self, parameterNode):
        """The conversation saved with the scene for the parameter node's session (a dict), or None."""
        return _lib("saved_conversation").saved_conversation(
            (parameterNode.sessionId if parameterNode is not None else "") or ""
        )

    def onReviewed(self, entity_id: str, review: str) -> None:
        """The chat confirmed or rejected an entity on the backend: the segment shows it (rejected = hidden)."""
        if self.sync is not None and entity_id in self.sync.scene.entity_ids():
            self.sync.note_review(entity_id, review)

    def undoRound(self):
        if self.sync is None or self.client is None:
            raise RuntimeError("there is no round to undo: connect and ask a question first.")
        outcome = self.sync.undo_round(self.client)
        self.saveConversation()
        return outcome

    def segmentVolumesMl(self) -> dict:
        return self.sync.segment_volumes_ml() if self.sync is not None else {}

    def centreOnEntity(self, entity_id: str) -> None:
        _lib("views").centre_on_entity(entity_id)

    # -- export -------------------------------------------------------------------------------------------------------
    def exportProblems(self, formats) -> list:
        return _lib("export_actions").export_problems(self.client, self.sync, formats)

    def exportToFolder(self, formats, folder: str) -> list:
        return _lib("export_actions").export_to_folder(
            self.client,
            self.sync,
            formats,
            folder,
            backend_python=lambda: self.backendSetup().python,
            verifier=lambda: qt.QSettings().value(SETTINGS_VERIFIER, "") or None,
        )

    def exportToDicomDatabase(self, formats) -> list:
        return _lib("export_actions").export_to_dicom_database(lambda folder: self.exportToFolder(formats, folder))

    def exportToPacs(self, formats, url: str) -> list:
        return _lib("export_actions").export_to_pacs(lambda folder: self.exportToFolder(formats, folder), url)

    def shutdown(self) -> None:
        if self._setup is not None and self._setup.server is not None:
            self._setup.server.stop()


class MedSegReasoningChatTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test) on Slicer's own sample data: scene writing always; a full round with
    the replay reasoner when the local backend can start (skipped, with the reason, when it cannot)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_scene_writing_on_sample_data()
        self.setUp()
        self.test_round_with_replay_reasoner_on_sample_data()

    def test_scene_writing_on_sample_data(self) -> None:
        _lib("self_test").scene_writing_on_sample_data(self)

    def test_round_with_replay_reasoner_on_sample_data(self) -> None:
        venv = MedSegReasoningChatLogic().backendSetup().venv_dir  # the one the panel's Install button fills
        _lib("self_test").round_with_replay_reasoner_on_sample_data(self, str(venv))


# Loaded from the repository folder ("Additional module paths"), Slicer looks for these names (see the docstring).
scripted_module = MedSegReasoningChat
scripted_moduleWidget = MedSegReasoningChatWidget
scripted_moduleLogic = MedSegReasoningChatLogic
scripted_moduleTest = MedSegReasoningChatTest
