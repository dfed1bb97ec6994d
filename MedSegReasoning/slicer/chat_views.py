"""The chat panel's pieces of Qt: one round's view (question's reasoning, collapsible, answer and chips), an entity
chip with its confirm/reject buttons, and the input box that sends on Enter. Built from the ``Q`` namespace of
``chat_panel.qt_namespace``, so they run under Slicer's PythonQt and under PySide alike.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from .chat_events import EntityChip


class RoundView:
    """One round in the chat: a collapsible reasoning section, the answer, and a row of entity chips."""

    def __init__(self, Q: SimpleNamespace, parent: Any) -> None:
        self.Q = Q
        self.frame = Q.QFrame(parent)
        self.frame.setFrameShape(Q.QFrame.StyledPanel)
        layout = Q.QVBoxLayout(self.frame)
        self.toggle = Q.QToolButton(self.frame)
        self.toggle.setText("\u25be Reasoning")
        self.toggle.setCheckable(True)
        self.toggle.setChecked(True)
        self.toggle.toggled.connect(self._show_reasoning)
        layout.addWidget(self.toggle)
        self.reasoning = Q.QLabel("", self.frame)
        self.reasoning.setWordWrap(True)
        self.reasoning.setTextFormat(Q.Qt.PlainText)  # model text may contain <think> tags: never render it as HTML
        self.reasoning.setStyleSheet("color: #555; font-style: italic;")
        layout.addWidget(self.reasoning)
        self.answer = Q.QLabel("", self.frame)
        self.answer.setWordWrap(True)
        layout.addWidget(self.answer)
        self.chip_row = Q.QVBoxLayout()  # one chip per line: a row of chips would force the panel wider than Slicer's
        layout.addLayout(self.chip_row)
        self.reasoning_text = ""

    def _show_reasoning(self, shown: bool) -> None:
        self.reasoning.setVisible(shown)
        self.toggle.setText(("\u25be" if shown else "\u25b8") + " Reasoning")

    def append_reasoning(self, text: str) -> None:
        self.reasoning_text += text
        self.reasoning.setText(self.reasoning_text)

    def set_reasoning(self, text: str) -> None:
        self.reasoning_text = text
        self.reasoning.setText(text)

    def set_answer(self, text: str) -> None:
        self.answer.setText(text)
        if self.reasoning_text:
            self.toggle.setChecked(False)  # collapse once the answer is in; one click shows it again

    def add_chip(self, chip: EntityChip, on_select: Callable[[str], None], on_review: Callable[[str, str], None]):
        holder = Chip(self.Q, self.frame, chip, on_select, on_review)
        self.chip_row.addWidget(holder.widget)
        return holder


class Chip:
    """An entity chip: coloured button (select and centre), confirm and reject buttons, review status in the text."""

    def __init__(self, Q: SimpleNamespace, parent: Any, chip: EntityChip, on_select, on_review) -> None:
        self.chip = chip
        self.widget = Q.QWidget(parent)
        row = Q.QHBoxLayout(self.widget)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(2)
        self.button = Q.QPushButton(self.widget)
        r, g, b = chip.color
        text_color = "#000" if (0.299 * r + 0.587 * g + 0.114 * b) > 140 else "#fff"
        self._style = f"background-color: rgb({r},{g},{b}); color: {text_color}; border-radius: 8px; padding: 2px 8px;"
        self.button.clicked.connect(lambda *_: on_select(chip.id))
        self.confirm = Q.QToolButton(self.widget)
        self.confirm.setText("\u2713")
        self.confirm.setToolTip(f"Confirm {chip.id}")
        self.confirm.clicked.connect(lambda *_: on_review(chip.id, "confirmed"))
        self.reject = Q.QToolButton(self.widget)
        self.reject.setText("\u2717")
        self.reject.setToolTip(f"Reject {chip.id}")
        self.reject.clicked.connect(lambda *_: on_review(chip.id, "rejected"))
        for w in (self.button, self.confirm, self.reject):
            row.addWidget(w)
        row.addStretch(1)
        self.set_review(chip.review)

    def set_review(self, review: str) -> None:
        self.review = review
        self.button.setText(f"{self.chip.id} {self.chip.label} \u00b7 {review}")
        # the status is also seen at a glance: a rejected entity struck through, a confirmed one outlined
        extra = {"rejected": " text-decoration: line-through;", "confirmed": " border: 2px solid #1a7f37;"}
        self.button.setStyleSheet(self._style + extra.get(review, ""))


def make_input_box(Q: SimpleNamespace, parent: Any, on_send: Callable[[], None]) -> Any:
    """A plain-text box where Enter sends and Shift+Enter inserts a new line (subclassing works in both bindings)."""

    text_edit: Any = Q.QPlainTextEdit  # the binding's class, chosen at run time (Slicer's qt or PySide2)

    class InputBox(text_edit):
        def keyPressEvent(self, event) -> None:
            enter = _as_int(event.key()) in (_as_int(Q.Qt.Key_Return), _as_int(Q.Qt.Key_Enter))
            if enter and not _as_int(event.modifiers()) & _as_int(Q.Qt.ShiftModifier):
                on_send()
                return
            Q.QPlainTextEdit.keyPressEvent(self, event)

    return InputBox(parent)


def _as_int(value: Any) -> int:
    """Keys and modifier flags as plain ints: PythonQt gives ints, PySide2 flag objects (always truthy), PySide6 enums."""
    try:
        return int(value)
    except TypeError:
        return int(value.value)
