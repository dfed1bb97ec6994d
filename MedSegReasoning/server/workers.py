"""One execution slot per model, a FIFO queue in front of it, and the round context that waits in it.

Why: a model instance is not thread-safe (a segmenter keeps the image set by ``set_image``; a GPU holds one batch),
and model calls must never run on the event loop. So every call to a model is a *job* for that model's worker:
at most one runs at a time (``threads`` for a batching backend), the others wait in arrival order. Rounds submit one
call at a time (a slice to segment, a reasoner step), so with several sessions busy the model serves them in turn
at the granularity of single calls: a round that propagates through 200 slices does not hold the model while a
colleague's one-slice question waits. While a job waits, its round sees its queue position (0 = running now) and
can be cancelled without ever reaching the model. A job that finds the model idle runs at once on the caller's
thread (no hand-over to the worker thread and back: two thread wake-ups saved per call).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..wire.errors import MedSegError, ModelError
from .errors import RoundCancelled

T = TypeVar("T")

_POLL_S = 0.1  # how often a waiting round re-checks cancellation and its queue position


@dataclass
class RoundContext:
    """What the model calls of one round share: its cancel flag, where its events go, the model time it used."""

    cancel: threading.Event = field(default_factory=threading.Event)
    on_queue: Callable[[str, int], None] | None = None  # (worker name, position); 0 = running
    model_seconds: float = 0.0
    model_calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise RoundCancelled("the round was cancelled; nothing of it was kept.")

    def add_model_time(self, seconds: float) -> None:
        with self._lock:
            self.model_seconds += seconds
            self.model_calls += 1


class _Job(Generic[T]):
    __slots__ = ("fn", "ctx", "done", "result", "error", "started")

    def __init__(self, fn: Callable[[], T], ctx: RoundContext | None) -> None:
        self.fn = fn
        self.ctx = ctx
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = False


class ModelWorker:
    """``threads`` execution slots (1 for an in-process model) with a FIFO queue in front of them.

    When a slot is free and nobody waits, the job runs at once on the calling round thread: handing it to a worker
    thread and back costs two thread wake-ups (about 0.4 ms per call on a busy 2-core machine, 10 ms over a round's
    25 calls) and buys nothing. Otherwise the job queues, and the worker thread runs it when its turn comes. Either
    way at most ``threads`` jobs run at once and waiting jobs are served in arrival order.

    ``state`` is scratch space of whoever holds a slot (e.g. which image the segmenter currently holds).
    """

    def __init__(self, name: str, threads: int = 1) -> None:
        self.name = name
        self.state: dict[str, Any] = {}
        self._slots = max(1, threads)
        self._queue: deque[_Job] = deque()
        self._running = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"medseg-{name}-worker-{n}", daemon=True)
            for n in range(self._slots)
        ]
        for thread in self._threads:
            thread.start()

    # -- the caller's side ----------------------------------------------------------------------------------------
    def call(self, fn: Callable[[], T], ctx: RoundContext | None = None) -> T:
        """Run ``fn`` in its turn and return its result (or raise its error); ``RoundCancelled`` if cancelled first."""
        if ctx is not None:
            ctx.check_cancel()
        job: _Job[T] = _Job(fn, ctx)
        with self._cond:
            if self._stopped:
                raise RoundCancelled("the server is stopping; the round was not finished.")
            inline = not self._queue and self._running < self._slots
            if inline:
                job.started = True
                self._running += 1
            else:
                self._queue.append(job)
                position = len(self._queue) + self._running - 1
                self._cond.notify_all()
        if inline:
            self._execute(job)
        else:
            self._wait(job, position)
        if job.error is not None:
            raise job.error
        return job.result

    def _wait(self, job: _Job, position: int) -> None:
        ctx = job.ctx
        last_position = -1
        if ctx is not None and ctx.on_queue is not None and position > 0:
            ctx.on_queue(self.name, position)
            last_position = position
        while not job.done.wait(_POLL_S):
            if ctx is None:
                continue
            if ctx.cancel.is_set() and self._withdraw(job):
                ctx.check_cancel()
            position = self.position(job)
            if ctx.on_queue is not None and position != last_position:
                ctx.on_queue(self.name, position)
                last_position = position

    def position(self, job: _Job) -> int:
        """0 while ``job`` runs; otherwise how many jobs run or wait before it."""
        with self._cond:
            if job.started:
                return 0
            try:
                return self._queue.index(job) + self._running
            except ValueError:
                return 0

    @property
    def queued(self) -> int:
        """Jobs waiting plus the one(s) running: what ``/v1/health`` shows."""
        with self._cond:
            return len(self._queue) + self._running

    def stop(self) -> None:
        """Refuse new jobs and cancel the waiting ones (a running model call finishes on its own)."""
        with self._cond:
            self._stopped = True
            while self._queue:
                job = self._queue.popleft()
                job.error = RoundCancelled("the server is stopping; the round was not finished.")
                job.done.set()
            self._cond.notify_all()

    def _withdraw(self, job: _Job) -> bool:
        with self._cond:
            if job.started:
                return False
            try:
                self._queue.remove(job)
            except ValueError:
                return False
            return True

    # -- running a job --------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not (self._queue and self._running < self._slots):
                    self._cond.wait()
                if not self._queue:
                    return  # stopped
                job = self._queue.popleft()
                job.started = True
                self._running += 1
            self._execute(job)

    def _execute(self, job: _Job) -> None:
        """Run one job in a slot the caller already took; free the slot and wake the next job."""
        t0 = time.perf_counter()
        try:
            if job.ctx is not None and job.ctx.cancel.is_set():
                raise RoundCancelled("the round was cancelled; nothing of it was kept.")
            job.result = job.fn()
        except MedSegError as exc:  # the engine's own, already a sentence for the user
            job.error = exc
        except BaseException as exc:  # a model crashed: handed to the caller as a model failure; the server goes on
            job.error = ModelError(f"the {self.name} failed ({type(exc).__name__}: {exc})")
            job.error.__cause__ = exc
        finally:
            if job.ctx is not None:
                job.ctx.add_model_time(time.perf_counter() - t0)
            with self._cond:
                self._running -= 1
                self._cond.notify_all()
            job.done.set()
