"""The chat panel's Qt harness for the Slicer-side tests: PySide offscreen (PySide2, like released Slicer's PythonQt;
PySide6 when PySide2 is absent), one QApplication, a scripted fake backend and an event-processing wait. Importing it
skips the importing test module when no PySide is installed."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from MedSegReasoning.slicer.chat_panel import RoundEvent, qt_namespace


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


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Process Qt events until ``condition()`` holds; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        APP.processEvents()
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")
