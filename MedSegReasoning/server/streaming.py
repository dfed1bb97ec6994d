"""A round over the wire: ``launch`` checks, prepares and starts a round (a question or a refine) and answers with
its Server-Sent Events stream, which ``stream`` drains; a client that goes away cancels the round."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..wire.headers import ROUND_ID_HEADER
from .errors import conflict
from .rounds import RoundRun
from .runtime import Runtime
from .sessions import ServerSession, locked
from .wire import HEARTBEAT, sse


async def launch(rt: Runtime, session: ServerSession, kind: type[RoundRun], request: Any, token: str) -> Response:
    """Prepare a round of ``kind`` (a question, or a refine) and stream it: one path, so both are checked, queued,
    cancelled and undone alike. Checks that fail answer with their own status before the stream starts."""
    active = session.active  # read once: ``session.busy`` is ``active is not None``
    if active is not None:
        raise conflict(
            "round_running",
            f"round {active.index} of this session is still running: wait for it, or cancel it first.",
        )
    run = kind(session, request, rt.engine, rt.workers, rt.audit, token, asyncio.get_running_loop())
    if session.lock.acquire(blocking=False):  # usual case: prepare (cheap) right here, no thread hop
        try:
            run.prepare()
        finally:
            session.lock.release()
    else:  # an entity edit is being saved: wait for it on a worker thread
        await run_in_threadpool(locked, session, run.prepare)
    rt.runs[run.id] = run
    run.on_finished = lambda: rt.runs.pop(run.id, None)
    run.start()
    return StreamingResponse(
        stream(rt, run),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", ROUND_ID_HEADER: run.id},
    )


async def stream(rt: Runtime, run: RoundRun) -> AsyncIterator[bytes]:
    """Drain the round's events to the client; a client that goes away cancels the round."""
    event_id = 0
    try:
        while True:
            try:
                item = await asyncio.wait_for(run.events.get(), timeout=rt.config.heartbeat_s)
            except asyncio.TimeoutError:
                yield HEARTBEAT
                continue
            chunk = b""
            while item is not None:  # send what has piled up in one write: fewer wake-ups and syscalls per round
                event_id += 1
                chunk += sse(item[0], item[1], event_id)
                if run.events.empty():
                    break
                item = run.events.get_nowait()
            if chunk:
                yield chunk
            if item is None:
                break
    finally:
        if not run.finished.is_set():
            run.cancel("the client disconnected")
            rt.audit.record("round.cancel", run.token, session=run.session.id, round_id=run.id, reason="disconnect")
