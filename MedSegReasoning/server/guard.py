"""The ASGI layer in front of every route: token check, body-size limit, audit line, all before the body is read.

Why a raw ASGI middleware and not FastAPI dependencies: dependencies run after FastAPI has read (and parsed) the
body, so a 2 GB upload with a wrong token, or an oversized one, would be received in full before being refused.
Here the request is refused from its headers alone: a declared ``Content-Length`` above the limit gets 413 at
once (clients that send ``Expect: 100-continue`` never send the body at all), and a body without a declared length
is counted as it arrives and cut off at the limit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .. import __version__
from ..wire import version as wire_version
from .audit import AuditLog
from .auth import TokenStore
from .config import Limits
from .errors import ApiError, error_body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_DISCARD_BYTES = 16 << 20
_VOLUME_ROUTE = re.compile(r"^/v1/sessions/[^/]+/volume/?$")
_SESSION_IN_PATH = re.compile(r"^/v1/sessions/([0-9a-fA-F-]{36})")


class Guard:
    """Authenticate, limit, audit; the token's name is put in ``scope["state"]["token_name"]`` for the routes."""

    def __init__(self, app, tokens: TokenStore, limits: Limits, audit: AuditLog) -> None:
        self.app = app
        self.tokens = tokens
        self.limits = limits
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = _headers(scope)
        path = scope.get("path", "")
        status_box = {"status": 0}
        presented = _bearer(headers.get("authorization"))
        token_name = self.tokens.identify(presented)
        try:
            if token_name is None:
                await _send_error(send, self._refusal(headers, presented), status_box)
                return
            send = _with_version_headers(send)
            refusal = _version_refusal(headers)
            if refusal is not None:
                await _send_error(send, refusal, status_box)
                return
            limit = self.limits.max_upload_bytes if _VOLUME_ROUTE.match(path) else self.limits.max_json_bytes
            declared = headers.get("content-length")
            if declared is not None:
                try:
                    length = int(declared)
                except ValueError:
                    length = -1
                if length < 0:
                    await _send_error(
                        send, ApiError(400, "invalid_request", "the Content-Length header is not a number."), status_box
                    )
                    return
                if length > limit:  # refused from the header: the app never sees the body
                    # a modest overage is left for uvicorn to discard, so the client can read the 413 (closing with
                    # unread data resets the connection); a hopeless one is cut off at once
                    close = length > limit + _DISCARD_BYTES
                    await _send_error(send, _too_large(length, limit), status_box, close=close)
                    return
            scope.setdefault("state", {})["token_name"] = token_name
            try:
                await self.app(scope, _counting(receive, send, limit, status_box), _tracking(send, status_box))
            except Exception:
                if not status_box.get("refused"):
                    raise  # a real failure: the error middleware answers 500 and logs it
                # the app tripped over the body the guard cut off; it has been answered with 413 already
        finally:
            match = _SESSION_IN_PATH.match(path)
            self.audit.record_request(
                token_name,
                method=scope.get("method"),
                route=path,
                status=status_box["status"],
                ms=round((time.perf_counter() - t0) * 1000, 1),
                client=(scope.get("client") or ("?",))[0],
                session=match.group(1) if match else None,
            )

    def _refusal(self, headers: dict[str, str], presented: str | None) -> ApiError:
        """401, with a hint where the mistake is recognisable (the whole ``name:token`` line sent)."""
        if not headers.get("authorization"):
            message = (
                "the request carries no token: send the header 'Authorization: Bearer <token>' with a token "
                "from the server's token file."
            )
            return ApiError(401, "token_missing", message, {"WWW-Authenticate": "Bearer"})
        hint = self.tokens.hint(presented)
        message = (
            f"the token is not valid for this server: {hint}."
            if hint
            else "the token is not valid for this server: use a token from the file the server was "
            "started with (--token-file, or the file it printed at start)."
        )
        return ApiError(401, "token_invalid", message, {"WWW-Authenticate": "Bearer"})


def _version_refusal(headers: dict[str, str]) -> ApiError | None:
    """400 ``wire_version_unsupported`` for a client speaking a wire version this server does not serve (none
    named: the current one, so curl and scripts are served); the sentence says which side to update."""
    name = wire_version.WIRE_VERSION_HEADER.lower()
    try:
        wanted = wire_version.parse_wire_version(headers.get(name))
    except ValueError as exc:
        return ApiError(400, "wire_version_unsupported", f"{exc}: send the wire version this client speaks.")
    if wanted is None:
        return None
    sentence = wire_version.mismatch_sentence(
        wanted,
        headers.get(wire_version.CLIENT_VERSION_HEADER.lower(), "")[:40] or None,
        (wire_version.MIN_WIRE_VERSION, wire_version.WIRE_VERSION),
        __version__,
    )
    return None if sentence is None else ApiError(400, "wire_version_unsupported", sentence)


def _with_version_headers(send: Send) -> Send:
    """A ``send`` that names the server's package and wire versions on every answer (docs/wire-format.md)."""
    extra = [
        (wire_version.SERVER_VERSION_HEADER.lower().encode(), __version__.encode()),
        (
            wire_version.WIRE_VERSIONS_HEADER.lower().encode(),
            wire_version.wire_range_header(wire_version.MIN_WIRE_VERSION, wire_version.WIRE_VERSION).encode(),
        ),
    ]

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


def _too_large(length: int | None, limit: int) -> ApiError:
    size = f"{length:,} bytes" if length is not None else "more bytes"
    return ApiError(
        413,
        "body_too_large",
        f"the request body has {size}, more than this server accepts ({limit:,} bytes): send a smaller volume, "
        "or ask the server's operator to raise the limit.",
    )


def _counting(receive: Receive, send: Send, limit: int, status_box: dict) -> Receive:
    """A ``receive`` that counts body bytes and, past ``limit``, answers 413 itself and tells the app the client left.

    The connection stays open: uvicorn then discards what the client still sends (until its keep-alive timeout)
    instead of resetting the connection, which would make the client lose the 413.
    """
    received = 0

    async def wrapped() -> Message:
        nonlocal received
        if status_box.get("refused"):
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                if not status_box["status"]:
                    await _send_error(send, _too_large(None, limit), status_box)
                status_box["refused"] = True
                return {"type": "http.disconnect"}
        return message

    return wrapped


def _tracking(send: Send, status_box: dict) -> Send:
    """A ``send`` that records the status, and drops the app's own reply after the guard has answered 413."""

    async def wrapped(message: Message) -> None:
        if status_box.get("refused"):
            return
        if message["type"] == "http.response.start":
            status_box["status"] = message["status"]
        await send(message)

    return wrapped


async def _send_error(send: Send, error: ApiError, status_box: dict, close: bool = False) -> None:
    body = error_body(error)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    if close:
        headers.append((b"connection", b"close"))
    status_box["status"] = error.status
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
