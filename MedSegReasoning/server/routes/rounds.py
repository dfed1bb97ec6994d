"""Rounds: list a session's finished rounds, ask a question (streamed as Server-Sent Events), cancel the running one.

A round's work is ``server/rounds.py`` (``RoundRun``); how it is started and streamed is ``server/streaming.py``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ..errors import not_found
from ..rounds import RoundRun, parse_round_request
from ..runtime import Runtime, session_of, token_of
from ..schemas import API, ERRORS, SSE, RoundIn
from ..streaming import launch


def round_summary(r) -> dict:
    """A finished round as ``GET …/rounds`` lists it: question, reasoning, per-target outcome."""
    return {
        "round": r.index,
        "question": r.question,
        "reasoning": r.reasoning,
        "clarification": r.clarification,
        "targets": [
            {"label": t.label, "status": t.status, "entity_id": t.entity_id, "error": t.error or None}
            for t in r.targets
        ],
        "started": r.started,
        "finished": r.finished,
    }


def add_listing(app: FastAPI, rt: Runtime) -> None:
    @app.get(f"{API}/sessions/{{session_id}}/rounds", tags=["rounds"], responses=ERRORS)
    def list_rounds(session_id: str, request: Request) -> dict:
        """The session's finished rounds: question, reasoning, per-target outcome."""
        session = rt.store.get(session_id, token_of(request))
        rounds = list(session.dialogue.rounds) if session.dialogue else []
        return {"rounds": [round_summary(r) for r in rounds]}


def add_routes(app: FastAPI, rt: Runtime) -> None:
    @app.post(f"{API}/sessions/{{session_id}}/rounds", tags=["rounds"], responses={**ERRORS, **SSE})
    async def post_round(session_id: str, body: RoundIn, request: Request) -> Response:
        """Ask a question (and/or give prompts); the answer streams as Server-Sent Events."""
        token = token_of(request)
        session = await session_of(rt, session_id, token)
        parsed = parse_round_request(
            body, max_chars=rt.config.limits.max_question_chars, max_prompts=rt.config.limits.max_prompts
        )
        return await launch(rt, session, RoundRun, parsed, token)

    @app.post(
        f"{API}/sessions/{{session_id}}/rounds/{{round_id}}/cancel", status_code=202, tags=["rounds"], responses=ERRORS
    )
    def cancel_round(session_id: str, round_id: str, request: Request) -> dict:
        """Cancel the running round (``round_id`` or ``current``); its stream ends with ``done`` status cancelled."""
        session = rt.store.get(session_id, token_of(request))
        active = session.active
        if active is None or round_id not in (active.id, "current"):
            raise not_found(
                "round", f"round {round_id!r} is not running in this session (it finished or never started)."
            )
        run = rt.runs.get(active.id)
        if run is not None:
            run.cancel("cancelled by the client")
        else:
            active.cancel.set()
        rt.audit.record("round.cancel", session.owner, session=session.id, round_id=active.id, reason="client")
        return {"round_id": active.id, "cancelling": True}
