"""Encode slices while the reasoner thinks, so that the round's own ``set_image`` finds their embeddings cached.

Why: a reasoner takes seconds to minutes per question while the segmenter sits idle; then the round encodes its key
slice (0.6-2 s on two CPU cores) before the first mask appears. The slices the reasoner is shown are the likely key
slices (the montage's candidates; the refine step shows the key slice itself), and propagation goes on through their
neighbours. Encoding those ahead moves the wait into the reasoner's time: when the answer names one of them, its
first mask needs only the decoder.

How:

- ``EncodeAhead(segmenter)`` owns one daemon thread fed with ``(volume, window, slices)`` requests. The newest
  request goes first (the refine step's slice before the montage's candidates), its own slices before their
  neighbours (+-1, then +-2); at most ``max_pending`` slices wait, the oldest are dropped.
- Each slice is rendered as ``propagation.segment_slice`` renders it (``slice_input``: the same image, the same cache
  key, including the square resampling of anisotropic planes) and handed to the segmenter's ``prefetch``, which
  puts its embedding in the segmenter's caches (memory and the disk store) without touching the current image.
  ``prefetch`` runs under the segmenter's ``SegmenterLock``: only while no ``set_image``/``predict`` runs or waits,
  and not until the segmenter has been idle ``min_idle_s``; a foreground call that arrives interrupts it
  (OpenVINO, ONNX Runtime), and the slice is queued again.
- ``cancel(owner)`` drops one round's pending slices (or all) and interrupts a running one of them. Front ends wrap
  a reasoning run in ``encoding_ahead``, which cancels when the answer is in: the round's own segmentation never
  shares the CPU with encoding ahead.
- Nothing here can fail a round: an error (rendering, the encoder) is logged and counted, and costs only that
  slice, which the round encodes itself if it needs it.

Where the reasoner computes on the same CPU (an in-process model without a GPU), encoding ahead would slow it down as
much as it saves: ``worth_encoding_ahead`` says when to use it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..propagation import segmenter_input, slice_cache_key
from ..volume.core import Volume, plane_volume
from ..volume.windowing import Window, render_slice
from ._embedding import Interrupt

log = logging.getLogger(__name__)

DEFAULT_NEIGHBOURS = 2
DEFAULT_MAX_PENDING = 64
DEFAULT_MIN_IDLE_S = 0.2
"""A background encoder call starts only after the segmenter has been idle this long: a round that is segmenting
(calls milliseconds apart) is never slowed by encoding ahead, even one of another session."""


def slice_input(volume: Volume, window: Window, orientation: str, index: int) -> tuple[np.ndarray, tuple]:
    """The image a round's segmenter sees for slice ``index`` of ``orientation``, and its embedding cache key.

    The same steps as ``pipeline.PlaneView`` + ``propagation.segment_slice`` (re-sliced plane with superior up, window,
    square pixels, ``slice_cache_key`` plus ``("square", h, w)`` when resampled), so that ``prefetch`` fills exactly the
    entry the round's ``set_image`` looks up; a test holds the two together.
    """
    plane = volume if orientation == "axial" else plane_volume(volume, orientation, superior_up=True)
    image = render_slice(plane, index, window)
    si, sj, _ = plane.geometry.spacing
    seen = segmenter_input(image, si, sj)
    key = slice_cache_key(plane, index, window)
    if seen.resampled:
        key = (*key, "square", seen.image.shape[0], seen.image.shape[1])
    return seen.image, key


def worth_encoding_ahead(reasoner_backend: str, reasoner_device: str | None) -> bool:
    """False where the reasoner is an in-process model on the CPU: encoding ahead would take its cores."""
    device = (reasoner_device or "cpu").strip().lower()
    return not (reasoner_backend == "hf" and device.startswith("cpu"))


@dataclass
class EncodeAheadStats:
    """What the worker did (counts, never times): tests and benchmarks read them."""

    requested: int = 0
    cached: int = 0
    """Slices whose embedding is in the cache thanks to the worker (encoded now, or found already there)."""
    interrupted: int = 0
    failed: int = 0
    dropped: int = 0
    """Pending slices given up: cancelled, or pushed out by newer requests beyond ``max_pending``."""


@dataclass(eq=False)
class _Job:
    volume: Volume
    window: Window
    orientation: str
    index: int
    owner: Hashable
    identity: tuple
    cancelled: bool = field(default=False)


class EncodeAhead:
    """A background worker that encodes slices into ``segmenter``'s cache (see the module docstring); thread-safe."""

    def __init__(
        self,
        segmenter: Any,
        *,
        neighbours: int = DEFAULT_NEIGHBOURS,
        max_pending: int = DEFAULT_MAX_PENDING,
        min_idle_s: float = DEFAULT_MIN_IDLE_S,
    ) -> None:
        self.segmenter = segmenter
        self.neighbours = max(0, int(neighbours))
        self.max_pending = max(1, int(max_pending))
        self.min_idle_s = float(min_idle_s)
        self.stats = EncodeAheadStats()
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._running: _Job | None = None
        self._interrupt: Interrupt | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def supported(self) -> bool:
        """Whether the segmenter can encode without changing its current image (``prefetch``); else submits do nothing."""
        return callable(getattr(self.segmenter, "prefetch", None))

    # -- requests -------------------------------------------------------------------------------------------------
    def submit(
        self,
        volume: Volume,
        window: Window,
        slices: Iterable[int],
        *,
        orientation: str = "axial",
        owner: Hashable = None,
    ) -> int:
        """Queue ``slices`` (then their neighbours) ahead of everything queued before; returns how many were queued."""
        return self._submit(volume, window, [(orientation, int(k)) for k in slices], owner)

    def submit_views(self, volume: Volume, window: Window, views: Any, *, owner: Hashable = None) -> int:
        """Queue the slices a reasoner is shown: every tile of a ``reasoning.views.ViewSet`` (any orientation)."""
        shown = [(tile.orientation, int(tile.slice)) for view in views.views for tile in view.tiles]
        return self._submit(volume, window, shown, owner)

    def cancel(self, owner: Hashable = None) -> None:
        """Drop the pending slices of ``owner`` (all with ``None``) and interrupt its running one."""
        with self._cond:
            kept = []
            for job in self._pending:
                if owner is None or job.owner == owner:
                    job.cancelled = True
                    self.stats.dropped += 1
                else:
                    kept.append(job)
            self._pending = kept
            running, interrupt = self._running, self._interrupt
            if running is not None and (owner is None or running.owner == owner):
                running.cancelled = True
                if interrupt is not None:
                    interrupt.set()
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending or running; ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self._running is not None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Cancel everything and end the thread (waiting at most ``timeout`` seconds for a running call to stop)."""
        with self._cond:
            self._closed = True
        self.cancel()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> EncodeAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------------------
    def _submit(self, volume: Volume, window: Window, shown: list[tuple[str, int]], owner: Hashable) -> int:
        if not shown or not self.supported:
            return 0
        try:
            jobs = self._jobs(volume, window, shown, owner)
        except Exception:  # a view this code does not understand must not fail the reasoner's step
            log.warning("encoding ahead: could not plan slices %s", shown, exc_info=True)
            return 0
        with self._cond:
            if self._closed:
                return 0
            fresh = {job.identity for job in jobs}
            if self._running is not None and not self._running.cancelled:
                fresh.add(self._running.identity)
            older = [job for job in self._pending if job.identity not in fresh]
            queue = [job for job in jobs if self._running is None or job.identity != self._running.identity] + older
            for job in queue[self.max_pending :]:
                job.cancelled = True
                self.stats.dropped += 1
            self._pending = queue[: self.max_pending]
            self.stats.requested += len(jobs)
            self._start()
            self._cond.notify_all()
        return len(jobs)

    def _jobs(self, volume: Volume, window: Window, shown: list[tuple[str, int]], owner: Hashable) -> list[_Job]:
        """The shown slices, then their neighbours by distance, each once, inside the volume."""
        counts = {"axial": volume.shape[0], "coronal": volume.shape[1], "sagittal": volume.shape[2]}
        order: list[tuple[str, int]] = []
        for distance in range(self.neighbours + 1):
            for orientation, index in shown:
                for k in {index - distance, index + distance}:
                    if 0 <= k < counts[orientation] and (orientation, k) not in order:
                        order.append((orientation, k))
        base = volume.content_hash()
        return [
            _Job(volume, window, orientation, k, owner, (base, orientation, k, window.key)) for orientation, k in order
        ]

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="medseg-encode-ahead", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    self._pending.clear()
                    self._cond.notify_all()
                    return
                job = self._pending.pop(0)
                interrupt = Interrupt()
                self._running, self._interrupt = job, interrupt
            outcome = self._encode(job, interrupt)
            with self._cond:
                self._running, self._interrupt = None, None
                if outcome == "cached":
                    self.stats.cached += 1
                elif outcome == "interrupted":
                    self.stats.interrupted += 1
                    if not job.cancelled and not self._closed:
                        self._pending.insert(
                            0, job
                        )  # a foreground call needed the segmenter: this slice is still wanted
                else:
                    self.stats.failed += 1
                self._cond.notify_all()

    def _encode(self, job: _Job, interrupt: Interrupt) -> str:
        """``cached``, ``interrupted`` or ``failed``; never raises (a failure is logged, the round goes on)."""
        try:
            image, key = slice_input(job.volume, job.window, job.orientation, job.index)
            if interrupt.is_set():
                return "interrupted"
            done = self.segmenter.prefetch(image, key, interrupt, min_idle_s=self.min_idle_s)
            return "cached" if done else "interrupted"
        except Exception as exc:
            log.warning(
                "encoding %s slice %d ahead failed (%s: %s); the round encodes it itself if it needs it",
                job.orientation,
                job.index,
                type(exc).__name__,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            return "failed"


ViewsCallback = Callable[[Any], None]


@contextmanager
def encoding_ahead(
    ahead: EncodeAhead | None, volume: Volume, window: Window, owner: Hashable = None
) -> Iterator[ViewsCallback | None]:
    """The ``on_views`` callback of one reasoning run (``reasoning.run_reasoning``), or ``None`` without a worker.

    Each view set the reasoner is shown is queued; when the block ends (the answer, an error, a cancel) what is still
    pending for ``owner`` is dropped and a running call interrupted, so the round's own segmentation has the CPU.
    """
    if ahead is None:
        yield None
        return

    def on_views(views: Any) -> None:
        ahead.submit_views(volume, window, views, owner=owner)

    try:
        yield on_views
    finally:
        ahead.cancel(owner)
