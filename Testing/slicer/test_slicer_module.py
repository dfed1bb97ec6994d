"""The Slicer module file without Slicer: it compiles, imports nothing heavy, uses only listed Slicer API names,
and its .ui file has every widget the code reaches for."""

from __future__ import annotations

import ast
import json
import py_compile
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support.slicer import logic_module

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "scripted_module.py"
UI = ROOT / "Resources" / "UI" / "MedSegReasoningChat.ui"
API_NAMES = ROOT / "MedSegReasoning" / "slicer" / "slicer_api_names.json"
SCANNED = [MODULE, *sorted((ROOT / "MedSegReasoning" / "slicer").glob("*.py"))]
API_ROOTS = {"slicer", "qt", "ctk", "vtk", "DICOMLib", "SampleData"}  # the last two: Slicer's scripted modules
HEAVY = ("torch", "transformers", "onnxruntime", "SimpleITK", "pydicom", "highdicom", "fastapi")

STUBS = {
    "qt.py": "class QSettings:\n    def value(self, key, default=None): return default\n",
    "vtk.py": "",
    "slicer/__init__.py": "class vtkMRMLScalarVolumeNode: pass\n",
    "slicer/util.py": "class VTKObservationMixin:\n    def __init__(self): pass\n",
    "slicer/parameterNodeWrapper.py": "def parameterNodeWrapper(cls): return cls\n",
    "slicer/ScriptedLoadableModule.py": textwrap.dedent(
        """
        class ScriptedLoadableModule:
            def __init__(self, parent): self.parent = parent
        class ScriptedLoadableModuleWidget:
            def __init__(self, parent=None): pass
        class ScriptedLoadableModuleLogic:
            def __init__(self): pass
        class ScriptedLoadableModuleTest: pass
        """
    ),
}


def test_module_compiles() -> None:
    py_compile.compile(str(MODULE), doraise=True)


def test_module_imports_nothing_heavy_and_has_slicers_class_names(tmp_path: Path) -> None:
    for name, text in STUBS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    probe = textwrap.dedent(
        f"""
        import sys, types
        sys.path[:0] = [{str(tmp_path)!r}, {str(ROOT)!r}]
        import scripted_module as m
        for suffix in ("", "Widget", "Logic", "Test", "ParameterNode"):
            assert hasattr(m, "MedSegReasoningChat" + suffix), suffix
        parent = types.SimpleNamespace()
        m.MedSegReasoningChat(parent)
        assert parent.title == "Reasoning Segmentation", parent.title
        assert parent.categories == ["Segmentation"]
        loaded = sorted(n for n in sys.modules if n.split(".")[0] in {HEAVY!r} or n == "numpy"
                        or n.startswith("MedSegReasoning."))
        print("LOADED", loaded)
        # The Slicer-side package itself must stay light too (numpy is fine there, it ships with Slicer).
        import MedSegReasoning.slicer.scene, MedSegReasoning.slicer.chat_panel, MedSegReasoning.slicer.scene_sync
        import MedSegReasoning.slicer.backend_setup, MedSegReasoning.slicer.export_check
        heavy = sorted(n for n in sys.modules if n.split(".")[0] in {HEAVY!r})
        print("HEAVY", heavy)
        """
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout, result.stdout
    assert "HEAVY []" in result.stdout, result.stdout


def _api_chains(path: Path) -> set[str]:
    """Longest ``slicer.``/``qt.``/``ctk.``/``vtk.``/``DICOMLib.``/``SampleData.`` attribute chains and ``from slicer.x import y`` names in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    chains: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in API_ROOTS:
                chains.add(".".join([value.id, *reversed(parts)]))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in API_ROOTS:
            chains.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {c for c in chains if not any(other.startswith(c + ".") for other in chains)}


def test_every_slicer_api_name_used_is_listed() -> None:
    listed = set(json.loads(API_NAMES.read_text())["names"])
    used = set().union(*(_api_chains(p) for p in SCANNED))
    from MedSegReasoning.slicer.chat_panel import QT_NAMES

    used |= {f"qt.{n}" for n in QT_NAMES}  # resolved by name from Slicer's qt inside Slicer
    assert used, "the scan found nothing: it is broken"
    assert not used - listed, f"Slicer API names used but not in slicer_api_names.json: {sorted(used - listed)}"
    assert not listed - used, f"listed but no longer used (remove them): {sorted(listed - used)}"


def test_ui_file_has_the_widgets_the_module_uses() -> None:
    root = ET.parse(UI).getroot()
    names = {w.get("name") for w in root.iter("widget")}
    tree = ast.parse(MODULE.read_text())
    used = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Attribute)
        and n.value.attr == "ui"
        and isinstance(n.value.value, ast.Name)
        and n.value.value.id == "self"
    }
    assert used and used <= names, f"widgets missing from the .ui: {sorted(used - names)}"
    bound = {p.find("string").text for p in root.iter("property") if p.get("name") == "SlicerParameterName"}
    fields = {
        t.target.id
        for cls in tree.body
        if isinstance(cls, ast.ClassDef) and cls.name == "MedSegReasoningChatParameterNode"
        for t in cls.body
        if isinstance(t, ast.AnnAssign)
    }
    assert bound <= fields, f".ui binds parameters the parameter node lacks: {sorted(bound - fields)}"


def test_cmake_builds_the_module_with_its_resources() -> None:
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in cmake and "WITH_GENERIC_TESTS" in cmake
    assert "Resources/UI/${MODULE_NAME}.ui" in cmake and "Resources/Icons/${MODULE_NAME}.png" in cmake
    assert (ROOT / "Resources" / "Icons" / "MedSegReasoningChat.png").is_file()
    assert "MedSegReasoning/*.py" in cmake  # the package ships beside the module file


# -- the Logic's wiring, run for real: slicer-core's MRML as ``slicer``, a live server, the chat's BackendLink ---------


def _chat_round(logic, params, question: str) -> list:
    """What ChatPanel does: edits from before_round into the context, targets to on_entity, then done."""
    events = list(logic.link.ask(question, {"edits": logic.pendingEdits()}))
    for event in events:
        if event.kind == "target":
            logic.onTarget(event.data)
    assert events[-1].kind == "done" and events[-1].data["status"] == "ok", events
    params.sessionId = logic.afterRound()
    return events


def test_logic_runs_rounds_edits_undo_and_export_through_the_submodules(tmp_path: Path, monkeypatch) -> None:
    from support.slicer import (
        load_volume_node,
        new_scene,
        oblique_geometry,
        paint_segment,
        require_slicer_core,
        write_nrrd_lps,
    )

    require_slicer_core()
    import numpy as np
    from support.server import live_server, scripted_engine, small_volume, truth_masks, write_replay

    from MedSegReasoning.wire.client import MedSegClient

    scene = new_scene()
    volume = load_volume_node(scene, write_nrrd_lps(tmp_path / "v.nrrd", small_volume().array, oblique_geometry()))
    module, ns = logic_module(monkeypatch, scene)
    params = ns(inputVolume=volume, sessionId="")
    logic = module.MedSegReasoningChatLogic()
    logic.getParameterNode = lambda: params
    shape = small_volume().shape

    with live_server(tmp_path, scripted_engine(write_replay(tmp_path / "answers.jsonl"))) as (server, tokens):
        client = MedSegClient(server.url, tokens["alice"])
        logic.makeLink(client, params)
        _chat_round(logic, params, "Segment the bright mass.")
        sid = params.sessionId
        assert sid and logic.sync.session_id == sid and logic.sync.scene.entity_ids() == ["E1"]
        np.testing.assert_array_equal(
            logic.sync.scene.current_mask("E1").to_dense(shape), client.entity_mask(sid, "E1").to_dense(shape)
        )
        assert logic.sync.scene.current_mask("E1").to_dense(shape)[truth_masks()[0]].mean() > 0.9

        # the user erases a row of E1 in Segment Editor; the next round sends it first, then the scene acknowledges it
        edited = logic.sync.scene.current_mask("E1").to_dense(shape)
        edited[1, 22, :] = False
        paint_segment(volume, logic.sync.scene.segmentation_node, "E1", edited)
        assert list(logic.pendingEdits()) == ["E1"]
        _chat_round(logic, params, "Now the cyst next to E1.")
        np.testing.assert_array_equal(client.entity_mask(sid, "E1").to_dense(shape), edited)
        assert logic.pendingEdits() == {} and logic.sync.scene.entity_ids() == ["E1", "E2"]
        assert logic.segmentVolumesMl()["E1"] == pytest.approx(
            client.entity(sid, "E1").data["measurements"]["volume_ml"], rel=1e-9
        )

        # a restarted module (new Logic) finds the session again from the parameter node and the scene
        again = module.MedSegReasoningChatLogic()
        again.getParameterNode = lambda: params
        again.makeLink(client, params)
        assert again.link.session_id == sid and again.sync.scene.segmentation_node is logic.sync.scene.segmentation_node

        # a chip's "reject" reached the backend through the link; the scene hides the segment, no second request
        logic.link.set_review("E2", "rejected")
        logic.onReviewed("E2", "rejected")
        assert logic.sync.scene.review_of("E2") == "rejected"
        assert not logic.sync.scene.segmentation_node.GetDisplayNode().GetSegmentVisibility("E2")
        assert logic.sync.reconcile(client) == []  # the scene already agrees with the backend

        outcome = logic.undoRound()
        assert outcome.removed == ["E2"] and logic.sync.scene.entity_ids() == ["E1"]

        assert [p.code for p in logic.exportProblems(("seg", "sr"))] == ["input_not_dicom"]
        assert logic.exportProblems(("seg-nrrd",)) == []
        files = logic.exportToFolder(("seg-nrrd", "nifti"), str(tmp_path / "out"))
        names = sorted(f.name for f in files)
        assert "segmentation.seg.nrrd" in names and any(n.endswith(".nii.gz") for n in names), names

    # the consent rule and the token's home: Slicer's settings, never the scene
    assert logic.isLocalServer("http://127.0.0.1:8765") and not logic.hasConsent("https://gpu.example.org")
    logic.recordConsent("https://gpu.example.org")
    assert logic.hasConsent("https://gpu.example.org")
    assert not any("token" in scene.GetNthNode(n).GetName().lower() for n in range(scene.GetNumberOfNodes()))


def test_a_reloaded_scene_shows_the_chat_and_continues_it_after_the_server_forgot_the_session(
    tmp_path: Path, monkeypatch
) -> None:
    """Round 1 on one server; the scene keeps the conversation (record + archive). A new Logic on a server that never
    saw the session (expired, restarted elsewhere) shows the saved chat and continues it: same segmentation node,
    same entity ids, numbering on, nothing duplicated."""
    from support.slicer import load_volume_node, new_scene, oblique_geometry, require_slicer_core, write_nrrd_lps

    require_slicer_core()
    from support.server import live_server, scripted_engine, small_volume, write_replay

    from MedSegReasoning.wire.client import MedSegClient

    scene = new_scene()
    volume = load_volume_node(scene, write_nrrd_lps(tmp_path / "v.nrrd", small_volume().array, oblique_geometry()))
    module, ns = logic_module(monkeypatch, scene)
    params = ns(inputVolume=volume, sessionId="")
    replay = write_replay(tmp_path / "answers.jsonl")
    for name in ("first", "second"):
        (tmp_path / name).mkdir()

    with live_server(tmp_path / "first", scripted_engine(replay)) as (server, tokens):
        logic = module.MedSegReasoningChatLogic()
        logic.getParameterNode = lambda: params
        logic.makeLink(MedSegClient(server.url, tokens["alice"]), params)
        _chat_round(logic, params, "Segment the bright mass.")
        first_sid = params.sessionId
        segmentation = logic.sync.scene.segmentation_node

    saved = module.MedSegReasoningChatLogic().savedConversation(params)
    assert saved is not None and [r["question"] for r in saved["rounds"]] == ["Segment the bright mass."]
    assert [e["id"] for e in saved["entities"]] == ["E1"] and saved.get("archive")

    with live_server(tmp_path / "second", scripted_engine(replay), tokens=tokens) as (server, _):
        again = module.MedSegReasoningChatLogic()
        again.getParameterNode = lambda: params
        again.makeLink(MedSegClient(server.url, tokens["alice"]), params)
        _chat_round(again, params, "Now the cyst next to E1.")
        assert params.sessionId != first_sid and again.link.restored_from == first_sid
        assert again.sync.scene.segmentation_node is segmentation, "re-bound, not a second segmentation node"
        assert again.sync.scene.entity_ids() == ["E1", "E2"]
        assert segmentation.GetAttribute("MedSegReasoning.SessionId") == params.sessionId
        segmentations = [
            scene.GetNthNodeByClass(n, "vtkMRMLSegmentationNode")
            for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))
        ]
        assert segmentations == [segmentation]
        resaved = again.savedConversation(params)
        assert [r["question"] for r in resaved["rounds"]] == ["Segment the bright mass.", "Now the cyst next to E1."]


def test_clicks_boxes_and_the_view_go_with_the_question(tmp_path: Path, monkeypatch) -> None:
    """The Logic reads the markups the user placed and the slice view under the crosshair (else the red one)."""
    from support.slicer import (
        load_volume_node,
        new_scene,
        oblique_geometry,
        ramp_array,
        require_slicer_core,
        write_nrrd_lps,
    )

    require_slicer_core()
    import numpy as np
    import slicer
    import vtk

    scene = new_scene()
    volume = load_volume_node(scene, write_nrrd_lps(tmp_path / "v.nrrd", ramp_array((6, 20, 24)), oblique_geometry()))
    module, ns = logic_module(monkeypatch, scene)
    monkeypatch.setattr(
        slicer.util,
        "getNodesByClass",
        lambda cls: [scene.GetNthNodeByClass(n, cls) for n in range(scene.GetNumberOfNodesByClass(cls))],
        raising=False,
    )
    params = ns(inputVolume=volume, sessionId="")
    logic = module.MedSegReasoningChatLogic()
    logic.getParameterNode = lambda: params
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    ijk_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])

    def ras(i, j, k):
        return (ijk_to_ras @ np.array([i, j, k, 1.0]))[:3]

    inside = logic.promptNode(logic.PROMPT_INCLUDE)
    assert logic.promptNode(logic.PROMPT_INCLUDE) is inside, "found again, not created twice"
    inside.AddControlPoint(*ras(5, 7, 2))
    logic.promptNode(logic.PROMPT_EXCLUDE).AddControlPoint(*ras(9, 12, 2))
    box = logic.promptNode(logic.PROMPT_BOX)
    box.SetCenter(*ras(7, 9, 3))
    box.SetSize(0.5, 0.5, 0.5)  # a small axis-aligned (RAS) box around one voxel centre
    assert logic.pendingPrompts() == {"points": [[5, 7, 2, 1], [9, 12, 2, 0]], "boxes": [[7, 9, 3, 7, 9, 3]]}
    logic.clearPrompts()
    assert logic.pendingPrompts() == {"points": [], "boxes": []}

    assert logic.currentView() is None  # no slice view in the scene yet
    red = slicer.vtkMRMLSliceNode()
    red.SetSingletonTag("Red")
    scene.AddNode(red)
    unit = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    slice_to_ras = vtk.vtkMatrix4x4()
    for r in range(3):
        slice_to_ras.SetElement(r, 0, unit[r, 0])
        slice_to_ras.SetElement(r, 1, unit[r, 2])
        slice_to_ras.SetElement(r, 2, unit[r, 1])
        slice_to_ras.SetElement(r, 3, ras(11, 13, 2)[r])
    red.GetSliceToRAS().DeepCopy(slice_to_ras)
    assert logic.currentView() == {"orientation": "coronal", "slice": 13}


def test_choosing_another_input_volume_starts_a_new_conversation_on_it(tmp_path: Path, monkeypatch) -> None:
    """Questions must be about the volume the user now shows: a new session with the new volume; the old session's
    segments stay in the scene."""
    from support.slicer import load_volume_node, new_scene, oblique_geometry, require_slicer_core, write_nrrd_lps

    require_slicer_core()
    from support.server import live_server, scripted_engine, small_volume, write_replay

    from MedSegReasoning.wire.client import MedSegClient

    scene = new_scene()
    first = load_volume_node(scene, write_nrrd_lps(tmp_path / "a.nrrd", small_volume().array, oblique_geometry()))
    second = load_volume_node(
        scene, write_nrrd_lps(tmp_path / "b.nrrd", small_volume().array + 5, oblique_geometry()), name="second"
    )
    module, ns = logic_module(monkeypatch, scene)
    params = ns(inputVolume=first, sessionId="")
    logic = module.MedSegReasoningChatLogic()
    logic.getParameterNode = lambda: params

    with live_server(tmp_path, scripted_engine(write_replay(tmp_path / "answers.jsonl"))) as (server, tokens):
        client = MedSegClient(server.url, tokens["alice"])
        logic.makeLink(client, params)
        assert logic.switchVolume(params) is False  # the same volume: nothing changes
        _chat_round(logic, params, "Segment the bright mass.")
        first_session, first_sync = params.sessionId, logic.sync
        params.inputVolume = second
        assert logic.switchVolume(params) is True and params.sessionId == "" and logic.link.session_id is None
        _chat_round(logic, params, "Segment the bright mass.")
        assert params.sessionId != first_session
        assert (
            client.session(params.sessionId)["volume"]["content_sha256"]
            != client.session(first_session)["volume"]["content_sha256"]
        )
        assert logic.sync.scene.volume_node is second and first_sync.scene.volume_node is first
        assert first_sync.scene.entity_ids() == ["E1"] and logic.sync.scene.entity_ids() == ["E1"]


# -- the module's name in Slicer: MedSegReasoningChat when installed, scripted_module.py in the repository -----------


def test_the_build_installs_the_module_file_as_medsegreasoningchat() -> None:
    """Slicer names a module after its file: CMake copies scripted_module.py to MedSegReasoningChat.py and builds that."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert "set(MODULE_NAME MedSegReasoningChat)" in cmake
    assert "configure_file(scripted_module.py ${CMAKE_CURRENT_BINARY_DIR}/${MODULE_NAME}.py COPYONLY)" in cmake
    assert "${CMAKE_CURRENT_BINARY_DIR}/${MODULE_NAME}.py" in cmake.split("set(MODULE_PYTHON_SCRIPTS", 1)[1]
    assert "Resources/Icons/MedSegReasoningChat.png" in cmake  # the extension's icon URL
    assert (ROOT / "Resources" / "UI" / "MedSegReasoningChat.ui").is_file()
    assert ET.parse(UI).getroot().find("widget").get("name") == "MedSegReasoningChat"


def test_the_module_loads_under_both_names_and_its_prompt_roles_are_the_librarys(monkeypatch) -> None:
    from support.slicer import new_scene, require_slicer_core

    require_slicer_core()
    from MedSegReasoning.slicer import prompt_markups

    module, _ = logic_module(monkeypatch, new_scene())
    for suffix in ("", "Widget", "Logic", "Test"):  # loaded from the repository folder, Slicer looks for these
        assert getattr(module, "scripted_module" + suffix) is getattr(module, "MedSegReasoningChat" + suffix)
    logic = module.MedSegReasoningChatLogic
    assert (logic.PROMPT_INCLUDE, logic.PROMPT_EXCLUDE, logic.PROMPT_BOX) == (
        prompt_markups.PROMPT_INCLUDE,
        prompt_markups.PROMPT_EXCLUDE,
        prompt_markups.PROMPT_BOX,
    )


def test_a_scene_saved_under_the_old_module_name_keeps_its_session() -> None:
    """The parameter node (input volume, session id) of a scene saved when the module was scripted_module is taken
    over: re-tagged when the module has none, moved into a blank one (as after a scene close), never over one in use."""
    from support.slicer import new_scene, require_slicer_core

    require_slicer_core()
    from MedSegReasoning.slicer.module_name import MODULE_NAME, OLD_MODULE_NAME, adopt_old_parameter_node

    def parameter_node(scene, tag, session_id, volume=None):
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.SetSingletonTag(tag)
        node.SetAttribute("ModuleName", tag)
        node.SetName(tag)
        node.SetParameter("sessionId", session_id)
        scene.AddNode(node)
        if volume is not None:
            node.SetNodeReferenceID("inputVolume", volume.GetID())
        return node

    def current(scene):
        return scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")

    scene = new_scene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    parameter_node(scene, OLD_MODULE_NAME, "s-1", volume)
    assert adopt_old_parameter_node(scene)
    assert current(scene).GetParameter("sessionId") == "s-1"
    assert current(scene).GetAttribute("ModuleName") == MODULE_NAME
    assert current(scene).GetNodeReferenceID("inputVolume") == volume.GetID()
    assert scene.GetSingletonNode(OLD_MODULE_NAME, "vtkMRMLScriptedModuleNode") is None
    assert not adopt_old_parameter_node(scene)  # nothing left to adopt

    scene = new_scene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    blank = parameter_node(scene, MODULE_NAME, "")
    parameter_node(scene, OLD_MODULE_NAME, "s-2", volume)
    assert adopt_old_parameter_node(scene) and current(scene) is blank
    assert blank.GetParameter("sessionId") == "s-2" and blank.GetNodeReferenceID("inputVolume") == volume.GetID()
    assert scene.GetSingletonNode(OLD_MODULE_NAME, "vtkMRMLScriptedModuleNode") is None

    scene = new_scene()
    in_use = parameter_node(scene, MODULE_NAME, "s-3")
    parameter_node(scene, OLD_MODULE_NAME, "s-old")
    assert not adopt_old_parameter_node(scene) and in_use.GetParameter("sessionId") == "s-3"
