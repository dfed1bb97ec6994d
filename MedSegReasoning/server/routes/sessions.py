"""Sessions and their volume: open, restore, list, read, close, send the volume, fetch the archive, undo a round."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ...volume.finite import non_finite_warning
from ...wire.headers import VOLUME_HEADER
from ...wire.session_archive import MEDIA_TYPE as ARCHIVE_MEDIA_TYPE
from ...wire.session_archive import pack_session
from ..errors import ApiError, conflict
from ..runtime import Runtime, session_of, token_of
from ..schemas import API, ERRORS, VOLUME_BODY, SessionOut, binary_answer
from ..sessions import idle_dialogue, locked, undo_last_round
from ..wire import build_volume, check_body_size, parse_volume_meta, read_volume_body


def add_routes(app: FastAPI, rt: Runtime) -> None:
    @app.post(f"{API}/sessions", status_code=201, tags=["sessions"], response_model=SessionOut, responses=ERRORS)
    def create_session(request: Request) -> dict:
        """Open a session. 503 with Retry-After when the server holds its maximum of sessions."""
        session = rt.store.create(token_of(request))
        rt.audit.record("session.create", session.owner, session=session.id)
        return {**session.summary(), "idle_timeout_s": rt.config.session_idle_s}

    @app.post(
        f"{API}/sessions/restore", status_code=201, tags=["sessions"], response_model=SessionOut, responses=ERRORS
    )
    async def restore_session(request: Request) -> dict:
        """Continue a saved conversation in a new session: the body is what ``GET …/archive`` returned. Send the
        volume next; only the volume the conversation was held on is accepted."""
        token = token_of(request)
        body = await request.body()
        session = await run_in_threadpool(rt.store.restore, token, body, rt.config.limits.max_json_bytes)
        rt.audit.record("session.restore", token, session=session.id, bytes=len(body))
        return {**session.summary(), "idle_timeout_s": rt.config.session_idle_s}

    @app.get(f"{API}/sessions", tags=["sessions"], responses=ERRORS)
    def list_sessions(request: Request) -> dict:
        """The caller's open sessions on this server."""
        return {"sessions": [s.summary() for s in rt.store.owned_by(token_of(request))]}

    @app.get(f"{API}/sessions/{{session_id}}", tags=["sessions"], response_model=SessionOut, responses=ERRORS)
    def get_session(session_id: str, request: Request) -> dict:
        session = rt.store.get(session_id, token_of(request))
        return {**session.summary(), "idle_timeout_s": rt.config.session_idle_s}

    @app.delete(f"{API}/sessions/{{session_id}}", status_code=204, tags=["sessions"], responses=ERRORS)
    def delete_session(session_id: str, request: Request) -> Response:
        """Close a session: a running round is cancelled, the session's saved folder is removed."""
        session = rt.store.get(session_id, token_of(request))
        rt.store.delete(session)
        rt.audit.record("session.delete", session.owner, session=session.id)
        return Response(status_code=204)

    @app.put(f"{API}/sessions/{{session_id}}/volume", tags=["sessions"], responses=ERRORS, openapi_extra=VOLUME_BODY)
    async def put_volume(session_id: str, request: Request) -> dict:
        """Send the session's volume once. Everything is checked from the headers before the body is read."""
        token = token_of(request)
        session = await session_of(rt, session_id, token)
        meta = parse_volume_meta(request.headers.get(VOLUME_HEADER), rt.config.limits)
        encoding = request.headers.get("content-encoding", "identity").strip().lower() or "identity"
        declared = request.headers.get("content-length")
        length = int(declared) if declared is not None else None
        check_body_size(meta, encoding, length)
        if session.busy:
            raise conflict("round_running", "a round is running in this session: send the volume after it finishes.")
        cached = False
        if length == 0:
            if meta.content_sha256 is None:
                raise ApiError(
                    400, "volume_body_missing", "the upload has no voxels and no content_sha256 to find them by."
                )
            volume = rt.store.volumes.get(token, meta.content_sha256)
            if volume is None or volume.shape != meta.shape:
                raise conflict(
                    "volume_not_cached",
                    "the server does not hold a volume with this content hash for this token: send the voxels.",
                )
            cached = True
        else:
            with rt.upload_budget.reservation() as tally:  # what the upload holds while it arrives
                buf, digest = await read_volume_body(request.stream(), meta, encoding, tally)
                volume = await run_in_threadpool(build_volume, buf, meta, digest)
        changed = await run_in_threadpool(locked, session, lambda: rt.store.attach_volume(session, volume))
        rt.audit.record(
            "volume.put",
            token,
            session=session.id,
            shape=list(meta.shape),
            dtype=meta.dtype.name,
            volume=volume.content_hash()[:12],
            bytes=length,
            outcome="cached" if cached else ("stored" if changed else "unchanged"),
        )
        warning = non_finite_warning(volume)  # the CLI's rule: counted, said, and the volume used anyway
        return {
            "content_sha256": volume.content_hash(),
            "shape": list(volume.shape),
            "dtype": str(volume.array.dtype),
            "reused": cached or not changed,
            "non_finite_voxels": volume.non_finite_voxels,
            "warnings": [warning] if warning else [],
            "session": session.summary(),
        }

    @app.get(
        f"{API}/sessions/{{session_id}}/archive",
        tags=["sessions"],
        response_class=Response,
        responses={**ERRORS, **binary_answer("The session folder as a zip", ARCHIVE_MEDIA_TYPE)},
    )
    def session_archive(session_id: str, request: Request) -> Response:
        """The whole conversation (rounds, entities with masks, edits) as a zip a client keeps, to continue it later
        with ``POST /v1/sessions/restore`` even after this session is gone."""
        session = rt.store.get(session_id, token_of(request))

        def do() -> bytes:
            idle_dialogue(session)
            return pack_session(session.folder)

        data = locked(session, do)
        rt.audit.record("session.archive", session.owner, session=session.id, bytes=len(data))
        return Response(data, media_type=ARCHIVE_MEDIA_TYPE)

    @app.post(f"{API}/sessions/{{session_id}}/undo", tags=["sessions"], responses=ERRORS)
    def undo(session_id: str, request: Request) -> dict:
        """Undo the last round: entities it made go, entities it redid get their previous version back."""
        session = rt.store.get(session_id, token_of(request))
        result = locked(session, lambda: undo_last_round(session))
        rt.audit.record("round.undo", session.owner, session=session.id, round=result["undone_round"])
        return result
