"""A round over HTTP: validated request -> round thread -> events on the client's stream.

The round runs on its own thread, exactly as in-process (``dialogue.ask.ask_round``, the one round of every front
end: reasoner, segmentation, judgment and correction with the reasoner asked again, entities, save), with the models
behind their queues (``engine.py``). Everything it has to say goes through ``RoundRun.emit`` onto an asyncio
queue that the streaming response drains, in this order (docs/wire-format.md):

    progress (stage "started", the round id) -> reasoning* / progress* -> target* -> done
                                          or -> ... -> error -> done (status "failed")

Why a thread and not the worker: the round's own work (rendering views, judging masks, saving the session) is
cheap and must not hold a model's queue, while the model calls are the only things that must be serialised.

A round that fails or is cancelled is undone by ``run_round`` itself (``Session.abort_round``), so the session and
its saved folder are exactly as before the question.

A correction of an existing entity (``refine.py``: ``POST …/entities/{id}/refine``) is a round of the same kind: the
same thread, events, queues and undo; only its request checks and its work (``dialogue.refine.refine_entity``) differ.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..console import split_slice_stage
from ..dialogue.ask import RoundIO, ask_round
from ..dialogue.records import Round
from ..dialogue.rounds import TargetSpec
from ..pipeline import VoxelPrompt, check_prompt
from ..reasoning.answer import ReasoningCancelled
from ..reasoning.views import CurrentView
from ..volume.core import Volume
from ..volume.windowing import Window, default_window, window_by_name
from ..wire.errors import InputError
from .audit import AuditLog
from .engine import Engine, QueuedReasoner, QueuedSegmenter, set_current_round
from .errors import ApiError, RoundCancelled, bad_request, conflict, from_engine_error
from .sessions import ActiveRound, ServerSession
from .wire import entity_json
from .workers import ModelWorker, RoundContext

log = logging.getLogger(__name__)

_TEXT_EVERY_S = 0.05  # reasoning text is sent at most this often (what arrives meanwhile goes in one event)
_PROGRESS_EVERY_S = 0.2  # at most this often a "segmenting" progress event (a 300-slice propagation is 300 calls)
# how much of the round's progress bar each stage fills
_REASONING_END = 0.3
_SEGMENTING_END = 0.95


@dataclass(frozen=True)
class RoundRequest:
    """A validated round request (the HTTP body after ``parse_round_request``)."""

    question: str
    prompts: tuple[TargetSpec, ...]
    current_view: CurrentView | None
    window: str | None
    propagate: bool


def parse_round_request(body: Any, *, max_chars: int, max_prompts: int) -> RoundRequest:
    """Check the body of ``POST .../rounds``; prompts are in voxel indices of their plane (``(i, j)`` on axial
    slice ``k`` by default; ``(i, k)`` on coronal plane ``j``, ``(j, k)`` on sagittal plane ``i``)."""
    question = body.question.strip() if body.question else ""
    if len(question) > max_chars:
        raise bad_request(
            "question_too_long", f"the question has {len(question)} characters; the limit is {max_chars}."
        )
    if not question and not body.prompts:
        raise bad_request("empty_round", "a round needs a question, or prompts (boxes/points) to segment, or both.")
    if len(body.prompts) > max_prompts:
        raise bad_request("too_many_prompts", f"a round takes at most {max_prompts} prompts, got {len(body.prompts)}.")
    targets = []
    for n, p in enumerate(body.prompts, 1):
        labels = list(p.point_labels) if p.point_labels is not None else [1] * len(p.points)
        if len(labels) != len(p.points):
            raise bad_request(
                "invalid_prompt", f"prompt {n} has {len(p.points)} point(s) but {len(labels)} point label(s)."
            )
        if any(label not in (0, 1) for label in labels):
            raise bad_request("invalid_prompt", f"prompt {n}: point labels are 1 (foreground) or 0 (background).")
        if p.box is None and 1 not in labels:
            raise bad_request("invalid_prompt", f"prompt {n} needs a box or at least one foreground point.")
        prompt = VoxelPrompt(
            k=p.slice,
            box=tuple(p.box) if p.box is not None else None,
            points=tuple((int(x), int(y)) for x, y in p.points),
            labels=tuple(labels),
            orientation=p.orientation,
        )
        label = (p.label or question or f"Segment {n}").strip()[:200]
        targets.append(TargetSpec(label=label, prompt=prompt, ref=p.ref, propagate=body.propagate))
    view = None
    if body.current_view is not None:
        try:
            view = CurrentView(body.current_view.orientation, body.current_view.slice)
        except (InputError, ValueError) as exc:
            raise bad_request("invalid_view", f"current_view: {exc}") from None
    return RoundRequest(question, tuple(targets), view, body.window, body.propagate)


def named_window(name: str | None, volume: Volume) -> Window | None:
    """A preset or ``LEVEL,WIDTH`` window, now: instant, and a bad name answers 400 before the stream starts. None
    for the percentile (default) window, which reads the voxels and so is computed on the round's thread."""
    key = (name or "").strip().lower()
    if key and key not in ("percentile", "default"):
        return window_by_name(key, volume)
    return None


class RoundRun:
    """One round: its thread, its event queue, its cancel flag. ``prepare``/``check_request`` (before the stream)
    and ``execute`` (on the round's thread) are what another kind of round (``refine.RefineRun``) replaces."""

    def __init__(
        self,
        session: ServerSession,
        request: Any,  # a RoundRequest, or another kind's request with a ``window`` (refine.RefineRequest)
        engine: Engine,
        workers: dict[str, ModelWorker],
        audit: AuditLog,
        token: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.session = session
        self.request = request
        self.engine = engine
        self.workers = workers
        self.audit = audit
        self.token = token
        self.loop = loop
        self.id = str(uuid.uuid4())
        self.events: asyncio.Queue[tuple[str, dict] | None] = asyncio.Queue()
        self.ctx = RoundContext(on_queue=self._on_queue)
        self.finished = threading.Event()
        self.status = "running"
        self.index = 0
        self.window: Window | None = None
        self._last_progress = 0.0
        self._segment_calls = 0
        self._propagating = False
        self._fraction = 0.0
        self._text: list[str] = []
        self._text_sent = 0.0
        self._text_lock = threading.Lock()

    # -- starting -------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Checks that answer with a real HTTP status (before the stream starts). Caller holds ``session.lock``.

        Cheap enough for the event loop: state checks, prompt bounds, a named window; nothing reads the voxels.
        """
        s = self.session
        if s.dialogue is None or s.volume is None:
            what = "has no volume yet" if s.dialogue is None else "needs its volume sent again (the server restarted)"
            raise conflict(
                "volume_missing", f"this session {what}: send it with PUT /v1/sessions/{{id}}/volume, then ask again."
            )
        if s.active is not None:
            raise conflict(
                "round_running",
                f"round {s.active.index} of this session is still running: wait for it, or cancel it first.",
            )
        self.check_request()
        self.index = len(s.dialogue.rounds) + 1
        s.active = ActiveRound(self.id, self.index, self.ctx.cancel)

    def check_request(self) -> None:
        """The request's own checks against the session (``prepare`` has checked its state): a reasoner for a bare
        question, the window's name, the prompts' bounds. A subclass for another kind of round replaces this."""
        s = self.session
        assert s.volume is not None  # checked by ``prepare``
        if not self.request.prompts and not self.engine.has_reasoner:
            raise ApiError(
                503,
                "reasoner_missing",
                "this server runs without a reasoner, so it cannot answer a question on its own: give a box or points "
                "with the question, or start the server with --reasoner.",
            )
        try:
            self.window = named_window(self.request.window, s.volume)
            for target in self.request.prompts:
                check_prompt(s.volume, target.prompt)
        except InputError as exc:
            raise from_engine_error(exc) from None

    def start(self) -> None:
        self.emit("progress", {"stage": "started", "fraction": 0.0, "round": self.index, "round_id": self.id})
        threading.Thread(target=self._run, name=f"medseg-round-{self.id[:8]}", daemon=True).start()

    def cancel(self, reason: str) -> None:
        if not self.finished.is_set() and not self.ctx.cancel.is_set():
            self.cancel_reason = reason
            self.ctx.cancel.set()

    cancel_reason = ""
    on_finished: Callable[[], object] | None = None

    # -- events (thread-safe) ---------------------------------------------------------------------------------------
    def emit(self, event: str, data: dict) -> None:
        if event != "reasoning":
            self._flush_text()  # text before the event that follows it: order on the wire = order of events
        self._put(event, data)

    def _on_text(self, text: str) -> None:
        """Reasoner text, passed on at most every ``_TEXT_EVERY_S``: a model streams a token at a time, and one
        event per token costs the server a wake-up each while a reader cannot tell 50 ms apart."""
        with self._text_lock:
            self._text.append(text)
            due = time.monotonic() - self._text_sent >= _TEXT_EVERY_S
        if due:
            self._flush_text()

    def _flush_text(self) -> None:
        with self._text_lock:
            text, self._text = "".join(self._text), []
            self._text_sent = time.monotonic()
        if text:
            self._put("reasoning", {"text": text})

    def _put(self, event: str, data: dict) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (event, data))
        except RuntimeError:  # the event loop is gone (server stopping): nobody is listening any more
            pass

    def _progress(self, stage: str, fraction: float, **extra: Any) -> None:
        self._fraction = max(self._fraction, min(fraction, 1.0))
        self.emit("progress", {"stage": stage, "fraction": round(self._fraction, 4), **extra})

    def _on_queue(self, worker: str, position: int) -> None:
        if position > 0:
            self._progress("queued", self._fraction, model=worker, queue_position=position)

    def _on_segment_call(self) -> None:
        self._segment_calls += 1
        if self._propagating:  # the per-slice stage events say more than "segmenting" would
            return
        now = time.monotonic()
        if now - self._last_progress >= _PROGRESS_EVERY_S:
            self._last_progress = now
            self._progress("segmenting", self._fraction, segmenter_calls=self._segment_calls)

    # -- the round thread -----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        s = self.session
        assert s.dialogue is not None and s.volume is not None
        set_current_round(self.ctx)
        t0 = time.perf_counter()
        models = {"segmenter": self.engine.segmenter.identity.name}
        outcome, code, done = "failed", None, None
        try:
            if self.window is None:  # percentile windows read the volume: here, not on the event loop
                name = self.request.window
                self.window = window_by_name(name, s.volume) if name else default_window(s.volume)
            rnd = self.execute(models)
            for record in rnd.targets:
                if record.entity_id and record.entity_id in s.dialogue.entities:
                    entity = s.dialogue.entities[record.entity_id]
                    self.emit(
                        "target",
                        {"round": rnd.index, "status": record.status, "entity": entity_json(entity, with_mask=True)},
                    )
            outcome = "clarification" if rnd.clarification else "ok"
            done = self._done_data(outcome, t0, rnd=rnd)
        except (RoundCancelled, ReasoningCancelled):
            outcome = "cancelled"
            done = self._done_data("cancelled", t0, reason=self.cancel_reason or "cancelled")
        except BaseException as exc:  # every failure becomes an error event; the server keeps serving
            error = from_engine_error(exc, "the round")
            code = error.code
            self.emit("error", error.to_dict())
        finally:
            set_current_round(None)
            s.active = None  # before "done" goes out: a client may ask its next question the moment it reads it
            s.touch()
            self.status = outcome
            self.audit.record(
                "round.end",
                self.token,
                session=s.id,
                round=self.index,
                round_id=self.id,
                outcome=outcome,
                code=code,
                ms=round((time.perf_counter() - t0) * 1000),
                **models,
            )
            self.finished.set()
            if self.on_finished is not None:
                self.on_finished()
            self.emit("done", done if done is not None else self._done_data("failed", t0))
            self.emit_end()

    def execute(self, models: dict[str, str]) -> Round:
        """The round's work on its thread: ``dialogue.ask.ask_round`` with the server's I/O (events, cancel flag,
        queued models). ``models`` collects the names of the models used (for the audit log). A subclass replaces
        this."""
        s = self.session
        assert s.dialogue is not None and s.volume is not None and self.window is not None  # prepare() and _run()
        reasoner = None
        if not self.request.prompts:
            if s.reasoner is None:
                assert self.engine.reasoner_factory is not None  # ``check_request``: no prompts needs a reasoner
                s.reasoner = self.engine.reasoner_factory()
            reasoner = QueuedReasoner(self.workers["reasoner"], s.reasoner, self.ctx)
            models["reasoner"] = reasoner.identity.name
        self.audit.record("round.start", self.token, session=s.id, round=self.index, round_id=self.id, **models)
        with s.lock:
            return ask_round(
                s.dialogue,
                s.volume,
                self.queued_segmenter(),
                self.window,
                self.request.question or "Segment the given prompts.",
                reasoner=reasoner,
                prompts=self.request.prompts,
                propagate=self.request.propagate,
                strategy=self.engine.strategy,
                current_view=self.request.current_view,
                encode_ahead=self.engine.encode_ahead,
                encode_owner=self.id,
                config=self.engine.round_config,
                io=RoundIO(
                    on_text=self._on_text,
                    on_reasoning=self._on_reasoning,
                    progress=self._on_target_progress,
                    cancel=self.ctx.cancel,
                    on_warning=lambda message: log.info("round %s: %s", self.id, message),
                ),
            ).round

    def queued_segmenter(self) -> QueuedSegmenter:
        """The engine's segmenter behind its worker queue, with this round's cancel flag and progress counter."""
        return QueuedSegmenter(self.workers["segmenter"], self.engine.segmenter, self.ctx, self._on_segment_call)

    def emit_end(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, None)
        except RuntimeError:
            pass

    def _on_reasoning(self, stage: str) -> None:
        """The reasoner's share of the progress bar: a "reasoning" event when it is asked, "segmenting" after."""
        if stage == "started":
            self._progress("reasoning", 0.02)
        else:
            self._progress("segmenting", _REASONING_END)

    def _on_target_progress(self, stage: str, fraction: float) -> None:
        """``run_round``'s per-target stages and per-slice propagation ("...: propagating slice 12 of 40", at most
        every ``_PROGRESS_EVERY_S`` but always its last slice); its final "done" is where the round is saved."""
        start = _REASONING_END if not self.request.prompts else 0.0
        _, slices = split_slice_stage(stage)
        self._propagating = slices is not None and slices[0] < slices[1]
        now = time.monotonic()
        if self._propagating and now - self._last_progress < _PROGRESS_EVERY_S:
            return
        self._last_progress = now
        self._progress("saving" if stage == "done" else stage, start + (_SEGMENTING_END - start) * fraction)

    def _done_data(self, status: str, t0: float, rnd=None, reason: str = "") -> dict:
        data: dict[str, Any] = {
            "status": status,
            "round": self.index if rnd is not None else None,
            "round_id": self.id,
            "reasoning": rnd.reasoning if rnd is not None else "",
            "clarification": rnd.clarification if rnd is not None else None,
            "targets": [
                {"label": t.label, "status": t.status, "entity_id": t.entity_id, "error": t.error or None}
                for t in (rnd.targets if rnd is not None else [])
            ],
            "timings": {
                "total_s": round(time.perf_counter() - t0, 4),
                "model_s": round(self.ctx.model_seconds, 4),
                "model_calls": self.ctx.model_calls,
            },
        }
        if reason:
            data["reason"] = reason
        return data
