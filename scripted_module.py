"""Slicer module "Reasoning Segmentation": a chat beside the slice views that writes coded segments into the scene.

Why the file is called ``scripted_module.py``: Slicer names a scripted module, and the classes it looks for, after
the file (``<name>``, ``<name>Widget``, ``<name>Logic``, ``<name>Test``), and a ``MedSegReasoning.py`` would shadow
the ``MedSegReasoning`` package that this module imports.

Why it is thin and torch-free: the engine (reasoner, segmenter) runs in its own process, reached through an HTTP
client; this file only wires the GUI. Everything testable without a Slicer application lives in
``MedSegReasoning.slicer``: ``scene`` (writing), ``scene_sync`` (scene <-> backend), ``backend_setup`` (install,
device, start), ``export_check`` (checks and saving exports), ``chat_panel`` and ``backend_link``. They are
imported lazily, so importing this file costs nothing and pulls in no numpy-heavy engine module.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import sys
import tempfile
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

ROLE_ATTRIBUTE = "MedSegReasoning.Role"  # as MedSegReasoning.slicer.scene.ATTR_ROLE (not imported: import stays light)
SETTINGS_SERVER_URL = "MedSegReasoning/ServerURL"
SETTINGS_SERVER_TOKEN = "MedSegReasoning/ServerToken"
SETTINGS_CONSENT_PREFIX = "MedSegReasoning/ConsentedServers/"
SETTINGS_PACS_URL = "MedSegReasoning/PacsURL"
SETTINGS_BACKEND_VENV = "MedSegReasoning/BackendVenv"
SETTINGS_VERIFIER = "MedSegReasoning/VerifierName"  # Last^First: confirmed findings are exported as VERIFIED in the SR
EXPORT_CHOICES = (("seg", "sr"), ("seg",), ("seg-nrrd",), ("nifti",))  # the .ui's exportFormatCombo, in order


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
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/scripted_module.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = scripted_moduleLogic()

        from MedSegReasoning.slicer.chat_panel import ChatPanel

        self.chat = ChatPanel(
            backend=None, parent=self.ui.chatContainer, on_entity=self.logic.onTarget, on_event=self.onRoundEvent
        )
        self.ui.chatContainer.layout().addWidget(self._promptPlacementRow())
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

    def _promptPlacementRow(self):
        """Place buttons for clicks inside / outside the structure and a box (Slicer's markups place widget)."""
        row = qt.QWidget()
        layout = qt.QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        self._placeWidgets = {}
        for role, text in (
            (self.logic.PROMPT_INCLUDE, "Inside"),
            (self.logic.PROMPT_EXCLUDE, "Outside"),
            (self.logic.PROMPT_BOX, "Box"),
        ):
            layout.addWidget(qt.QLabel(text))
            place = slicer.qSlicerMarkupsPlaceWidget()
            place.setMRMLScene(slicer.mrmlScene)
            place.setCurrentNode(self.logic.promptNode(role))
            place.buttonsVisible = False
            place.placeButton().show()
            place.placeModePersistency = role != self.logic.PROMPT_BOX
            layout.addWidget(place)
            self._placeWidgets[role] = place
        layout.addStretch(1)
        return row

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


class scripted_moduleLogic(ScriptedLoadableModuleLogic):
    """GUI-free actions; each delegates to a ``MedSegReasoning.slicer`` submodule."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.client = None
        self.link = None
        self.linkedVolumeId = None
        self.sync = None
        self._setup = None
        self._childProcessesStartLikeSlicerDid()

    @staticmethod
    def _childProcessesStartLikeSlicerDid() -> None:
        """The backend's own Python (pip, server, export) must not inherit Slicer's launcher settings (its Python
        home and site-packages): children start from the environment Slicer itself was started with."""
        from MedSegReasoning.wire.childenv import set_startup_environment

        if getattr(slicer, "app", None) is not None:
            set_startup_environment(slicer.util.startupEnvironment())

    def getParameterNode(self):
        return scripted_moduleParameterNode(super().getParameterNode())

    # -- backend: install, start, connect ---------------------------------------------------------------------------------
    def backendSetup(self):
        if self._setup is None:
            from MedSegReasoning.slicer.backend_setup import BackendSetup, default_venv_dir

            venv = qt.QSettings().value(SETTINGS_BACKEND_VENV, "") or str(default_venv_dir())
            self._setup = BackendSetup(venv_dir=venv)
        return self._setup

    def runInBackground(self, work, on_status, on_result=None) -> threading.Thread:
        """Run a set-up step off the GUI thread; its status updates go to ``on_status`` (a thread-safe queue's put)."""

        def run() -> None:
            setup = self.backendSetup()
            setup.on_status = on_status
            try:
                result = work()
            except Exception:  # the step already put an ERROR status saying what to do
                return
            if on_result is not None:
                on_result(result)

        thread = threading.Thread(target=run, name="medseg-backend-setup", daemon=True)
        thread.start()
        return thread

    def installBackend(self):
        return self.backendSetup().install()

    def startBackend(self):
        self.client = self.backendSetup().start()
        return self.client

    def cancelSetup(self) -> None:
        self.backendSetup().cancel()

    @staticmethod
    def isLocalServer(url: str) -> bool:
        """Loopback by the same rule the client and the server use (``MedSegReasoning.wire.network``)."""
        from urllib.parse import urlsplit

        from MedSegReasoning.wire.network import is_loopback_host

        try:
            host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
        except ValueError:
            return False
        return is_loopback_host(host)

    def hasConsent(self, url: str) -> bool:
        """Images leave this computer only after the user agreed once for that server (kept in Slicer's settings)."""
        return self.isLocalServer(url) or qt.QSettings().value(SETTINGS_CONSENT_PREFIX + url, "") == "yes"

    def recordConsent(self, url: str) -> None:
        if not self.isLocalServer(url):
            qt.QSettings().setValue(SETTINGS_CONSENT_PREFIX + url, "yes")

    def connect(self, url: str, token: str):
        """A checked client for a configured server (the HTTP client is imported here so module import stays free)."""
        from MedSegReasoning.wire.process import connect_or_start

        self.client, _ = connect_or_start(url, token)
        return self.client

    def makeLink(self, client, parameterNode):
        """The chat's backend over ``client``: the input volume (sent with the first round), the session kept in the
        parameter node, and the user's segment edits pushed before each round."""
        from MedSegReasoning.slicer.backend_link import BackendLink
        from MedSegReasoning.slicer.scene import volume_geometry_lps

        self.client = client
        volume = parameterNode.inputVolume if parameterNode is not None else None
        session_id = (parameterNode.sessionId if parameterNode is not None else "") or None
        self.link = BackendLink(client, session_id=session_id, before_round=self.pendingEdits)
        self.linkedVolumeId = volume.GetID() if volume is not None else None
        saved = self.savedConversation(parameterNode)
        if saved and saved.get("archive"):
            self.link.set_archive(base64.b64decode(saved["archive"]))  # continues the chat if the server forgot it
        if volume is not None:
            from MedSegReasoning.slicer.local_export import series_uids

            g = volume_geometry_lps(volume)
            # recorded by the session, so a DICOM-SEG export is checked against them (no database: not from DICOM)
            uids = series_uids(volume, getattr(slicer, "dicomDatabase", None))
            self.link.set_volume(slicer.util.arrayFromVolume(volume), g.origin, g.spacing, g.direction, dicom=uids)
            self.sync = self._sceneSync(volume, session_id) if session_id else None
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
        """The scene side of the link's session. When the link continued an expired session in a restored one (same
        entity ids), the session's nodes are re-bound to the new id rather than duplicated."""
        sid = self.link.session_id
        if self.sync is not None and self.sync.session_id != sid and self.sync.session_id == self.link.restored_from:
            self.sync.scene.rebind(sid)
        if self.sync is None or self.sync.session_id != sid:
            self.sync = self._sceneSync(self.getParameterNode().inputVolume, sid)
        return self.sync

    def _sceneSync(self, volume, session_id):
        from MedSegReasoning.slicer.scene import SessionScene
        from MedSegReasoning.slicer.scene_sync import SceneSync

        scene = SessionScene.find(slicer.mrmlScene, session_id) or SessionScene.create(
            slicer.mrmlScene, volume, session_id
        )
        return SceneSync(scene)

    # -- rounds and the scene ---------------------------------------------------------------------------------------------
    PROMPT_INCLUDE, PROMPT_EXCLUDE, PROMPT_BOX = "prompt-include", "prompt-exclude", "prompt-box"
    _PROMPT_NODES = {
        PROMPT_INCLUDE: ("vtkMRMLMarkupsFiducialNode", "MedSeg inside", (0.2, 0.8, 0.2)),
        PROMPT_EXCLUDE: ("vtkMRMLMarkupsFiducialNode", "MedSeg outside", (0.9, 0.2, 0.2)),
        PROMPT_BOX: ("vtkMRMLMarkupsROINode", "MedSeg box", (0.9, 0.8, 0.2)),
    }

    def promptNode(self, role: str):
        """The markups node the user places clicks (inside/outside) or a box in; found again after a scene load."""
        for node in slicer.util.getNodesByClass(self._PROMPT_NODES[role][0]):
            if node.GetAttribute(ROLE_ATTRIBUTE) == role:
                return node
        class_name, name, color = self._PROMPT_NODES[role]
        node = slicer.mrmlScene.AddNewNodeByClass(class_name, name)
        node.SetAttribute(ROLE_ATTRIBUTE, role)
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSelectedColor(*color)
        return node

    def pendingPrompts(self) -> dict:
        """Clicks and the box placed in the slice views, as voxel indices of the input volume."""
        from MedSegReasoning.slicer.prompts import (
            control_points_ras,
            prompts_from_markups,
            ras_to_ijk_of_volume,
            roi_corners_of_node,
        )
        from MedSegReasoning.slicer.scene import volume_shape_kji

        volume = self.getParameterNode().inputVolume
        if volume is None:
            return {}
        box = self.promptNode(self.PROMPT_BOX)
        boxes = [roi_corners_of_node(box)] if min(box.GetSize()) > 0 else []  # placed (or drawn) with a size
        return prompts_from_markups(
            control_points_ras(self.promptNode(self.PROMPT_INCLUDE)),
            control_points_ras(self.promptNode(self.PROMPT_EXCLUDE)),
            boxes,
            ras_to_ijk_of_volume(volume),
            volume_shape_kji(volume),
        )

    def clearPrompts(self) -> None:
        """Sent with a question: the clicks and the box are removed so the next question starts clean."""
        for role in self._PROMPT_NODES:
            self.promptNode(role).RemoveAllControlPoints()
        self.promptNode(self.PROMPT_BOX).SetSize(0.0, 0.0, 0.0)

    def currentView(self):
        """The slice view the user last pointed at (the crosshair's), else the red one: its plane and slice."""
        from MedSegReasoning.slicer.prompts import view_context_of_slice_node
        from MedSegReasoning.slicer.scene import volume_shape_kji

        volume = self.getParameterNode().inputVolume
        if volume is None:
            return None
        slice_node = None
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None:
            slice_node = crosshair.GetCursorPositionXYZ([0.0, 0.0, 0.0])
        if slice_node is None:
            slice_node = slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeRed")
        if slice_node is None:
            return None
        return view_context_of_slice_node(slice_node, volume, volume_shape_kji(volume))

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
        """Keep the conversation with the scene: the chat's record (rounds, reasoning, entities, review) for showing
        it again, and the server's archive of it, so a reloaded scene continues even after the session expired."""
        from MedSegReasoning.wire.session_archive import session_json

        if self.link is None or self.sync is None or self.link.session_id is None:
            return
        archive = self.link.fetch_archive()  # one request: the archive's session.json is the chat's record too
        doc = session_json(archive)
        doc["archive"] = base64.b64encode(archive).decode("ascii")
        self.sync.scene.store_conversation(json.dumps(doc))

    def savedConversation(self, parameterNode):
        """The conversation saved with the scene for the parameter node's session (a dict), or None."""
        from MedSegReasoning.slicer.scene import SessionScene

        session_id = (parameterNode.sessionId if parameterNode is not None else "") or ""
        scene = SessionScene.find(slicer.mrmlScene, session_id) if session_id else None
        text = scene.load_conversation() if scene is not None else None
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None

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
        """Jump the slice views to the entity's markup (its key-slice centroid)."""
        for node in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode"):
            if node.GetAttribute("MedSegReasoning.EntityId") == entity_id and node.GetNumberOfControlPoints():
                position = [0.0, 0.0, 0.0]
                node.GetNthControlPointPositionWorld(0, position)
                slicer.modules.markups.logic().JumpSlicesToLocation(*position, True)
                return

    # -- export -------------------------------------------------------------------------------------------------------
    def exportProblems(self, formats) -> list:
        from MedSegReasoning.slicer.export_check import ExportProblem, check_scene

        if self.sync is None or self.client is None:
            return [ExportProblem("no_session", "There is no session to export: connect and ask a question first.")]
        self.sync.push_edits(self.client)  # export what the user sees
        return check_scene(self.sync.scene, formats)

    def exportToFolder(self, formats, folder: str) -> list:
        """DICOM-SEG and SR are written here, against the loaded series (``local_export``: the server has only the
        voxels); .seg.nrrd and NIfTI come from the backend's export endpoint. All saved into ``folder``."""
        from MedSegReasoning.slicer.export_check import save_export
        from MedSegReasoning.slicer.local_export import DICOM_FORMATS, export_session_locally, series_files

        dicom = [f for f in formats if f in DICOM_FORMATS]
        files = []
        if dicom:
            volume = self.sync.scene.volume_node
            files += export_session_locally(
                self.client,
                self.sync.session_id,
                series_files(volume, getattr(slicer, "dicomDatabase", None)),
                self.backendSetup().python,
                out_dir=folder,
                formats=dicom,
                verifier=qt.QSettings().value(SETTINGS_VERIFIER, "") or None,
                scene_sync=self.sync,
            ).files
        for fmt in formats:
            if fmt not in dicom:
                files += save_export(self.client.export(self.sync.session_id, fmt), fmt, folder)
        return files

    def exportToDicomDatabase(self, formats) -> list:
        """Export into a temporary folder and import it into Slicer's DICOM database (as the DICOM module would)."""
        import DICOMLib

        folder = tempfile.mkdtemp(prefix="medseg-export-")
        files = [f for f in self.exportToFolder(formats, folder) if f.suffix == ".dcm"]
        DICOMLib.DICOMUtils.importDicom(folder, slicer.dicomDatabase, copyFiles=True)
        return files

    def exportToPacs(self, formats, url: str) -> list:
        """Export, then store on the PACS with Slicer's own sender (DICOMweb STOW-RS)."""
        import DICOMLib

        folder = tempfile.mkdtemp(prefix="medseg-export-")
        files = [str(f) for f in self.exportToFolder(formats, folder) if f.suffix == ".dcm"]
        DICOMLib.DICOMSender(files, url, protocol="DICOMweb")
        return files

    def shutdown(self) -> None:
        if self._setup is not None and self._setup.server is not None:
            self._setup.server.stop()


class scripted_moduleTest(ScriptedLoadableModuleTest):
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
        import numpy as np
        import SampleData

        from MedSegReasoning.slicer.scene import SceneEntity, SessionScene
        from MedSegReasoning.wire.masks import CompactMask

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

    def test_round_with_replay_reasoner_on_sample_data(self) -> None:
        import json

        import SampleData

        from MedSegReasoning.slicer.backend_setup import BackendSetup, default_venv_dir, is_installed
        from MedSegReasoning.slicer.scene import SessionScene, volume_geometry_lps
        from MedSegReasoning.slicer.scene_sync import SceneSync

        venv = qt.QSettings().value(SETTINGS_BACKEND_VENV, "") or str(default_venv_dir())
        if not is_installed(venv):
            self.delayDisplay(f"Skipped the round test: no backend installed in {venv} (press Install first).")
            self.skipTest(f"no backend installed in {venv}")
        volume = SampleData.downloadSample("MRHead")
        k = slicer.util.arrayFromVolume(volume).shape[0] // 2
        ni = slicer.util.arrayFromVolume(volume).shape[2]
        box = [ni // 2 - 30, ni // 2 - 30, ni // 2 + 30, ni // 2 + 30]
        answers = [
            {
                "round": 1,
                "step": "pick_slice",
                "raw": json.dumps({"reasoning": "mid", "targets": [{"slice": k, "label": "brain"}]}),
            },
            {
                "round": 1,
                "step": "locate",
                "raw": json.dumps(
                    {"reasoning": "centre", "targets": [{"slice": k, "bbox": box, "points": [], "label": "brain"}]}
                ),
            },
        ]
        replay = os.path.join(tempfile.mkdtemp(prefix="medseg-selftest-"), "answers.jsonl")
        with open(replay, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(a) + "\n" for a in answers))
        setup = BackendSetup(venv_dir=venv, server_args=["--reasoner", f"replay:{replay}"])
        self.delayDisplay("Starting the local backend with the replay reasoner")
        try:
            client = setup.start()
        except Exception as exc:
            self.delayDisplay(f"Skipped the round test: the backend did not start ({exc}).")
            self.skipTest(f"the backend did not start: {exc}")
        try:
            g = volume_geometry_lps(volume)
            sid = client.create_session()
            client.upload_volume(sid, slicer.util.arrayFromVolume(volume), g.origin, g.spacing, g.direction, "MR")
            result = client.ask(sid, "Segment the brain.", propagate=False)
            self.assertEqual([e.id for e in result.entities], ["E1"])
            sync = SceneSync(SessionScene.create(slicer.mrmlScene, volume, sid))
            self.assertEqual(sync.reconcile(client), ["E1"])
            engine_ml = client.entity(sid, "E1").data["measurements"]["volume_ml"]
            self.assertAlmostEqual(sync.segment_volumes_ml()["E1"], engine_ml, places=6)
            self.assertEqual(sync.undo_round(client).removed, ["E1"])
            self.assertEqual(sync.scene.entity_ids(), [])
        finally:
            setup.server.stop()
        self.delayDisplay("Round test passed")
