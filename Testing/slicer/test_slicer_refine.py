"""Refine in Slicer: the Refine button's state, the panel context -> refine request, the panel against a fake
backend, and the whole path (PySide panel, the module's Logic on slicer-core's MRML, a live server): a box placed in
the views corrects the selected entity, and its segment is rewritten in place with the engine's exact voxels."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support.qt_panel import APP, LIVER, FakeBackend, Q
from support.qt_panel import wait_until as _wait

from MedSegReasoning.slicer.backend_link import refine_answer, refine_request
from MedSegReasoning.slicer.chat_panel import ChatPanel, RoundEvent
from MedSegReasoning.slicer.refine_controls import refine_button_state
from MedSegReasoning.wire.errors import InputError

BOX_CONTEXT = {"prompts": {"points": [], "boxes": [[12, 12, 0, 32, 32, 0]]}}


# -- the button's state -------------------------------------------------------------------------------------------


def test_refine_button_follows_the_selection_and_says_why_it_is_disabled() -> None:
    def state(selected, context, **kw):
        return refine_button_state(selected, context, **{"busy": False, "connected": True, "can_refine": True, **kw})

    nothing = state(None, BOX_CONTEXT)
    assert not nothing.enabled and nothing.text == "Refine" and "click its chip" in nothing.tooltip
    no_box = state("E1", {"prompts": {"points": [[1, 2, 3]], "boxes": []}})
    assert not no_box.enabled and no_box.text == "Refine E1" and "Place a box" in no_box.tooltip
    assert "E1" in no_box.tooltip
    two = state("E1", {"prompts": {"boxes": [[0, 0, 0, 1, 1, 0], [2, 2, 0, 3, 3, 0]]}})
    assert not two.enabled and "2 boxes" in two.tooltip
    ready = state("E2", BOX_CONTEXT)
    assert ready.enabled and ready.text == "Refine E2" and "again from the box" in ready.tooltip
    erase = state("E2", BOX_CONTEXT, erase=True)
    assert erase.enabled and erase.text == "Erase in E2" and "Remove" in erase.tooltip
    assert "running" in state("E1", BOX_CONTEXT, busy=True).tooltip
    assert "Not connected" in state("E1", BOX_CONTEXT, connected=False).tooltip
    assert "cannot refine" in state("E1", BOX_CONTEXT, can_refine=False).tooltip
    assert not any(s.enabled for s in (state("E1", BOX_CONTEXT, busy=True), state("E1", {})))


# -- the panel's context as a refine request ------------------------------------------------------------------------


def test_refine_request_takes_the_one_box_on_its_plane_with_the_clicks_on_its_slice() -> None:
    axial = {"prompts": {"points": [[20, 21, 0], [25, 26, 0, 0]], "boxes": [[32, 12, 0, 12, 30, 0]]}}
    assert refine_request(axial) == {
        "box": [12, 12, 32, 30, 0],
        "points": [[20, 21, 0, 1], [25, 26, 0, 0]],
        "view": {"orientation": "axial", "slice": 0},
    }
    # a box drawn in a coronal view (thin along j): (i, k) on plane j, the view's plane wins over thinness
    coronal = {
        "view": {"orientation": "coronal", "slice": 22},
        "prompts": {"points": [], "boxes": [[12, 22, 0, 18, 22, 2]]},
        "window": "ct-soft-tissue",
    }
    assert refine_request(coronal, erase=True) == {
        "erase": [12, 0, 18, 2, 22],
        "points": [],
        "view": {"orientation": "coronal", "slice": 22},
        "window": "ct-soft-tissue",
    }
    with pytest.raises(InputError, match="place a box"):
        refine_request({"prompts": {"points": [[1, 2, 3]], "boxes": []}})
    with pytest.raises(InputError, match="remove all but one"):
        refine_request({"prompts": {"boxes": [[0, 0, 0, 4, 4, 0], [0, 0, 2, 4, 4, 2]]}})
    with pytest.raises(InputError, match="clicks on the box's slice"):
        refine_request({"prompts": {"points": [[5, 5, 2]], "boxes": [[0, 0, 0, 9, 9, 0]]}})


def test_refine_answer_says_what_changed() -> None:
    summary = {"entity_id": "E1", "kind": "add", "orientation": "axial", "slice": 0, "changed_slices": [0, 1]}
    assert refine_answer(summary, {"E1": "Liver"}) == (
        "Added to E1 (Liver) from the box on axial slice 0: 2 slice(s) changed (0, 1)."
    )
    erased = {**summary, "kind": "erase", "changed_slices": []}
    assert refine_answer(erased, {}).startswith("Erased from E1 from the box on axial slice 0: 0 slice(s)")


# -- the panel against a fake backend -------------------------------------------------------------------------------


class RefiningFake(FakeBackend):
    """Answers a question with the liver (E1), and a refine with the same entity again."""

    def __init__(self) -> None:
        super().__init__([RoundEvent("target", LIVER), RoundEvent("done", {"answer": "Found E1."})])
        self.refined: list[tuple[str, dict, bool]] = []
        self.threads: list[str] = []

    def refine(self, entity_id: str, context: dict, erase: bool = False) -> Iterator[RoundEvent]:
        self.refined.append((entity_id, context, erase))
        self.threads.append(threading.current_thread().name)
        yield RoundEvent("target", LIVER)
        yield RoundEvent("done", {"answer": f"Refined {entity_id}."})


def test_the_refine_button_sends_the_placed_box_for_the_selected_chip() -> None:
    backend = RefiningFake()
    pending: dict = {}
    panel = ChatPanel(backend, qt=Q)
    panel.widget.show()
    panel.set_prompts_provider(lambda: dict(pending) or None, clear=pending.clear)
    button = panel.refine_controls.button
    assert not button.isEnabled() and "chip" in button.toolTip()

    panel.input.setPlainText("Where is the liver?")
    panel.send()
    _wait(lambda: not panel.busy and "E1" in panel.chips)
    panel.chips["E1"].button.click()
    assert panel.selected_entity == "E1"
    assert button.text() == "Refine E1" and not button.isEnabled() and "Place a box" in button.toolTip()

    pending.update(BOX_CONTEXT["prompts"])
    panel.refresh_context()
    assert button.isEnabled(), button.toolTip()
    button.click()
    _wait(lambda: not panel.busy and backend.refined)
    entity_id, context, erase = backend.refined[0]
    assert (entity_id, erase) == ("E1", False)
    assert context["prompts"]["boxes"] == [[12, 12, 0, 32, 32, 0]]
    assert backend.threads[0] != threading.main_thread().name, "the backend never runs on the GUI thread"
    assert pending == {}, "the box was consumed"
    assert ("you", "Refine E1") in panel.transcript and panel._round_view.answer.text() == "Refined E1."
    assert not button.isEnabled()  # no box left

    panel.refine_controls.erase_button.click()  # erase mode
    pending.update(BOX_CONTEXT["prompts"])
    panel.refresh_context()
    assert button.text() == "Erase in E1" and button.isEnabled()
    button.click()
    _wait(lambda: not panel.busy and len(backend.refined) == 2)
    assert backend.refined[1][0] == "E1" and backend.refined[1][2] is True

    plain = ChatPanel(FakeBackend([]), qt=Q)  # a backend without refine: the button says so
    plain.chips["E1"] = None
    plain._select("E1")
    assert not plain.refine_controls.button.isEnabled()
    assert "cannot refine" in plain.refine_controls.button.toolTip()
    panel.shutdown()
    plain.shutdown()


# -- the whole path: panel, Logic, scene, live server ----------------------------------------------------------------


def test_refine_in_the_panel_rewrites_the_segment_in_place_with_the_engines_voxels(tmp_path: Path, monkeypatch):
    from support.slicer import load_volume_node, new_scene, require_slicer_core, write_nrrd_lps

    require_slicer_core()
    import slicer
    import vtk
    from support.server import BOX_A, HALF_A, engine_refine, live_server, scripted_engine, small_volume
    from support.slicer import logic_module

    from MedSegReasoning.correction import Correction
    from MedSegReasoning.pipeline import VoxelPrompt
    from MedSegReasoning.wire.client import MedSegClient

    scene = new_scene()
    engine_volume = small_volume()
    volume = load_volume_node(scene, write_nrrd_lps(tmp_path / "v.nrrd", engine_volume.array, engine_volume.geometry))
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
    shape = engine_volume.shape

    def place_box(i0: int, j0: int, i1: int, j1: int, k: int) -> None:
        """A markups ROI over voxels i0..i1, j0..j1 of axial slice k, as the Box button places it (RAS)."""
        centre = ijk_to_ras @ np.array([(i0 + i1) / 2, (j0 + j1) / 2, k, 1.0])
        size = np.abs(ijk_to_ras[:3, :3] @ np.array([i1 - i0, j1 - j0, 0.1]))
        roi = logic.promptNode(logic.PROMPT_BOX)
        roi.SetCenter(*centre[:3])
        roi.SetSize(*size)

    def on_event(event: RoundEvent) -> None:
        if event.kind == "done":
            params.sessionId = logic.afterRound()

    with live_server(tmp_path, scripted_engine(None)) as (server, tokens):
        client = MedSegClient(server.url, tokens["alice"])
        panel = ChatPanel(logic.makeLink(client, params), qt=Q, on_entity=logic.onTarget, on_event=on_event)
        logic.link.propagate = False
        panel.widget.show()
        panel.set_prompts_provider(logic.pendingPrompts, clear=logic.clearPrompts)
        panel.set_view_provider(logic.currentView)

        # round 1: E1 from the left half of A on slice 1
        place_box(*HALF_A, 1)
        panel.input.setPlainText("mass")
        panel.send()
        _wait(lambda: not panel.busy and params.sessionId, timeout=20)
        sid = params.sessionId
        segment = logic.sync.scene.segmentation.GetSegment("E1")
        terminology = segment.GetTerminology()
        before = logic.sync.scene.current_mask("E1").to_dense(shape)
        assert before[1].any() and not before[0].any()

        # select E1, place a box around A on slice 0, press Refine E1
        panel.chips["E1"].button.click()
        place_box(*BOX_A, 0)
        panel.refresh_context()
        button = panel.refine_controls.button
        assert button.text() == "Refine E1" and button.isEnabled(), button.toolTip()
        expected = engine_refine(server, sid, tmp_path, Correction(VoxelPrompt(k=0, box=tuple(BOX_A))))
        assert not np.array_equal(expected, before), "the correction must change something to be tested"
        button.click()
        _wait(lambda: not panel.busy and len(client.rounds(sid)) == 2, timeout=20)
        APP.processEvents()

        assert client.rounds(sid)[-1]["question"] == f"refine E1: add from box {list(BOX_A)} on axial slice 0"
        scene_mask = logic.sync.scene.current_mask("E1").to_dense(shape)
        np.testing.assert_array_equal(scene_mask, expected)
        np.testing.assert_array_equal(client.entity_mask(sid, "E1").to_dense(shape), expected)
        assert logic.sync.scene.segmentation.GetSegment("E1") is segment, "the same segment, rewritten in place"
        assert logic.sync.scene.entity_ids() == ["E1"] and segment.GetTerminology() == terminology
        assert logic.pendingEdits() == {}, "the refined voxels are the backend's, not a user edit"
        assert logic.pendingPrompts()["boxes"] == [], "the box was consumed"
        assert panel._round_view.answer.text().startswith("Added to E1 (")

        # undo in the module: the segment gets the mask the refine replaced
        assert logic.undoRound().restored == ["E1"]
        np.testing.assert_array_equal(logic.sync.scene.current_mask("E1").to_dense(shape), before)
        panel.shutdown()
