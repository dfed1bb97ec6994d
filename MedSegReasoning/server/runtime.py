"""What the routes share (``Runtime``): config, engine, model workers, sessions, audit log and the running rounds.

Built once by ``create_app``; the routes (``routes/``) receive it. Also here: the idle-session sweeper the app's
lifespan runs, and the two lookups every route starts with (the caller's token, the caller's session).
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from .audit import AuditLog
from .auth import TokenStore
from .config import ServerConfig
from .engine import Engine, queued_terminology
from .rounds import RoundRun
from .sessions import ServerSession, SessionStore
from .wire import UploadBudget
from .workers import ModelWorker


class Runtime:
    """What the routes share: config, engine, workers, sessions, audit, running rounds."""

    def __init__(self, config: ServerConfig, engine: Engine, tokens: TokenStore) -> None:
        self.config = config
        self.engine = engine
        self.tokens = tokens
        state = config.resolved_state_dir()
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.audit = AuditLog(config.audit_path)
        self.workers = {
            "segmenter": ModelWorker("segmenter"),
            "reasoner": ModelWorker("reasoner", max(1, config.reasoner_workers)),
            "terminology": ModelWorker("terminology"),
        }
        terminology = engine.terminology or queued_terminology(self.workers["terminology"])
        self.store = SessionStore(
            config.sessions_dir,
            config.max_sessions,
            config.session_idle_s,
            config.volume_cache_bytes,
            terminology,
            max_per_owner=config.max_sessions_per_token,
            evict_idle_s=config.evict_idle_s,
            on_evict=lambda s: self.audit.record("session.evict", s.owner, session=s.id),
        )
        self.runs: dict[str, RoundRun] = {}
        self.upload_budget = UploadBudget(config.upload_budget_bytes)

    def shutdown(self) -> None:
        for run in list(self.runs.values()):
            run.cancel("the server is stopping")
        for worker in self.workers.values():
            worker.stop()
        self.audit.close()


async def sweep(rt: Runtime) -> None:
    """Close sessions idle for longer than the configured time (their folders go with them)."""
    while True:
        await asyncio.sleep(rt.config.sweep_interval_s)
        for session in await run_in_threadpool(rt.store.expired):
            rt.audit.record("session.expire", session.owner, session=session.id)


def models(engine: Engine) -> dict:
    reasoner = engine.reasoner_identity()
    return {"segmenter": engine.segmenter.identity.name, "reasoner": reasoner["name"] if reasoner else None}


def token_of(request: Request) -> str:
    return request.state.token_name


async def session_of(rt: Runtime, session_id: str, token: str) -> ServerSession:
    """The caller's session, from memory on the event loop; reading it from the state folder on a worker thread."""
    session = rt.store.get(session_id, token, load=False)
    if session is None:
        session = await run_in_threadpool(rt.store.get, session_id, token)
    return session
