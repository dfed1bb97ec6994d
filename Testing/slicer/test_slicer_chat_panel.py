"""The chat panel under PySide offscreen: against a scripted fake backend (widget behaviour), and against a real
server on loopback through ``BackendLink`` (replay reasoner, real LiteMedSAM, three slices of the real CT).

PySide2 is Qt 5.15's binding family, like released Slicer's PythonQt; PySide6 is used when PySide2 is absent.
Screenshots go to ``Testing/_output/<test name>/chat_panel.png``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from support.live_backend import K, box_of, saved_session, segmenter_held, start_server, write_answers
from support.qt_panel import APP, KIDNEY, LIVER, FakeBackend, Q, qtest, widgets
from support.qt_panel import wait_until as _wait

from MedSegReasoning.slicer.backend_link import chat_backend
from MedSegReasoning.slicer.chat_panel import ChatPanel, RoundEvent
from MedSegReasoning.wire.session_archive import session_json

OUTPUT = Path(__file__).resolve().parents[1] / "_output"  # Testing/_output, as docs/slicer.md says


def _round() -> list[RoundEvent]:
    return [
        RoundEvent("reasoning", {"text": "The liver is the large organ in the right upper quadrant. "}),
        RoundEvent("progress", {"stage": "segmenting", "fraction": 0.5}),
        RoundEvent("reasoning", {"text": "The left kidney lies posterior, beside the spine."}),
        RoundEvent("target", LIVER),
        RoundEvent("target", KIDNEY),
        RoundEvent("done", {"answer": "Found the liver (E1) and the left kidney (E2)."}),
    ]


def _panel(backend: FakeBackend, **kwargs) -> ChatPanel:
    panel = ChatPanel(backend, qt=Q, context_provider=lambda: {"view": {"orientation": "axial", "slice": 12}}, **kwargs)
    panel.widget.resize(460, 520)
    panel.widget.show()
    return panel


def _screenshot(panel: ChatPanel, request, name: str = "chat_panel.png") -> Path:
    folder = OUTPUT / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    APP.processEvents()
    assert panel.widget.grab().save(str(path))
    assert path.stat().st_size > 2000
    return path


def test_streamed_reasoning_chips_and_answer_then_screenshot(request) -> None:
    backend = FakeBackend(_round())
    written: list[dict] = []
    selected: list[str] = []
    panel = _panel(backend, on_entity=written.append)
    panel.set_entity_selected_callback(selected.append)

    panel.input.setPlainText("Where are the liver and the left kidney?")
    qtest.keyClick(panel.input, Q.Qt.Key_Return)  # Enter sends
    assert panel.busy and not panel.send_button.isEnabled() and panel.cancel_button.isEnabled()
    _wait(lambda: not panel.busy)

    question, context, thread = backend.asked[0]
    assert question == "Where are the liver and the left kidney?"
    assert context == {"view": {"orientation": "axial", "slice": 12}}
    assert thread != threading.main_thread().name  # the backend never runs on the GUI thread
    view = panel._round_view
    assert (
        view.reasoning.text().startswith("The liver is the large organ") and "left kidney lies" in view.reasoning.text()
    )
    assert view.answer.text() == "Found the liver (E1) and the left kidney (E2)."
    assert sorted(panel.chips) == ["E1", "E2"]
    assert panel.chips["E2"].button.text() == "E2 Left kidney \u00b7 proposed"
    assert [d["entity"]["id"] for d in written] == ["E1", "E2"]  # the scene writer's hook, on the GUI thread

    panel.chips["E1"].button.click()
    assert selected == ["E1"]
    panel.chips["E1"].confirm.click()
    _wait(lambda: panel.chips["E1"].review == "confirmed")
    assert backend.reviews == [("E1", "confirmed")]
    assert "confirmed" in panel.chips["E1"].button.text()

    view.toggle.setChecked(True)  # expand the reasoning for the screenshot (it collapses when the answer comes)
    APP.processEvents()
    assert view.reasoning.isVisible()
    _screenshot(panel, request)
    panel.shutdown()


def test_shift_enter_inserts_a_new_line_and_does_not_send() -> None:
    backend = FakeBackend(_round())
    panel = _panel(backend)
    panel.input.setPlainText("first line")
    panel.input.moveCursor(panel.input.textCursor().End)
    qtest.keyClick(panel.input, Q.Qt.Key_Return, Q.Qt.ShiftModifier)
    APP.processEvents()
    assert panel.input.toPlainText() == "first line\n"
    assert not panel.busy and backend.asked == []
    panel.shutdown()


def test_cancel_stops_the_round_and_drops_late_events() -> None:
    backend = FakeBackend(_round(), hold_after_first=True)
    panel = _panel(backend)
    panel.input.setPlainText("Segment everything")
    panel.send_button.click()
    _wait(lambda: panel._round_view is not None and panel._round_view.reasoning.text() != "")
    panel.cancel_button.click()
    _wait(lambda: not panel.busy)
    assert backend.cancelled.is_set()
    assert panel.status.text() == "Cancelled."
    assert panel._round_view.answer.text() == "Cancelled."
    time.sleep(0.1)
    APP.processEvents()
    assert panel.chips == {}  # the targets after the cancel never reached the GUI
    assert panel.send_button.isEnabled() and not panel.cancel_button.isEnabled()
    panel.shutdown()


def test_backend_failure_is_shown_not_raised() -> None:
    class Broken(FakeBackend):
        def ask(self, question: str, context: dict) -> Iterator[RoundEvent]:
            yield RoundEvent("reasoning", {"text": "Looking..."})
            raise ConnectionError("server went away")

    panel = _panel(Broken([]))
    panel.input.setPlainText("Where is the spleen?")
    panel.send()
    _wait(lambda: not panel.busy)
    assert panel.transcript[1] == ("error", "server went away")
    panel.shutdown()


def test_context_line_shows_what_goes_with_the_question_and_clears_after_sending() -> None:
    backend = FakeBackend(_round())
    pending = {"points": [[120, 88, 41], [130, 90, 41, 0]], "boxes": [[100, 80, 41, 170, 140, 41]]}
    panel = ChatPanel(backend, qt=Q)
    panel.widget.show()
    panel.set_view_provider(lambda: {"orientation": "axial", "slice": 57})
    panel.set_prompts_provider(lambda: pending or None, clear=pending.clear)
    assert panel.context_line.isVisible() and panel.context_line.text() == "with 2 points, 1 box, axial slice 57"
    panel.input.setPlainText("What is this?")
    qtest.keyClick(panel.input, Q.Qt.Key_Return)
    _wait(lambda: not panel.busy)
    question, context, _ = backend.asked[0]
    assert context["view"] == {"orientation": "axial", "slice": 57}
    assert context["prompts"]["points"] == [[120, 88, 41], [130, 90, 41, 0]] and len(context["prompts"]["boxes"]) == 1
    assert pending == {}  # the module's clear() ran: the markups are consumed
    assert panel.context_line.text() == "with axial slice 57"  # the view stays, the clicks are gone
    panel.set_view_provider(lambda: 1 / 0)  # a provider that fails is skipped, the chat keeps working
    panel.refresh_context()
    assert not panel.context_line.isVisible()
    panel.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# against a real backend on loopback


def test_panel_against_a_real_backend_then_restore(ct3, litemedsam, tmp_path, request) -> None:
    answers = write_answers(
        tmp_path / "answers.jsonl",
        [
            {
                "targets": [
                    {"label": "spleen", "box": box_of(ct3.truth["spleen"][K])},
                    {"label": "liver", "box": box_of(ct3.truth["liver"][K])},
                ],
                "text": "The spleen sits left and posterior; the liver fills the right upper abdomen.",
            },
            {"targets": [{"label": "aorta", "box": box_of(ct3.truth["aorta"][K])}], "this_slice": True},
        ],
    )
    with start_server(tmp_path, litemedsam, answers) as (server, token):
        link = chat_backend(server.url, token)
        ct3.send_to(link)
        written: list[dict] = []
        reasoning_before_first_chip: list[str] = []

        def on_event(event: RoundEvent) -> None:
            if event.kind == "target" and not reasoning_before_first_chip:
                reasoning_before_first_chip.append(panel._round_view.reasoning.text())

        panel = ChatPanel(link, qt=Q, on_entity=written.append, on_event=on_event)
        panel.widget.resize(460, 760)
        panel.widget.show()
        panel.input.setPlainText("Where are the spleen and the liver?")
        qtest.keyClick(panel.input, Q.Qt.Key_Return)
        _wait(lambda: not panel.busy, timeout=180)

        view = panel._round_view
        assert "Best seen on slice 1." in reasoning_before_first_chip[0]  # streamed in before the entities came
        assert view.reasoning.text().endswith("the liver fills the right upper abdomen.")
        assert view.answer.text() == "Found E1 (Spleen), E2 (Liver)."
        server_entities = {e.id: e for e in link.client.entities(link.session_id)}
        assert sorted(panel.chips) == ["E1", "E2"] == sorted(server_entities)
        for eid, chip in panel.chips.items():
            entity = server_entities[eid]
            assert chip.button.text() == f"{eid} {entity.name} \u00b7 proposed"
            assert chip.chip.color == entity.color and "rgb({},{},{})".format(*entity.color) in chip.button.styleSheet()
        assert [d["entity"]["id"] for d in written] == ["E1", "E2"] and written[0]["entity_object"].mask.voxel_count

        panel.chips["E1"].confirm.click()
        panel.chips["E2"].reject.click()
        _wait(lambda: (panel.chips["E1"].review, panel.chips["E2"].review) == ("confirmed", "rejected"))
        reviews = {e.id: e.review for e in link.client.entities(link.session_id)}
        assert reviews == {"E1": "confirmed", "E2": "rejected"}  # read back from the server

        # "this slice": the view goes with the question; the replay holds only a 'locate' answer for this round,
        # so the round succeeds only if the server received the view
        panel.set_view_provider(lambda: {"orientation": "axial", "slice": K})
        assert panel.context_line.text() == f"with axial slice {K}"
        panel.input.setPlainText("What is the round structure on this slice?")
        panel.send_button.click()
        _wait(lambda: not panel.busy, timeout=180)
        assert panel._round_view.answer.text() == "Found E3 (Aorta).", panel.transcript
        recorded = saved_session(server, link.session_id)["rounds"][1]
        assert recorded["targets"][0]["prompt"]["slice"] == K

        for frame in (view, panel._round_view):
            frame.toggle.setChecked(True)  # show the reasoning in the screenshot
        _screenshot(panel, request)

        # the conversation saved beside the scene rebuilds the chat with no backend at all
        snapshot = json.dumps(session_json(link.fetch_archive()))  # what the module saves with the scene
        folder_json = (server.runtime.store.get(link.session_id, "alice").folder / "session.json").read_text()
    for saved in (snapshot, folder_json):
        restored = ChatPanel(None, qt=Q)
        restored.widget.resize(460, 760)
        restored.widget.show()
        restored.restore(saved)
        assert restored.transcript == panel.transcript
        assert {eid: (c.chip.label, c.review) for eid, c in restored.chips.items()} == {
            "E1": ("Spleen", "confirmed"),
            "E2": ("Liver", "rejected"),
            "E3": ("Aorta", "proposed"),
        }
        assert restored._widgets[1].findChildren(widgets.QLabel)[0].text() == view.reasoning.text()
        restored.shutdown()
    restored.restore(snapshot)  # restoring twice replaces, never appends
    assert len(restored.transcript) == 4
    restored.chips["E3"].confirm.click()  # no backend: said, not crashed, nothing changed
    assert restored.status.text().startswith("Not connected") and restored.chips["E3"].review == "proposed"
    _screenshot(restored, request, "restored.png")
    panel.shutdown()


def test_cancel_in_the_panel_cancels_the_server_round(ct3, litemedsam, tmp_path) -> None:
    answers = write_answers(
        tmp_path / "answers.jsonl", [{"targets": [{"label": "spleen", "box": box_of(ct3.truth["spleen"][K])}]}]
    )
    with start_server(tmp_path, litemedsam, answers) as (server, token):
        link = chat_backend(server.url, token)
        ct3.send_to(link)
        sid = link.ensure_session()
        panel = ChatPanel(link, qt=Q)
        panel.widget.show()
        with segmenter_held(server):  # the round's first segmenter call will wait in the server's queue
            panel.input.setPlainText("Where is the spleen?")
            panel.send_button.click()
            _wait(lambda: panel.status.text().startswith("waiting for the segmenter"), timeout=60)
            assert "Best seen on slice 1." in panel._round_view.reasoning.text()
            panel.cancel_button.click()
            _wait(lambda: not panel.busy)
            assert panel.status.text() == "Cancelled." and panel._round_view.answer.text() == "Cancelled."
            # the server round ended while the segmenter was still held: it was cancelled there, not abandoned
            _wait(lambda: link.client.session(sid)["running_round"] is None, timeout=10)
        assert link.client.session(sid)["rounds"] == 0 and link.client.entities(sid) == []
        time.sleep(0.3)
        APP.processEvents()
        assert panel.chips == {} and panel.send_button.isEnabled()
        panel.shutdown()


def test_chat_panel_progress_bar_shows_the_events_fraction():
    events = [
        RoundEvent("progress", {"stage": "target 1 of 1: liver: propagating slice 3 of 10", "fraction": 0.3}),
        RoundEvent("progress", {"stage": "target 1 of 1: liver: propagating slice 7 of 10", "fraction": 0.7}),
    ]
    backend = FakeBackend([*events, RoundEvent("done", {"answer": "ok"})], hold_after_first=True)
    panel = _panel(backend)
    panel.input.setPlainText("Segment the liver.")
    panel.send()
    _wait(lambda: panel.progress.value() == 30)
    assert panel.progress.isVisible() and "propagating slice 3 of 10" in panel.status.text()
    backend.hold.set()
    _wait(lambda: panel.status.text() == "Ready.")
    assert not panel.progress.isVisible()
