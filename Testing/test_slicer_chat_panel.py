"""The chat panel under PySide offscreen, against a scripted fake backend (the HTTP client is another issue's).

PySide2 is Qt 5.15's binding family, like released Slicer's PythonQt; PySide6 is used when PySide2 is absent.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from MedSegReasoning.slicer.chat_panel import ChatPanel, RoundEvent, qt_namespace

OUTPUT = Path(__file__).parent / "_output"


def _binding():
    for name in ("PySide2", "PySide6"):
        try:
            return name, qt_namespace(name)
        except ImportError:
            continue
    pytest.skip("no PySide: pip install PySide2==5.13.2 (or PySide6-Essentials)")


BINDING, Q = _binding()
widgets = __import__(f"{BINDING}.QtWidgets", fromlist=["QtWidgets"])
qtest = __import__(f"{BINDING}.QtTest", fromlist=["QtTest"]).QTest
APP = widgets.QApplication.instance() or widgets.QApplication([])

LIVER = {"entity": {"id": "E1", "name": "Liver", "color": [221, 130, 101], "review": "proposed"}}
KIDNEY = {"entity": {"id": "E2", "name": "Left kidney", "color": [185, 102, 83], "review": "proposed"}}


class FakeBackend:
    """Streams a scripted round; ``gate`` (when set) holds the stream after the first chunk until cancel()."""

    def __init__(self, events: list[RoundEvent], hold_after_first: bool = False) -> None:
        self.events = events
        self.hold = threading.Event() if hold_after_first else None
        self.cancelled = threading.Event()
        self.asked: list[tuple[str, dict, str]] = []
        self.reviews: list[tuple[str, str]] = []

    def ask(self, question: str, context: dict) -> Iterator[RoundEvent]:
        self.asked.append((question, context, threading.current_thread().name))
        for n, event in enumerate(self.events):
            if self.cancelled.is_set():
                return
            yield event
            time.sleep(0.01)
            if n == 0 and self.hold is not None:
                self.hold.wait(5)

    def cancel(self) -> None:
        self.cancelled.set()
        if self.hold is not None:
            self.hold.set()

    def set_review(self, entity_id: str, review: str) -> None:
        self.reviews.append((entity_id, review))


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        APP.processEvents()
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


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
    panel = ChatPanel(backend, qt=Q, context_provider=lambda: {"view": "Red", "slice": 12}, **kwargs)
    panel.widget.resize(460, 520)
    panel.widget.show()
    return panel


def test_streamed_reasoning_chips_and_answer_then_screenshot() -> None:
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
    assert context == {"view": "Red", "slice": 12}
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
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / "chat_panel.png"
    assert panel.widget.grab().save(str(path))
    assert path.stat().st_size > 2000
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
