"""``POST /v1/sessions/{id}/export``: the session through the installed exporters (``server/exporting.py``)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ..exporting import check_format, files_response, find_exporter
from ..exporting import unavailable as export_unavailable
from ..runtime import Runtime, token_of
from ..schemas import API, ERRORS, ErrorOut, ExportIn, binary_answer
from ..sessions import idle_dialogue, locked


def add_routes(app: FastAPI, rt: Runtime) -> None:

    @app.post(
        f"{API}/sessions/{{session_id}}/export",
        tags=["sessions"],
        response_class=Response,
        responses={
            **ERRORS,
            **binary_answer("One exported file, or a zip of several", "application/octet-stream", "application/zip"),
            501: {"model": ErrorOut, "description": "No exporter installed"},
        },
    )
    def export(session_id: str, body: ExportIn, request: Request) -> Response:
        """Export the session through the installed exporters (server/exporting.py): one file, or a zip of several.
        501 when this installation has none."""
        session = rt.store.get(session_id, token_of(request))
        exporter = find_exporter()
        if exporter is None:
            raise export_unavailable()
        fmt = check_format(exporter, body.format)
        out = rt.config.resolved_state_dir() / "exports" / str(uuid.uuid4())
        out.mkdir(parents=True, mode=0o700)
        try:

            def do() -> list[Path]:
                idle_dialogue(session)
                return exporter.run(session, fmt, out)

            files = locked(session, do)
            rt.audit.record("session.export", session.owner, session=session.id, format=fmt)
            return files_response(files, out)
        finally:
            shutil.rmtree(out, ignore_errors=True)
