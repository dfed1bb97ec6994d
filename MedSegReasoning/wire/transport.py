"""HTTP to one MedSegReasoning server: connections, authentication, JSON requests and typed errors.

The endpoints live in ``wire.client.MedSegClient``, which builds on this class; this one knows only how a request
travels. Why ``http.client`` and not ``requests``: it is always there (Slicer ships requests, scripts may not), its
streaming reads map one-to-one onto Server-Sent Events, and nothing about it can silently disable TLS checks.
HTTPS always verifies the server's certificate (a department CA file can be given); there is no switch to turn
verification off, on purpose. Plain http is refused for any host but this machine. Standard library and numpy only.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

from .errors import (
    ClientError,
    ServerError,
    ServerGone,
    ServerUnreachable,
    VersionMismatch,
    error_for_status,
    os_reason,
)
from .headers import AFFINITY_HEADER
from .network import is_loopback_host
from .version import (
    CLIENT_VERSION_HEADER,
    PACKAGE_VERSION,
    SERVER_VERSION_HEADER,
    WIRE_VERSION,
    WIRE_VERSION_HEADER,
    WIRE_VERSIONS_HEADER,
    mismatch_sentence,
    parse_wire_range,
)


class HttpTransport:
    """Requests to one server. Thread-safe: each call uses its own connection (kept alive per thread)."""

    wire_version: int = WIRE_VERSION
    """The wire version this client speaks, sent with every request (``wire.version``)."""
    client_version: str = PACKAGE_VERSION
    """This client's MedSegReasoning version, sent with every request."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 60.0,
        ca_file: str | Path | None = None,
        affinity: str | None = None,
    ) -> None:
        """``url``: ``http://127.0.0.1:PORT`` or ``https://host``; ``ca_file`` and ``affinity``: see ``MedSegClient``."""
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"the server address {url!r} must look like http://127.0.0.1:PORT or https://host.")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ClientError(
                f"the server {parts.hostname} is not on this machine, so it must be reached over https: the token and "
                "the images would otherwise cross the network readable by anyone on the way."
            )
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.https = parts.scheme == "https"
        self.token = token
        self.timeout = timeout
        self.affinity = affinity or uuid.uuid4().hex
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None) if self.https else None
        self._local = threading.local()

    # -- HTTP ------------------------------------------------------------------------------------------------------
    def _json(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | memoryview | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        headers = dict(headers or {})
        if json_body is not None:
            body = json_bytes(json_body)
            headers["Content-Type"] = "application/json"
        idempotent = method in ("GET", "PUT", "DELETE", "PATCH")
        for attempt in (0, 1):
            conn = self._connection(fresh=not idempotent, timeout=timeout)
            reused = getattr(conn, "_medseg_used", False)
            try:
                response = self._send(conn, method, path, body, headers)
                payload = response.read()
            except ServerGone:
                self._drop(conn)
                if reused and attempt == 0:  # a kept-alive connection the server had closed: try a fresh one
                    continue
                raise
            conn._medseg_used = True  # type: ignore[attr-defined]  # our own marker on the stdlib connection, read with getattr
            if not idempotent or response.will_close:
                self._drop(conn)
            if response.status >= 400:
                raise self._error_from(response, payload)
            if response.status == 204 or not payload:
                return {}
            try:
                return json.loads(payload)
            except ValueError:
                raise ServerError(f"the server answered {path} with something that is not JSON.") from None
        raise AssertionError("unreachable")

    def _connection(self, *, fresh: bool = False, timeout: float | None = None) -> http.client.HTTPConnection:
        timeout = timeout or self.timeout
        if not fresh:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                return conn
        if self.https:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        if not fresh:
            self._local.conn = conn
        return conn

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def _send(
        self, conn: http.client.HTTPConnection, method: str, path: str, body: Any, headers: dict[str, str]
    ) -> http.client.HTTPResponse:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            AFFINITY_HEADER: self.affinity,
            CLIENT_VERSION_HEADER: self.client_version,
            WIRE_VERSION_HEADER: str(self.wire_version),
            **headers,
        }
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
            headers["Content-Length"] = str(len(body))
        try:
            conn.request(method, path, body=body, headers=headers)
        except ssl.SSLCertVerificationError as exc:
            raise ServerUnreachable(
                f"the certificate of {self.host} could not be verified ({exc.verify_message}): give the department's "
                "CA file (ca_file=...) if the server uses one; verification is never turned off."
            ) from None
        except (ConnectionRefusedError, socket.gaierror, TimeoutError, OSError) as exc:
            if conn.sock is None or isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
                raise ServerUnreachable(
                    f"no MedSegReasoning server answers at {self.url} ({os_reason(exc)}): start it, or check the address."
                ) from None
            try:  # the server may have refused the body (too large) and closed: read its answer if it sent one
                return conn.getresponse()
            except (OSError, http.client.HTTPException):
                raise ServerGone(
                    f"the server at {self.url} closed the connection while the request was being sent ({os_reason(exc)})."
                ) from None
        try:
            response = conn.getresponse()
        except TimeoutError:
            raise ServerGone(f"the server at {self.url} did not answer within {conn.timeout:.0f} s.") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ServerGone(f"the server at {self.url} stopped answering ({os_reason(exc)}).") from None
        self._check_versions(conn, response)
        return response

    def _check_versions(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        """Raise ``VersionMismatch`` when the server names wire versions that exclude this client's (a server
        that refuses the client says so itself, with the same sentence; one that names none is served as is)."""
        served = parse_wire_range(response.getheader(WIRE_VERSIONS_HEADER))
        if served is None:
            return
        sentence = mismatch_sentence(
            self.wire_version, self.client_version, served, response.getheader(SERVER_VERSION_HEADER)
        )
        if sentence is not None and response.status < 400:
            self._drop(conn)
            raise VersionMismatch(f"the server at {self.url} cannot be used: {sentence}", code="wire_version")

    def _error_from(self, response: http.client.HTTPResponse, payload: bytes | None = None) -> ClientError:
        if payload is None:
            try:
                payload = response.read()
            except (OSError, http.client.HTTPException):
                payload = b""
        headers = {k.lower(): v for k, v in response.getheaders()}
        try:
            error = json.loads(payload)["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", f"the server answered HTTP {response.status} {response.reason}."
        return error_for_status(response.status, code, message, headers)


def url_segment(text: str) -> str:
    """``text`` quoted as one path segment (ids come from the server, but never trust them to be URL-safe)."""
    return quote(str(text), safe="")


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON of a request body; numpy values are sent as plain JSON values."""
    return json.dumps(obj, separators=(",", ":"), default=_plain).encode("utf-8")


def _plain(value: Any) -> Any:
    """numpy numbers and arrays in prompts (what Slicer's array helpers hand out) as plain JSON values."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} cannot be sent as JSON")
