"""``create_app(config, engine)``: the FastAPI application of ``medseg-reasoning serve``.

Routes are thin: they parse, check ownership and state, and hand work to the pieces that own it (``sessions``,
``rounds``, ``wire``, the engine's dialogue). The wire format is documented once, in docs/wire-format.md; the
generated OpenAPI (``GET /openapi.json``, token required like every other call) documents the same routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import platform
import shutil
import sys
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..dialogue.entity import REVIEW_STATES
from ..wire.errors import InputError
from ..wire.geometry import Orientation
from ..wire.headers import ROUND_ID_HEADER, VOLUME_HEADER
from ..wire.masks import CompactMask
from ..wire.session_archive import MEDIA_TYPE as ARCHIVE_MEDIA_TYPE
from ..wire.session_archive import pack_session
from .audit import AuditLog
from .auth import TokenStore
from .config import WIRE_VERSION, ServerConfig
from .engine import Engine, queued_terminology
from .errors import ApiError, conflict, error_body, from_engine_error, not_found
from .exporting import check_format, find_exporter
from .exporting import unavailable as export_unavailable
from .guard import Guard
from .refine import RefineIn, RefineRun, parse_refine_request
from .rounds import RoundRun, parse_round_request
from .sessions import ServerSession, SessionStore
from .wire import (
    HEARTBEAT,
    build_volume,
    check_body_size,
    entity_json,
    mask_json,
    parse_volume_meta,
    read_volume_body,
    sse,
)
from .workers import ModelWorker

API = "/v1"
_bearer_scheme = HTTPBearer(auto_error=False, description="A token from the server's token file (name:token lines).")


# ---------------------------------------------------------------------------------------------------------------
# Request and response bodies (they also document the API in the OpenAPI schema)


class ErrorDetail(BaseModel):
    status: int
    code: str = Field(description="Stable machine-readable reason, e.g. session_not_found, body_too_large.")
    message: str = Field(description="One sentence for the user: what was wrong and what to do.")


class ErrorOut(BaseModel):
    error: ErrorDetail


class PromptIn(BaseModel):
    """A user's own prompt (clicks/box in Slicer), in voxel indices of the volume: i column, j row, k slice."""

    model_config = ConfigDict(extra="forbid")
    orientation: Orientation = Field(
        "axial", description="the plane the prompt lies on: axial (fixed k), coronal (fixed j), sagittal (fixed i)"
    )
    slice: int = Field(ge=0, description="the plane's index along its normal: k axial, j coronal, i sagittal")
    box: Annotated[list[int], Field(min_length=4, max_length=4)] | None = Field(
        None,
        description="[u0, v0, u1, v1], inclusive corners in the plane's axes: (i, j) axial, (i, k) coronal, (j, k) sagittal",
    )
    points: list[Annotated[list[int], Field(min_length=2, max_length=2)]] = Field(
        default_factory=list, description="[[u, v], ...] in the plane's axes, as the box"
    )
    point_labels: list[int] | None = Field(None, description="1 foreground, 0 background; default all 1")
    label: str | None = Field(None, max_length=200, description="name of the structure")
    ref: str | None = Field(None, max_length=200, description="an entity id or phrase this target relates to")


class ViewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    orientation: Orientation
    slice: int = Field(ge=0)


class RoundIn(BaseModel):
    """A question, and optionally the user's own prompts (then the reasoner is not asked)."""

    model_config = ConfigDict(extra="forbid")
    question: str = ""
    prompts: list[PromptIn] = Field(default_factory=list)
    current_view: ViewIn | None = Field(None, description="what the user is looking at, for 'this slice' questions")
    window: str | None = Field(
        None, description="ct-soft-tissue, ct-lung, ct-bone, ct-brain, percentile, or LEVEL,WIDTH"
    )
    propagate: bool = Field(True, description="false: segment the key slice only")


class MaskIn(BaseModel):
    """A mask as the wire carries it: box [k0, j0, i0, k1, j1, i1] (inclusive) + packed bits (base64)."""

    model_config = ConfigDict(extra="forbid")
    box: list[int] | None
    bits: str
    encoding: str = "packbits-little"
    voxels: int | None = None


class EntityPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(None, min_length=1, max_length=200)
    color: Annotated[list[int], Field(min_length=3, max_length=3)] | None = None
    review: Literal[REVIEW_STATES] | None = None  # type: ignore[valid-type]


class ExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = Field(max_length=40, description="an export format the installed exporter knows, e.g. dicom-seg")


class SessionOut(BaseModel):
    id: str
    created: str
    volume: dict | None
    rounds: int
    entities: int
    running_round: dict | None
    idle_timeout_s: float | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        400: "Bad input (the message says what to fix)",
        401: "No token, or a wrong one",
        404: "Unknown session or entity (or one of another token)",
        409: "Conflicting state: a round is running, no volume yet, ...",
        413: "Body or volume over the server's limits",
        422: "The JSON body does not match the schema",
        503: "Server full (Retry-After), or a model missing",
    }.items()
}
_VOLUME_BODY = {
    "requestBody": {
        "required": False,
        "description": "Raw little-endian C-order [k, j, i] voxels; Content-Encoding deflate or gzip optional; an empty "
        "body re-uses a volume this token sent before (content_sha256 in the header). Shape, dtype and geometry go in "
        "the X-MedSeg-Volume header (JSON).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    "parameters": [
        {
            "name": "X-MedSeg-Volume",
            "in": "header",
            "required": True,
            "description": '{"shape": [nk, nj, ni], "dtype": "int16", "origin": [x, y, z], "spacing": [si, sj, sk], '
            '"direction": [[...], [...], [...]], "modality": "CT", "content_sha256": "<optional>"} (LPS)',
            "schema": {"type": "string"},
        }
    ],
}
_SSE = {
    200: {
        "description": "Server-Sent Events: progress, reasoning, target, error, done (docs/wire-format.md)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


# ---------------------------------------------------------------------------------------------------------------


class _Runtime:
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
            config.sessions_dir, config.max_sessions, config.session_idle_s, config.volume_cache_bytes, terminology
        )
        self.runs: dict[str, RoundRun] = {}

    def shutdown(self) -> None:
        for run in list(self.runs.values()):
            run.cancel("the server is stopping")
        for worker in self.workers.values():
            worker.stop()
        self.audit.close()


def create_app(config: ServerConfig, engine: Engine, tokens: TokenStore | None = None) -> FastAPI:
    """The application; ``tokens`` default to ``config.token_file`` (which must then be set)."""
    if tokens is None:
        if config.token_file is None:
            raise InputError("create_app needs tokens: pass a TokenStore or set ServerConfig.token_file.")
        tokens = TokenStore.from_file(config.token_file)
    rt = _Runtime(config, engine, tokens)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(_sweep(rt))
        rt.audit.record("server.start", None, model=_models(engine))
        try:
            yield
        finally:
            sweeper.cancel()
            rt.audit.record("server.stop", None)
            rt.shutdown()

    app = FastAPI(
        title="MedSegReasoning server",
        version=__version__,
        summary="Reasoning segmentation of medical volumes: sessions, volumes, rounds (SSE), entities.",
        description="Every call needs `Authorization: Bearer <token>`. Wire format: docs/wire-format.md. "
        "Research use only, not for diagnosis.",
        lifespan=lifespan,
        dependencies=[Depends(_bearer_scheme)],  # documents the bearer token; the Guard has already checked it
        docs_url="/docs" if config.docs_ui else None,
        redoc_url=None,
    )
    app.state.runtime = rt
    _install_error_handlers(app)
    _add_service_routes(app, rt)
    _add_session_routes(app, rt)
    _add_round_routes(app, rt)
    _add_entity_routes(app, rt)
    app.add_middleware(Guard, tokens=tokens, limits=config.limits, audit=rt.audit)
    return app


async def _sweep(rt: _Runtime) -> None:
    """Close sessions idle for longer than the configured time (their folders go with them)."""
    while True:
        await asyncio.sleep(rt.config.sweep_interval_s)
        for session in await run_in_threadpool(rt.store.expired):
            rt.audit.record("session.expire", session.owner, session=session.id)


def _models(engine: Engine) -> dict:
    reasoner = engine.reasoner_identity()
    return {"segmenter": engine.segmenter.identity.name, "reasoner": reasoner["name"] if reasoner else None}


def _token(request: Request) -> str:
    return request.state.token_name


# ---------------------------------------------------------------------------------------------------------------
# errors


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _error_response(exc)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> Response:
        return _error_response(from_engine_error(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        message = first.get("msg", "invalid").rstrip(".")
        return _error_response(
            ApiError(
                422, "invalid_body", f"the request body does not match the API: {where}: {message} (see /openapi.json)."
            )
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        texts = {
            404: "there is no such endpoint: see /openapi.json for the API.",
            405: "this endpoint does not take that method.",
        }
        code = {404: "no_such_endpoint", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(ApiError(exc.status_code, code, texts.get(exc.status_code, str(exc.detail))))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return _error_response(from_engine_error(exc))


def _error_response(error: ApiError) -> Response:
    return Response(error_body(error), status_code=error.status, media_type="application/json", headers=error.headers)


# ---------------------------------------------------------------------------------------------------------------
# health, capabilities


def _add_service_routes(app: FastAPI, rt: _Runtime) -> None:
    @app.get(f"{API}/health", tags=["service"], responses=_ERRORS)
    def health(request: Request) -> dict:
        """Liveness and load: the queues in front of each model, and how many sessions are open."""
        return {
            "status": "ok",
            "version": __version__,
            "sessions": len(rt.store),
            "queues": {name: worker.queued for name, worker in rt.workers.items()},
        }

    @app.get(f"{API}/capabilities", tags=["service"], responses=_ERRORS)
    def capabilities(request: Request) -> dict:
        """The models in use (with versions), the device, the limits, and what the server can do."""
        exporter = find_exporter()
        return {
            "wire_version": WIRE_VERSION,
            "server": {"medseg_reasoning": __version__, "python": platform.python_version(), "torch": _torch_version()},
            "device": rt.engine.device,
            "reasoner": rt.engine.reasoner_identity(),
            "segmenter": rt.engine.segmenter_identity(),
            "limits": {
                **rt.config.limits.to_dict(),
                "max_sessions": rt.config.max_sessions,
                "session_idle_s": rt.config.session_idle_s,
            },
            "encodings": ["identity", "deflate", "gzip"],
            "export": {"available": exporter is not None, "formats": list(exporter.formats) if exporter else []},
            "events": ["progress", "reasoning", "target", "error", "done"],
        }


def _torch_version() -> str | None:
    torch = sys.modules.get("torch")  # only if a model loaded it: never import torch just to report it
    return getattr(torch, "__version__", None)


# ---------------------------------------------------------------------------------------------------------------
# sessions and volumes


def _add_session_routes(app: FastAPI, rt: _Runtime) -> None:
    @app.post(f"{API}/sessions", status_code=201, tags=["sessions"], response_model=SessionOut, responses=_ERRORS)
    def create_session(request: Request) -> dict:
        """Open a session. 503 with Retry-After when the server holds its maximum of sessions."""
        session = rt.store.create(_token(request))
        rt.audit.record("session.create", session.owner, session=session.id)
        return {**session.summary(), "idle_timeout_s": rt.config.session_idle_s}

    @app.post(
        f"{API}/sessions/restore", status_code=201, tags=["sessions"], response_model=SessionOut, responses=_ERRORS
    )
    async def restore_session(request: Request) -> dict:
        """Continue a saved conversation in a new session: the body is what ``GET …/archive`` returned. Send the
        volume next; only the volume the conversation was held on is accepted."""
        token = _token(request)
        body = await request.body()
        session = await run_in_threadpool(rt.store.restore, token, body, rt.config.limits.max_json_bytes)
        rt.audit.record("session.restore", token, session=session.id, bytes=len(body))
        return {**session.summary(), "idle_timeout_s": rt.config.session_idle_s}

    @app.get(f"{API}/sessions", tags=["sessions"], responses=_ERRORS)
    def list_sessions(request: Request) -> dict:
        """The caller's open sessions on this server."""
        return {"sessions": [s.summary() for s in rt.store.owned_by(_token(request))]}

    @app.get(f"{API}/sessions/{{session_id}}", tags=["sessions"], response_model=SessionOut, responses=_ERRORS)
    def get_session(session_id: str, request: Request) -> dict:
        session = rt.store.get(session_id, _token(request))
        return {**session.summary(), "idle_timeout_s": rt.config.session_idle_s}

    @app.delete(f"{API}/sessions/{{session_id}}", status_code=204, tags=["sessions"], responses=_ERRORS)
    def delete_session(session_id: str, request: Request) -> Response:
        """Close a session: a running round is cancelled, the session's saved folder is removed."""
        session = rt.store.get(session_id, _token(request))
        rt.store.delete(session)
        rt.audit.record("session.delete", session.owner, session=session.id)
        return Response(status_code=204)

    @app.put(f"{API}/sessions/{{session_id}}/volume", tags=["sessions"], responses=_ERRORS, openapi_extra=_VOLUME_BODY)
    async def put_volume(session_id: str, request: Request) -> dict:
        """Send the session's volume once. Everything is checked from the headers before the body is read."""
        token = _token(request)
        session = await _session(rt, session_id, token)
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
            buf, digest = await read_volume_body(request.stream(), meta, encoding)
            volume = await run_in_threadpool(build_volume, buf, meta, digest)
        changed = await run_in_threadpool(_locked, session, lambda: rt.store.attach_volume(session, volume))
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
        return {
            "content_sha256": volume.content_hash(),
            "shape": list(volume.shape),
            "dtype": str(volume.array.dtype),
            "reused": cached or not changed,
            "session": session.summary(),
        }

    @app.get(f"{API}/sessions/{{session_id}}/archive", tags=["sessions"], responses=_ERRORS)
    def session_archive(session_id: str, request: Request) -> Response:
        """The whole conversation (rounds, entities with masks, edits) as a zip a client keeps, to continue it later
        with ``POST /v1/sessions/restore`` even after this session is gone."""
        session = rt.store.get(session_id, _token(request))

        def do() -> bytes:
            _idle_dialogue(session)
            return pack_session(session.folder)

        data = _locked(session, do)
        rt.audit.record("session.archive", session.owner, session=session.id, bytes=len(data))
        return Response(data, media_type=ARCHIVE_MEDIA_TYPE)

    @app.post(f"{API}/sessions/{{session_id}}/undo", tags=["sessions"], responses=_ERRORS)
    def undo(session_id: str, request: Request) -> dict:
        """Undo the last round: entities it made go, entities it redid get their previous version back."""
        session = rt.store.get(session_id, _token(request))

        def do() -> dict:
            dialogue = _idle_dialogue(session)
            if not dialogue.rounds:
                raise conflict("nothing_to_undo", "there is no round to undo in this session.")
            rnd = dialogue.undo_last_round()
            return {
                "undone_round": rnd.index,
                "removed": list(rnd.created),
                "restored": [e.id for e in rnd.superseded],
                "entities": [entity_json(e, with_mask=False) for e in dialogue.entities.values()],
            }

        result = _locked(session, do)
        rt.audit.record("round.undo", session.owner, session=session.id, round=result["undone_round"])
        return result

    @app.get(f"{API}/sessions/{{session_id}}/rounds", tags=["rounds"], responses=_ERRORS)
    def list_rounds(session_id: str, request: Request) -> dict:
        """The session's finished rounds: question, reasoning, per-target outcome."""
        session = rt.store.get(session_id, _token(request))
        rounds = list(session.dialogue.rounds) if session.dialogue else []
        return {
            "rounds": [
                {
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
                for r in rounds
            ]
        }

    @app.post(
        f"{API}/sessions/{{session_id}}/export", tags=["sessions"], responses={**_ERRORS, 501: {"model": ErrorOut}}
    )
    def export(session_id: str, body: ExportIn, request: Request) -> Response:
        """Export the session through the installed exporters (server/exporting.py): one file, or a zip of several.
        501 when this installation has none."""
        session = rt.store.get(session_id, _token(request))
        exporter = find_exporter()
        if exporter is None:
            raise export_unavailable()
        fmt = check_format(exporter, body.format)
        out = rt.config.resolved_state_dir() / "exports" / str(uuid.uuid4())
        out.mkdir(parents=True, mode=0o700)
        try:

            def do() -> list[Path]:
                _idle_dialogue(session)
                return exporter.run(session, fmt, out)

            files = _locked(session, do)
            rt.audit.record("session.export", session.owner, session=session.id, format=fmt)
            return _files_response(files, out)
        finally:
            shutil.rmtree(out, ignore_errors=True)


async def _session(rt: _Runtime, session_id: str, token: str) -> ServerSession:
    """The caller's session, from memory on the event loop; reading it from the state folder on a worker thread."""
    session = rt.store.get(session_id, token, load=False)
    if session is None:
        session = await run_in_threadpool(rt.store.get, session_id, token)
    return session  # type: ignore[return-value]


def _idle_dialogue(session: ServerSession):
    if session.dialogue is None:
        raise conflict("volume_missing", "this session has no volume yet: send it with PUT /v1/sessions/{id}/volume.")
    if session.busy:
        raise conflict("round_running", "a round is running in this session: try again when it has finished.")
    return session.dialogue


def _locked(session: ServerSession, fn):
    """Run ``fn`` holding the session's lock (a thread-pool thread waits, never the event loop).

    A running round holds the lock for its whole length, so a busy session is refused at once instead of waiting.
    """
    if session.busy:
        raise conflict("round_running", "a round is running in this session: try again when it has finished.")
    if not session.lock.acquire(timeout=30):
        raise conflict("session_busy", "the session is busy with another request: try again in a moment.")
    try:
        return fn()
    finally:
        session.lock.release()


def _files_response(files: list[Path], root: Path) -> Response:
    files = [f for f in files if f.is_file() and root in f.resolve().parents]
    if not files:
        raise ApiError(500, "export_failed", "the exporter wrote no file.")
    if len(files) == 1:
        name = files[0].name
        return Response(
            files[0].read_bytes(),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{_safe_name(name)}"'},
        )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, f.relative_to(root).as_posix())
    return Response(
        buf.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="export.zip"'},
    )


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100] or "export"


# ---------------------------------------------------------------------------------------------------------------
# rounds


def _add_round_routes(app: FastAPI, rt: _Runtime) -> None:
    @app.post(f"{API}/sessions/{{session_id}}/rounds", tags=["rounds"], responses={**_ERRORS, **_SSE})
    async def post_round(session_id: str, body: RoundIn, request: Request) -> Response:
        """Ask a question (and/or give prompts); the answer streams as Server-Sent Events."""
        token = _token(request)
        session = await _session(rt, session_id, token)
        parsed = parse_round_request(
            body, max_chars=rt.config.limits.max_question_chars, max_prompts=rt.config.limits.max_prompts
        )
        return await _launch(rt, session, RoundRun, parsed, token)

    @app.post(
        f"{API}/sessions/{{session_id}}/rounds/{{round_id}}/cancel", status_code=202, tags=["rounds"], responses=_ERRORS
    )
    def cancel_round(session_id: str, round_id: str, request: Request) -> dict:
        """Cancel the running round (``round_id`` or ``current``); its stream ends with ``done`` status cancelled."""
        session = rt.store.get(session_id, _token(request))
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


async def _launch(rt: _Runtime, session: ServerSession, kind: type[RoundRun], request: Any, token: str) -> Response:
    """Prepare a round of ``kind`` (a question, or a refine) and stream it: one path, so both are checked, queued,
    cancelled and undone alike. Checks that fail answer with their own status before the stream starts."""
    if session.busy:
        raise conflict(
            "round_running",
            f"round {session.active.index} of this session is still running: wait for it, or cancel it first.",  # type: ignore[union-attr]
        )
    run = kind(session, request, rt.engine, rt.workers, rt.audit, token, asyncio.get_running_loop())
    if session.lock.acquire(blocking=False):  # usual case: prepare (cheap) right here, no thread hop
        try:
            run.prepare()
        finally:
            session.lock.release()
    else:  # an entity edit is being saved: wait for it on a worker thread
        await run_in_threadpool(_locked, session, run.prepare)
    rt.runs[run.id] = run
    run.on_finished = lambda: rt.runs.pop(run.id, None)
    run.start()
    return StreamingResponse(
        _stream(rt, run),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", ROUND_ID_HEADER: run.id},
    )


async def _stream(rt: _Runtime, run: RoundRun) -> AsyncIterator[bytes]:
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


# ---------------------------------------------------------------------------------------------------------------
# entities


def _add_entity_routes(app: FastAPI, rt: _Runtime) -> None:
    base = f"{API}/sessions/{{session_id}}/entities"

    def entity_of(session: ServerSession, entity_id: str):
        dialogue = session.dialogue
        key = entity_id.upper()
        if dialogue is None or key not in dialogue.entities:
            raise not_found("entity", f"there is no entity {entity_id!r} in this session.")
        return dialogue.entities[key]

    @app.get(base, tags=["entities"], responses=_ERRORS)
    def list_entities(session_id: str, request: Request, masks: bool = False) -> Response:
        """The session's entities (``masks=true`` includes every mask: large)."""
        session = rt.store.get(session_id, _token(request))
        entities = list(session.dialogue.entities.values()) if session.dialogue else []
        return JSONResponse({"entities": [entity_json(e, with_mask=masks) for e in entities]})

    @app.get(f"{base}/{{entity_id}}", tags=["entities"], responses=_ERRORS)
    def get_entity(session_id: str, entity_id: str, request: Request, mask: bool = False) -> Response:
        session = rt.store.get(session_id, _token(request))
        return JSONResponse(entity_json(entity_of(session, entity_id), with_mask=mask))

    @app.get(f"{base}/{{entity_id}}/mask", tags=["entities"], responses=_ERRORS)
    def get_mask(session_id: str, entity_id: str, request: Request) -> Response:
        """The entity's current mask: box + packed bits (docs/wire-format.md)."""
        session = rt.store.get(session_id, _token(request))
        entity = entity_of(session, entity_id)
        return JSONResponse({**mask_json(entity), "shape": list(session.dialogue.shape), "revision": entity.revision})  # type: ignore[union-attr]

    @app.post(f"{base}/{{entity_id}}/refine", tags=["entities", "rounds"], responses={**_ERRORS, **_SSE})
    async def refine(session_id: str, entity_id: str, body: RefineIn, request: Request) -> Response:
        """Correct the entity from one box (add) or erase box on any plane, as a round: streamed like a round (its
        ``target`` is the entity, same id, next revision), undone like one (``POST …/undo``). server/refine.py."""
        token = _token(request)
        session = await _session(rt, session_id, token)
        return await _launch(rt, session, RefineRun, parse_refine_request(body, entity_id), token)

    @app.put(f"{base}/{{entity_id}}/mask", tags=["entities"], responses=_ERRORS)
    def put_mask(session_id: str, entity_id: str, body: MaskIn, request: Request) -> dict:
        """The user's edit replaces the entity's mask (later rounds and exports use it)."""
        session = rt.store.get(session_id, _token(request))

        def do() -> dict:
            dialogue = _idle_dialogue(session)
            entity = entity_of(session, entity_id)
            mask = CompactMask.from_json(body.model_dump(exclude_none=True) | {"box": body.box}, shape=dialogue.shape)
            return entity_json(dialogue.replace_mask(entity.id, mask), with_mask=False)

        result = _locked(session, do)
        rt.audit.record("entity.mask", session.owner, session=session.id, entity=result["id"])
        return result

    @app.patch(f"{base}/{{entity_id}}", tags=["entities"], responses=_ERRORS)
    def patch_entity(session_id: str, entity_id: str, body: EntityPatch, request: Request) -> dict:
        """Rename, recolour, or set the review status (proposed, confirmed, rejected)."""
        session = rt.store.get(session_id, _token(request))

        def do() -> dict:
            dialogue = _idle_dialogue(session)
            entity = entity_of(session, entity_id)
            if body.label is None and body.color is None and body.review is None:
                raise ApiError(400, "empty_patch", "the patch changes nothing: give label, color and/or review.")
            if body.label is not None:
                dialogue.rename(entity.id, body.label.strip())
            if body.color is not None:
                dialogue.recolor(entity.id, list(body.color))
            if body.review is not None:
                dialogue.set_review(entity.id, body.review)
            return entity_json(dialogue.entities[entity.id], with_mask=False)

        result = _locked(session, do)
        rt.audit.record("entity.patch", session.owner, session=session.id, entity=result["id"])
        return result

    @app.delete(f"{base}/{{entity_id}}", status_code=204, tags=["entities"], responses=_ERRORS)
    def delete_entity(session_id: str, entity_id: str, request: Request) -> Response:
        session = rt.store.get(session_id, _token(request))

        def do() -> str:
            dialogue = _idle_dialogue(session)
            entity = entity_of(session, entity_id)
            dialogue.delete(entity.id)
            return entity.id

        removed = _locked(session, do)
        rt.audit.record("entity.delete", session.owner, session=session.id, entity=removed)
        return Response(status_code=204)
