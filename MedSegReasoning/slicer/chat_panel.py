"""The chat panel: question, streamed reasoning (collapsible), answer and entity chips, input box, Cancel.

Written against the part of the Qt API that Slicer's PythonQt ``qt`` and PySide share (setters such as ``setText``,
``signal.connect(slot)``, overriding ``keyPressEvent`` in a subclass), so the same class runs inside Slicer and
under PySide offscreen in tests. Every Qt name it uses is listed in ``QT_NAMES`` (and in ``slicer_api_names.json``).

Threading, the one rule that keeps Slicer responsive: the backend's blocking, streaming call runs on a Python worker
thread and only puts events on a queue; a ``QTimer`` on the GUI thread drains the queue and touches widgets (and,
through ``on_entity``, the MRML scene). No Qt object is touched off the GUI thread, which is also why no
binding-specific cross-thread signal is needed.

The backend is any object with the ``ChatBackend`` methods: ``backend_link.BackendLink`` over the HTTP client
(``backend_link.chat_backend(url, token)`` makes one), or a scripted fake in tests. The panel imports no backend:
the link depends on the panel's events, never the other way round.

What the Slicer module plugs in (all called on the GUI thread):
- ``set_view_provider(fn)``: ``fn() -> {"orientation": "axial"|"coronal"|"sagittal", "slice": k}`` or None, the
  view the user looks at, so "this slice" questions work;
- ``set_prompts_provider(fn, clear)``: ``fn() -> {"points": [[i, j, k(, label)]], "boxes": [[i0, j0, k0, i1, j1,
  k1]]}`` (voxel indices, from markups), attached to the next question; ``clear()`` is called once they are sent;
- the backend's ``before_round`` (when it has one): edited masks to send before the question;
- ``on_entity(data)`` per target and ``on_event(event)`` per applied event: where the module writes the scene;
- ``restore(session)``: the chat rebuilt from a saved session (docs/session-format.md), without the backend.
A line above the input box shows what goes with the next question ("with 2 points, axial slice 57").

Corrections: clicking an entity chip selects it, and the "Refine E1" button (``refine_controls``) sends the box placed
in the views as a correction of that entity (``backend.refine``, when the backend has it): a round like a question's,
whose ``target`` carries the same entity id, so ``on_entity`` rewrites that segment in place.

Beside this file: ``chat_events`` (the events, chips' data, texts and the ``ChatBackend`` interface, Qt-free; their
names are re-exported here) and ``chat_views`` (a round's view, a chip, the input box).
"""

from __future__ import annotations

import copy
import itertools
import json
import queue
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

from .chat_events import (
    EVENT_KINDS,
    ChatBackend,
    EntityChip,
    RoundEvent,
    answer_text,
    describe_context,
    describe_progress,
    entity_name,
)
from .chat_views import RoundView, make_input_box
from .refine_controls import ButtonState, RefineControls, refine_button_state

QT_NAMES = (
    "QWidget",
    "QVBoxLayout",
    "QHBoxLayout",
    "QLabel",
    "QPushButton",
    "QToolButton",
    "QPlainTextEdit",
    "QScrollArea",
    "QFrame",
    "QProgressBar",
    "QTimer",
    "Qt",
)
"""The Qt classes the panel uses, resolved from whichever binding is present."""

POLL_MS = 40
CONTEXT_EVERY = 10  # refresh the "goes with the question" line every this many timer ticks (0.4 s)


def qt_namespace(prefer: str | None = None) -> SimpleNamespace:
    """The Qt classes of ``QT_NAMES`` from Slicer's ``qt`` if inside Slicer, else from PySide2 or PySide6.

    PySide2 is tried first outside Slicer because released Slicer builds use Qt 5.15; ``prefer`` picks one.
    """
    order = [prefer] if prefer else ["qt", "PySide2", "PySide6"]
    for name in order:
        try:
            if name == "qt":
                import qt

                if not hasattr(qt, "QWidget"):
                    continue
                return SimpleNamespace(**{n: getattr(qt, n) for n in QT_NAMES}, binding="qt")
            core = __import__(f"{name}.QtCore", fromlist=["QtCore"])
            widgets = __import__(f"{name}.QtWidgets", fromlist=["QtWidgets"])
        except ImportError:
            continue
        found = {n: getattr(widgets, n, None) or getattr(core, n) for n in QT_NAMES}
        return SimpleNamespace(**found, binding=name)
    raise ImportError("no Qt binding: run inside Slicer, or pip install PySide2==5.13.2 (Qt 5) or PySide6-Essentials")


class ChatPanel:
    """The chat widget and its round runner; ``widget`` is what goes into a layout."""

    def __init__(
        self,
        backend: ChatBackend | None,
        parent: Any = None,
        qt: SimpleNamespace | None = None,
        context_provider: Callable[[], dict] | None = None,
        on_entity: Callable[[dict], None] | None = None,
        on_event: Callable[[RoundEvent], None] | None = None,
    ) -> None:
        self.qt = Q = qt or qt_namespace()
        self.backend = backend
        self.context_provider = context_provider or dict
        self.on_entity = on_entity  # called on the GUI thread with each target's payload: the scene writer's hook
        self.on_event = on_event  # called on the GUI thread with every event applied (done, review, cancelled, ...)
        self._view_provider: Callable[[], dict | None] | None = None
        self._prompts_provider: Callable[[], dict | None] | None = None
        self._prompts_clear: Callable[[], None] | None = None
        self._ticks = 0
        self._widgets: list[Any] = []  # the message widgets, so that restore() can clear them
        self._on_select: Callable[[str], None] | None = None
        self.selected_entity: str | None = None  # the chip last clicked: what the Refine button corrects
        self._events: queue.Queue[tuple[int, RoundEvent]] = queue.Queue()
        self._round_ids = itertools.count(1)
        self._active_round = 0
        self._cancelled: set[int] = set()
        self._round_view: RoundView | None = None
        self.chips: dict[str, Any] = {}
        self.transcript: list[tuple[str, str]] = []  # (role, text), for saving with the scene and for tests

        self.widget = Q.QWidget(parent)
        outer = Q.QVBoxLayout(self.widget)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll = Q.QScrollArea(self.widget)
        self.scroll.setWidgetResizable(True)
        self.scroll.setHorizontalScrollBarPolicy(Q.Qt.ScrollBarAlwaysOff)  # wrap text, never scroll sideways
        self.messages = Q.QWidget()
        self.messages_layout = Q.QVBoxLayout(self.messages)
        self.messages_layout.addStretch(1)
        self.scroll.setWidget(self.messages)
        outer.addWidget(self.scroll, 1)
        self.status = Q.QLabel("Ready." if backend else "Not connected.", self.widget)
        self.status.setWordWrap(True)
        outer.addWidget(self.status)
        self.progress = Q.QProgressBar(self.widget)  # the round's progress events' fraction; hidden between rounds
        self.progress.setRange(0, 100)
        self.progress.setVisible(False)
        outer.addWidget(self.progress)
        self.context_line = Q.QLabel("", self.widget)
        self.context_line.setWordWrap(True)
        self.context_line.setStyleSheet("color: #2a5d8f; font-size: 11px;")
        self.context_line.setVisible(False)
        outer.addWidget(self.context_line)
        self.input = make_input_box(Q, self.widget, self.send)
        self.input.setPlaceholderText("Ask about the scan (Enter sends, Shift+Enter new line)")
        self.input.setMaximumHeight(70)
        outer.addWidget(self.input)
        row = Q.QHBoxLayout()
        self.refine_controls = RefineControls(Q, self.widget, row, self.refine)
        self.refine_controls.on_toggle = self.refresh_context
        self.send_button = Q.QPushButton("Send", self.widget)
        self.cancel_button = Q.QPushButton("Cancel", self.widget)
        self.cancel_button.setEnabled(False)
        self.send_button.clicked.connect(self.send)
        self.cancel_button.clicked.connect(self.cancel)
        row.addStretch(1)
        row.addWidget(self.send_button)
        row.addWidget(self.cancel_button)
        outer.addLayout(row)

        self.timer = Q.QTimer(self.widget)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.drain_events)
        self.timer.start()

    # -- wiring --------------------------------------------------------------------------------------------------
    def set_backend(self, backend: ChatBackend) -> None:
        self.backend = backend
        self.status.setText("Ready.")

    def set_view_provider(self, provider: Callable[[], dict | None] | None) -> None:
        """``provider() -> {"orientation", "slice"}`` (or None): sent with each question as the current view."""
        self._view_provider = provider
        self.refresh_context()

    def set_prompts_provider(
        self, provider: Callable[[], dict | None] | None, clear: Callable[[], None] | None = None
    ) -> None:
        """``provider() -> {"points": [[i, j, k]], "boxes": [[i0, j0, k0, i1, j1, k1]]}``: the clicks/boxes placed in
        the slice views, attached to the next question; ``clear()`` is called after they were sent."""
        self._prompts_provider = provider
        self._prompts_clear = clear
        self.refresh_context()

    def pending_context(self) -> dict:
        """What would go with a question now: ``context_provider()`` plus ``view`` and ``prompts`` from the
        providers (a provider that fails is skipped: a half-edited markup must not block the chat)."""
        context = dict(self.context_provider() or {})
        for key, provider in (("view", self._view_provider), ("prompts", self._prompts_provider)):
            if provider is None:
                continue
            try:
                value = provider()
            except Exception:
                value = None
            if value:
                context[key] = copy.deepcopy(value)  # a snapshot: the module clears its lists once they are sent
        return context

    def refresh_context(self) -> None:
        """Update the line above the input box (the timer does it every ``CONTEXT_EVERY`` ticks)."""
        context = self.pending_context()
        text = describe_context(context) if not self.busy else ""
        self.context_line.setText(text)
        self.context_line.setVisible(bool(text))
        self.refine_controls.show(self._refine_state(context, self.refine_controls.erase))

    def _refine_state(self, context: dict, erase: bool) -> ButtonState:
        """The Refine button's state now (``refine_controls.refine_button_state``)."""
        return refine_button_state(
            self.selected_entity,
            context,
            busy=self.busy,
            connected=self.backend is not None,
            can_refine=callable(getattr(self.backend, "refine", None)),
            erase=erase,
        )

    def set_entity_selected_callback(self, callback: Callable[[str], None]) -> None:
        """Called with an entity id when its chip is clicked (the module centres the views on it)."""
        self._on_select = callback

    @property
    def busy(self) -> bool:
        return self._active_round != 0

    # -- actions ---------------------------------------------------------------------------------------------------
    def send(self) -> None:
        """Start a round with the input box's text on a worker thread; ignored while one runs or with no text."""
        question = self.input.toPlainText().strip()
        if not question or self.busy:
            return
        backend = self.backend
        if self._begin_round(question, lambda context: backend.ask(question, context)):  # type: ignore[union-attr]  # _begin_round runs it only with a backend
            self.input.setPlainText("")

    def refine(self, erase: bool = False) -> None:
        """Correct the selected entity from the box (and clicks) placed in the views, as a round: its events show in
        the chat like a question's, and its ``target`` (the same entity id) goes to ``on_entity``, which rewrites the
        entity's segment. Ignored unless the Refine button could be pressed (the status line then says why)."""
        state = self._refine_state(self.pending_context(), erase)
        if not state.enabled:
            self.status.setText(state.tooltip)
            return
        entity_id, backend = self.selected_entity, self.backend
        self._begin_round(state.text, lambda context: backend.refine(entity_id, context, erase=erase))  # type: ignore[union-attr]  # _begin_round runs it only with a backend

    def _begin_round(self, shown: str, start: Callable[[dict], Iterator[RoundEvent]]) -> bool:
        """Show ``shown`` as the user's message and run ``start(context)`` (a backend call that streams a round) on
        a worker thread, with the pending context and the user's edits; the placed markups are consumed. False when
        it could not start (not connected, or the edited segments could not be read)."""
        if self.backend is None:
            self.status.setText("Not connected: connect to a reasoning server first.")
            return False
        context = self.pending_context()
        before_round = getattr(self.backend, "before_round", None)
        if callable(before_round):  # the user's edited masks, read from the scene here on the GUI thread
            try:
                context["edits"] = dict(before_round() or {})
            except Exception as exc:
                self.status.setText(f"Could not read the edited segments: {exc}")
                return False
        self._add_message("You", shown, describe_context(context))
        self._round_view = self._add_round_view()
        round_id = next(self._round_ids)
        self._active_round = round_id
        self._set_running(True)
        self.status.setText("Thinking...")
        threading.Thread(target=self._run_round, args=(round_id, lambda: start(context)), daemon=True).start()
        if context.get("prompts") and self._prompts_clear is not None:
            _quietly(self._prompts_clear)  # sent: the markups are consumed
        self.refresh_context()
        return True

    def cancel(self) -> None:
        """Stop the round: tell the backend, and drop whatever of this round still arrives."""
        if not self.busy or self.backend is None:  # a round only starts with a backend
            return
        round_id = self._active_round
        # Mark the round cancelled before the backend hears of it, so nothing it still sends can be applied.
        self._cancelled.add(round_id)
        self._events.put((round_id, RoundEvent("cancelled")))
        threading.Thread(target=_quietly, args=(self.backend.cancel,), daemon=True).start()

    def review(self, entity_id: str, status: str) -> None:
        """Confirm/reject from a chip: sent to the backend off the GUI thread; the chip updates when it answers."""
        backend = self.backend
        if backend is None:
            self.status.setText("Not connected: connect to a reasoning server to confirm or reject.")
            return

        def work() -> None:
            try:
                backend.set_review(entity_id, status)
                self._events.put((0, RoundEvent("review", {"id": entity_id, "review": status})))
            except Exception as exc:
                self._events.put((0, RoundEvent("error", {"message": f"review of {entity_id} failed: {exc}"})))

        threading.Thread(target=work, daemon=True).start()

    def shutdown(self) -> None:
        self.cancel()
        self.timer.stop()

    # -- the worker (no Qt here) -----------------------------------------------------------------------------------------
    def _run_round(self, round_id: int, start: Callable[[], Iterator[RoundEvent]]) -> None:
        try:
            if round_id in self._cancelled:
                return  # cancelled before it started
            stream = start()
            for event in stream:
                if round_id in self._cancelled:
                    # stop consuming; closing the stream lets a backend cancel this very round, should the
                    # cancel() call have raced with the round's start
                    _quietly(getattr(stream, "close", lambda: None))
                    return
                self._events.put((round_id, event))
                if event.kind == "done":
                    return
            self._events.put((round_id, RoundEvent("done")))
        except Exception as exc:
            self._events.put((round_id, RoundEvent("error", {"message": str(exc)})))
            self._events.put((round_id, RoundEvent("done")))

    # -- the GUI thread ------------------------------------------------------------------------------------------------
    def drain_events(self) -> None:
        """Apply queued events to the widgets (runs on the GUI thread, from the timer)."""
        self._ticks += 1
        if self._ticks % CONTEXT_EVERY == 0:
            self.refresh_context()
        while True:
            try:
                round_id, event = self._events.get_nowait()
            except queue.Empty:
                return
            if round_id and (
                round_id != self._active_round or (round_id in self._cancelled and event.kind != "cancelled")
            ):
                continue  # late events of a cancelled or finished round
            self._apply(event)
            self._notify(event)

    def _notify(self, event: RoundEvent) -> None:
        """The module's hooks; a failure there is shown, never allowed to stop the event timer."""
        try:
            if event.kind == "target" and self.on_entity is not None:
                self.on_entity(event.data)
            if self.on_event is not None:
                self.on_event(event)
        except Exception as exc:
            self.status.setText(f"Could not update the scene: {type(exc).__name__}: {exc}")

    def _apply(self, event: RoundEvent) -> None:
        view = self._round_view
        kind, data = event.kind, event.data
        if kind == "reasoning" and view is not None:
            view.append_reasoning(str(data.get("text", "")))
        elif kind == "progress":
            self.status.setText(describe_progress(data))
            if data.get("fraction") is not None:
                self.progress.setValue(round(100 * float(data["fraction"])))
        elif kind == "target" and view is not None:
            chip = EntityChip.from_event(data)
            self.chips[chip.id] = view.add_chip(chip, self._select, self.review)
        elif kind == "review":
            holder = self.chips.get(data["id"])
            if holder is not None:
                holder.set_review(data["review"])
        elif kind == "error":
            self._add_message("Error", str(data.get("message", "unknown error")))
            self.status.setText("Error: " + str(data.get("message", "")))
        elif kind in ("done", "cancelled"):
            if view is not None:
                answer = str(data.get("answer", "")) if kind == "done" else "Cancelled."
                if kind == "done" and data.get("reasoning"):
                    view.set_reasoning(str(data["reasoning"]))  # the model's raw stream -> its parsed reasoning
                view.set_answer(answer)
                self.transcript.append(("assistant", answer))
            self.status.setText("Cancelled." if kind == "cancelled" else "Ready.")
            self._active_round = 0
            self._set_running(False)
            self.refresh_context()
        bar = self.scroll.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _select(self, entity_id: str) -> None:
        """A chip was clicked: it is now the entity the Refine button corrects (and the module centres on it)."""
        self.selected_entity = entity_id
        self.refresh_context()
        if self._on_select is not None:
            self._on_select(entity_id)

    def _add_message(self, who: str, text: str, note: str = "") -> None:
        Q = self.qt
        html = f"<b>{_escape(who)}:</b> {_escape(text)}"
        if note:
            html += f"<br><span style='color:#2a5d8f; font-size:11px;'>{_escape(note)}</span>"
        label = Q.QLabel(html, self.messages)
        label.setWordWrap(True)
        self.messages_layout.insertWidget(self.messages_layout.count() - 1, label)
        self._widgets.append(label)
        self.transcript.append((who.lower(), text))

    def _add_round_view(self) -> RoundView:
        view = RoundView(self.qt, self.messages)
        self.messages_layout.insertWidget(self.messages_layout.count() - 1, view.frame)
        self._widgets.append(view.frame)
        return view

    # -- restoring a saved conversation ------------------------------------------------------------------------------
    def restore(self, session: dict | str) -> None:
        """Rebuild the chat from a saved session: ``session.json`` of a session folder or of the server's session
        archive (docs/session-format.md), as a dict or JSON text. Questions, reasoning (collapsed), answers and one chip per
        entity that still exists, with its review status, under the last round that made or redid it. Nothing is
        asked of the backend, so this works after the server's session expired."""
        data = json.loads(session) if isinstance(session, str) else session
        if not isinstance(data, dict) or not isinstance(data.get("rounds", []), list):
            raise ValueError("a saved conversation is a session.json object with a 'rounds' list.")
        if self.busy:
            self.cancel()
        for widget in self._widgets:
            self.messages_layout.removeWidget(widget)
            widget.setParent(None)
            widget.deleteLater()
        self._widgets, self.chips, self.transcript, self._round_view = [], {}, [], None
        self.selected_entity = None
        entities = {str(e["id"]): e for e in data.get("entities", []) if isinstance(e, dict) and "id" in e}
        last_round = {}
        for n, rnd in enumerate(data.get("rounds", [])):
            for target in rnd.get("targets") or []:
                if target.get("entity_id") in entities:
                    last_round[target["entity_id"]] = n
        names = {eid: entity_name(e) for eid, e in entities.items()}
        for n, rnd in enumerate(data.get("rounds", [])):
            self._add_message("You", str(rnd.get("question", "")))
            view = self._add_round_view()
            view.set_reasoning(str(rnd.get("reasoning") or ""))
            answer = answer_text(rnd.get("targets") or [], rnd.get("clarification"), names)
            view.set_answer(answer)
            self.transcript.append(("assistant", answer))
            for target in rnd.get("targets") or []:
                eid = target.get("entity_id")
                if eid in entities and last_round.get(eid) == n and eid not in self.chips:
                    entity = {**entities[eid], "name": names[eid]}
                    self.chips[eid] = view.add_chip(EntityChip.from_event(entity), self._select, self.review)
        self.status.setText(
            f"Restored {len(data.get('rounds', []))} round(s)." + ("" if self.backend else " Not connected.")
        )

    def _set_running(self, running: bool) -> None:
        self.send_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.progress.setValue(0)
        self.progress.setVisible(running)


def _quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        pass


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")


__all__ = [  # the panel, and the names it re-exports from chat_events (what backends and tests import from here)
    "CONTEXT_EVERY",
    "EVENT_KINDS",
    "POLL_MS",
    "QT_NAMES",
    "ChatBackend",
    "ChatPanel",
    "EntityChip",
    "RoundEvent",
    "answer_text",
    "describe_context",
    "describe_progress",
    "qt_namespace",
]
