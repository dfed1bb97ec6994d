"""The chat panel's "Refine E1" button and its "Erase" toggle: correct the selected entity from the box in the views.

Why a module of its own: whether the button can be pressed, and what it says, depends on four things the panel
knows (the selected chip, the box placed in the views, a round running, a backend that can refine), and a disabled
button must say *why* in its tooltip. That decision is a plain function (``refine_button_state``), tested without
Qt; ``RefineControls`` only shows it. Pressing the button asks the panel for a refine round
(``ChatPanel.refine``); the backend (``BackendLink.refine``) sends the box to the server, whose round runs the
engine's ``refine_entity``, and the ``target`` that comes back replaces the entity's segment in the scene in place.

Written against the Qt API that Slicer's PythonQt and PySide share (setters, ``signal.connect``), like the panel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any


@dataclass(frozen=True)
class ButtonState:
    """What the Refine button shows: pressable or not, its text, and the tooltip that says why or what it does."""

    enabled: bool
    text: str
    tooltip: str


def refine_button_state(
    selected: str | None,
    context: Mapping[str, Any],
    *,
    busy: bool,
    connected: bool,
    can_refine: bool,
    erase: bool = False,
) -> ButtonState:
    """The button for entity ``selected`` (a chip's id, or None) and the pending ``context`` (the panel's
    ``pending_context``: ``prompts.boxes`` are the boxes placed in the views). The label follows the selection, so
    the user sees which entity a press corrects before pressing."""
    text = (f"Erase in {selected}" if erase else f"Refine {selected}") if selected else "Refine"

    def off(why: str) -> ButtonState:
        return ButtonState(False, text, why)

    if not connected:
        return off("Not connected: connect to a reasoning server first.")
    if not can_refine:
        return off("This backend cannot refine entities: update the MedSegReasoning server.")
    if busy:
        return off("A round is running: wait for it to finish, or cancel it.")
    if not selected:
        return off("Select an entity first: click its chip in the chat (E1, E2, ...); the box then corrects it.")
    prompts = context.get("prompts")
    boxes = (prompts.get("boxes") if isinstance(prompts, Mapping) else None) or []
    if not boxes:
        where = "around what to remove" if erase else "on the structure"
        return off(f"Place a box (Box button) {where}, on a slice where {selected} is wrong; then press {text}.")
    if len(boxes) > 1:
        return off(f"{len(boxes)} boxes are placed: a correction takes one box. Remove the others.")
    if erase:
        return ButtonState(True, text, f"Remove what {selected} holds inside the box, and what grew from it.")
    return ButtonState(
        True, text, f"Segment {selected} again from the box on its slice; the change spreads until it meets the mask."
    )


class RefineControls:
    """The Refine button and the Erase toggle, in ``row`` (a layout of the panel). ``on_refine(erase)`` is called
    when the button is pressed; ``update(state)`` shows a ``ButtonState``."""

    def __init__(self, Q: SimpleNamespace, parent: Any, row: Any, on_refine: Callable[[bool], None]) -> None:
        self.erase = False
        self.erase_button = Q.QToolButton(parent)
        self.erase_button.setText("Erase")
        self.erase_button.setCheckable(True)
        self.erase_button.setToolTip("Checked: the box removes voxels from the selected entity instead of adding.")
        self.erase_button.toggled.connect(self._toggled)
        self.button = Q.QPushButton("Refine", parent)
        self.button.clicked.connect(lambda *_: on_refine(self.erase))
        row.addWidget(self.erase_button)
        row.addWidget(self.button)
        self.on_toggle: Callable[[], None] | None = None  # the panel refreshes the button's text on a toggle
        self.show(ButtonState(False, "Refine", "Select an entity first: click its chip in the chat."))

    def _toggled(self, checked: bool) -> None:
        self.erase = bool(checked)
        if self.on_toggle is not None:
            self.on_toggle()

    def show(self, state: ButtonState) -> None:
        self.button.setText(state.text)
        self.button.setToolTip(state.tooltip)
        self.button.setEnabled(state.enabled)
        self.state = state
