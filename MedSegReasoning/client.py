"""The torch-free client of the MedSegReasoning server, for the Slicer module and scripts.

It imports the standard library and numpy only (plus ``MedSegReasoning.masks``, itself numpy-only), because it runs
inside Slicer's Python, which must never load torch. Two pieces:

- ``MedSegClient``: every endpoint of the server (docs/wire-format.md), a round's Server-Sent Events delivered to
  callbacks as they arrive, and typed errors whose message a user can act on (``ClientError`` and subclasses).
  HTTPS always verifies the server's certificate (a department CA file can be given); there is no switch to
  turn verification off, on purpose.
- ``LocalServer``: start-or-connect on the workstation. It launches ``medseg-reasoning serve --port 0`` as a child
  process in its own process group, reads the port from the server's ready line, waits for health, stops the
  server when Python exits, and ``kill()`` ends the whole process tree at once (what a Cancel button needs).

Why ``http.client`` and not ``requests``: it is always there (Slicer ships requests, scripts may not), its
streaming reads map one-to-one onto Server-Sent Events, and nothing about it can silently disable TLS checks.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

from .masks import CompactMask
from .network import is_loopback_host

API = "/v1"
READY_PREFIX = "MEDSEG-SERVER-READY "  # printed by ``medseg-reasoning serve`` (server/cli.py)
VOLUME_HEADER = "X-MedSeg-Volume"
ROUND_ID_HEADER = "X-MedSeg-Round-Id"
_STREAM_IDLE_TIMEOUT_S = 120.0  # the server sends a heartbeat every 10 s; this long without one means it is gone


# ---------------------------------------------------------------------------------------------------------------
# Errors: one class per thing the user can do something about


class ClientError(Exception):
    """A failure talking to the server; ``str(error)`` is a sentence for the user, ``code``/``status`` for code."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class ServerUnreachable(ClientError):
    """No server answers at the address (not started, wrong address, firewall, certificate not trusted)."""


class ServerGone(ClientError):
    """The server stopped answering in the middle of a request or a round."""


class ServerStartFailed(ClientError):
    """A local server could not be started (its own error message is included)."""


class AuthenticationFailed(ClientError):
    """The token is missing or wrong (HTTP 401)."""


class NotFound(ClientError):
    """The session or entity does not exist (any more) for this token (HTTP 404)."""


class Conflict(ClientError):
    """The request does not fit the session's state: a round is running, no volume yet... (HTTP 409)."""


class RequestRejected(ClientError):
    """The request was refused as it stands: bad input, too large, wrong type (HTTP 400, 413, 415, 422)."""


class ServerBusy(ClientError):
    """The server is full; ``retry_after`` says in how many seconds to try again (HTTP 503)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ModelUnavailable(ClientError):
    """A model the request needs is missing on the server, or failed to load."""


class RoundFailed(ClientError):
    """A round ended with an error (the model raised, the reasoner's answer was unusable...)."""


class RoundCancelled(ClientError):
    """The round was cancelled (by this client or the server) and nothing of it was kept."""


class ServerError(ClientError):
    """The server failed (HTTP 5xx); the message says what it reported."""


def _error_for(status: int, code: str, message: str, headers: dict[str, str]) -> ClientError:
    if status == 401:
        return AuthenticationFailed(message, status=status, code=code)
    if status == 404:
        return NotFound(message, status=status, code=code)
    if status == 409:
        return Conflict(message, status=status, code=code)
    if status == 503 and code in ("reasoner_missing", "model_missing"):
        return ModelUnavailable(message, status=status, code=code)
    if status == 503:
        retry = headers.get("retry-after")
        return ServerBusy(message, status=status, code=code, retry_after=float(retry) if retry else None)
    if 400 <= status < 500:
        return RequestRejected(message, status=status, code=code)
    return ServerError(message, status=status, code=code)


# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Entity:
    """An entity as the server sends it; ``mask`` is present when the request asked for it."""

    id: str
    label: str
    name: str
    color: tuple[int, int, int]
    findings: str
    review: str
    key_slice: int
    bbox: tuple[int, ...] | None
    voxels: int
    uncertain: bool
    data: dict
    mask: CompactMask | None = None

    @staticmethod
    def from_json(data: dict) -> Entity:
        mask = CompactMask.from_json(data["mask"]) if data.get("mask") is not None else None
        return Entity(
            id=data["id"],
            label=data["label"],
            name=data.get("name", data["label"]),
            color=tuple(data["color"]),  # type: ignore[arg-type]
            findings=data.get("findings", ""),
            review=data.get("review", "proposed"),
            key_slice=int(data["key_slice"]),
            bbox=tuple(data["bbox"]) if data.get("bbox") else None,
            voxels=int(data.get("voxels", 0)),
            uncertain=bool(data.get("uncertain", False)),
            data=data,
            mask=mask,
        )


@dataclass
class RoundResult:
    """What a round produced: entities (with masks), the reasoning text, or a question back (clarification)."""

    round: int | None
    round_id: str
    status: str  # ok | clarification
    reasoning: str
    clarification: dict | None
    entities: list[Entity]
    targets: list[dict]
    timings: dict
    events: list[tuple[str, dict]] = field(default_factory=list)
    refine: dict | None = None  # a refine's done.refine: entity_id, kind, orientation, slice, changed_slices, stopped


@dataclass(frozen=True)
class RoundEvent:
    """One Server-Sent Event of a round."""

    name: str
    data: dict
    id: int | None = None


# ---------------------------------------------------------------------------------------------------------------
# The client


class MedSegClient:
    """All endpoints of one server. Thread-safe: each call uses its own connection (kept alive per thread)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 60.0,
        ca_file: str | Path | None = None,
        affinity: str | None = None,
    ) -> None:
        """``ca_file``: the CA that signed a department server's certificate (else the system's CAs).
        ``affinity``: sent as ``X-MedSeg-Affinity`` so that a proxy in front of several replicas sends all of this
        client's requests to one of them (docs/deployment.md); default: random per client."""
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
        self._capabilities: dict | None = None
        self._hashes: dict[tuple[str, int], str] = {}  # volumes sent: (description, CRC-32) -> content hash

    # -- service --------------------------------------------------------------------------------------------------
    def health(self, timeout: float | None = None) -> dict:
        return self._json("GET", f"{API}/health", timeout=timeout)

    def capabilities(self, refresh: bool = False) -> dict:
        if self._capabilities is None or refresh:
            self._capabilities = self._json("GET", f"{API}/capabilities")
        return self._capabilities

    def wait_for_health(self, timeout: float = 30.0, cancel: threading.Event | None = None) -> dict:
        """Poll ``/v1/health`` until the server answers (a token error is raised at once: waiting cannot fix it)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.health(timeout=2.0)
            except (ServerUnreachable, ServerGone):
                if time.monotonic() > deadline or (cancel is not None and cancel.is_set()):
                    raise
                time.sleep(0.05)

    # -- sessions and volumes --------------------------------------------------------------------------------------
    def create_session(self) -> str:
        return self._json("POST", f"{API}/sessions")["id"]

    def session(self, session_id: str) -> dict:
        return self._json("GET", f"{API}/sessions/{_seg(session_id)}")

    def sessions(self) -> list[dict]:
        return self._json("GET", f"{API}/sessions")["sessions"]

    def delete_session(self, session_id: str) -> None:
        self._json("DELETE", f"{API}/sessions/{_seg(session_id)}")

    def upload_volume(
        self,
        session_id: str,
        array: np.ndarray,
        origin: Sequence[float],
        spacing: Sequence[float],
        direction: Sequence[Sequence[float]] | np.ndarray,
        modality: str = "",
        *,
        compress: bool | None = None,
        dicom: Mapping[str, str] | None = None,
    ) -> dict:
        """Send the session's volume: ``array`` is ``[k, j, i]``, geometry in LPS (direction columns = i, j, k axes).

        ``dicom``: the source series' ``study_instance_uid``, ``series_instance_uid``, ``frame_of_reference_uid``
        (optional): the session records them, so a DICOM-SEG exported later against the series is checked against
        them. A server that predates the field refuses it; the volume is then sent again without it.

        A volume this client has sent before (recognised by a CRC-32 of its voxels, 0.1 s for 150 MB, plus its
        geometry) is offered by its content hash first: when the server still holds it, nothing is transferred.
        Otherwise the voxels go out while a second thread computes their SHA-256 (0.6-0.8 s for 150 MB; both run
        outside the GIL), which must equal the hash the server computed on arrival. ``compress`` None: deflate only
        when the server is on another machine (on loopback compressing costs far more time than it saves; see
        benchmarks/server.py).
        """
        dtype = np.dtype(array.dtype).newbyteorder("<")
        array = np.ascontiguousarray(array, dtype=dtype)
        limits = self.capabilities().get("limits", {})
        if dtype.name not in limits.get("dtypes", [dtype.name]):
            raise RequestRejected(
                f"the server does not accept {dtype.name} voxels: convert to one of {limits['dtypes']}."
            )
        if array.ndim != 3:
            raise RequestRejected(f"a volume is a 3D [k, j, i] array, got shape {array.shape}.")
        if array.size > limits.get("max_voxels", array.size):
            raise RequestRejected(
                f"the volume has {array.size:,} voxels, more than the server accepts ({limits['max_voxels']:,}): crop it."
            )
        meta: dict[str, Any] = {
            "shape": [int(n) for n in array.shape],
            "dtype": dtype.name,
            "origin": [float(x) for x in origin],
            "spacing": [float(x) for x in spacing],
            "direction": [[float(x) for x in row] for row in np.asarray(direction, dtype=float).reshape(3, 3)],
            "modality": modality,
        }
        uids = {k: str(v) for k, v in (dicom or {}).items() if v}
        if uids:
            meta["dicom"] = uids
        data = memoryview(array).cast("B")
        key = (json.dumps(meta, sort_keys=True), zlib.crc32(data))
        path = f"{API}/sessions/{_seg(session_id)}/volume"
        known = self._hashes.get(key)
        if known is not None:
            headers = {VOLUME_HEADER: _json_bytes({**meta, "content_sha256": known}).decode()}
            try:
                return self._json("PUT", path, body=b"", headers=headers)  # by hash: nothing to send
            except Conflict as exc:
                if exc.code != "volume_not_cached":
                    raise
        headers = {VOLUME_HEADER: _json_bytes(meta).decode(), "Content-Type": "application/octet-stream"}
        if compress is None:
            compress = not is_loopback_host(self.host)
        body: bytes | memoryview = data
        if compress:
            body = zlib.compress(data, 1)
            headers["Content-Encoding"] = "deflate"
        limit = limits.get("max_upload_bytes")
        if limit is not None and len(body) > limit:
            raise RequestRejected(f"the volume is {len(body):,} bytes, more than the server accepts ({limit:,}).")
        digest: list[str] = []
        hasher = threading.Thread(
            target=lambda: digest.append(volume_content_sha256(array, origin, spacing, direction)), daemon=True
        )
        hasher.start()
        try:
            result = self._json("PUT", path, body=body, headers=headers, timeout=max(self.timeout, 600.0))
        except RequestRejected as exc:
            hasher.join()
            if not uids or exc.code != "volume_header_invalid" or "unknown field" not in str(exc):  # an old server
                raise
            return self.upload_volume(session_id, array, origin, spacing, direction, modality, compress=compress)
        hasher.join()
        if result.get("content_sha256") != digest[0]:
            raise ServerError(
                "the volume the server received differs from the one sent (content hashes differ): send it again."
            )
        if len(self._hashes) >= 16:
            self._hashes.pop(next(iter(self._hashes)))
        self._hashes[key] = digest[0]
        return result

    # -- rounds -----------------------------------------------------------------------------------------------------
    def ask(
        self,
        session_id: str,
        question: str = "",
        *,
        prompts: Sequence[dict] = (),
        current_view: dict | None = None,
        window: str | None = None,
        propagate: bool = True,
        on_reasoning: Callable[[str], None] | None = None,
        on_progress: Callable[[str, float, dict], None] | None = None,
        on_target: Callable[[Entity], None] | None = None,
        on_event: Callable[[RoundEvent], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> RoundResult:
        """One round. Callbacks run on the calling thread as events arrive; setting ``cancel`` (from another
        thread) asks the server to cancel, and this call then raises ``RoundCancelled``.

        ``prompts``: ``{"slice": k, "box": [i0, j0, i1, j1], "points": [[i, j]], "point_labels": [1], "label": ..}``
        in voxel indices; with prompts the reasoner is not asked.
        """
        body = {"question": question, "prompts": list(prompts), "propagate": propagate}
        if current_view is not None:
            body["current_view"] = current_view
        if window is not None:
            body["window"] = window
        path = f"{API}/sessions/{_seg(session_id)}/rounds"
        return self._round(session_id, path, body, on_reasoning, on_progress, on_target, on_event, cancel)

    def refine(
        self,
        session_id: str,
        entity_id: str,
        *,
        box: Sequence[int] | None = None,
        erase: Sequence[int] | None = None,
        points: Sequence[Sequence[int]] = (),
        view: dict | None = None,
        window: str | None = None,
        on_progress: Callable[[str, float, dict], None] | None = None,
        on_target: Callable[[Entity], None] | None = None,
        on_event: Callable[[RoundEvent], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> RoundResult:
        """Correct an entity from one box, as a round (streamed, cancellable and undone like one): ``box`` adds
        (that slice segmented again, propagated until it rejoins the mask), ``erase`` removes what lies in the box.

        Both are ``[u0, v0, u1, v1, slice]`` in the plane's voxel axes ((i, j) on axial slice k unless ``view``
        ``{"orientation": "coronal"|"sagittal", "slice": n}`` says otherwise); ``points`` ``[[u, v, slice(, 0|1)]]``
        on the box's slice. The result's one entity is the refined one (same id); ``RoundResult.refine`` says which
        slices changed and why the correction stopped on each side."""
        body: dict[str, Any] = {"points": [list(p) for p in points]}
        if box is not None:
            body["box"] = list(box)
        if erase is not None:
            body["erase"] = list(erase)
        if view is not None:
            body["view"] = dict(view)
        if window is not None:
            body["window"] = window
        path = f"{API}/sessions/{_seg(session_id)}/entities/{_seg(entity_id)}/refine"
        return self._round(session_id, path, body, None, on_progress, on_target, on_event, cancel)

    def _round(self, session_id, path, body, on_reasoning, on_progress, on_target, on_event, cancel) -> RoundResult:
        """POST a round-like request and read its event stream (``ask`` and ``refine`` alike)."""
        conn = self._connection(fresh=True, timeout=_STREAM_IDLE_TIMEOUT_S)
        response = self._send(conn, "POST", path, _json_bytes(body), {})
        if response.status != 200:
            error = self._error_from(response)
            conn.close()
            raise error
        round_id = response.getheader(ROUND_ID_HEADER, "")
        finished = threading.Event()
        watcher = None
        if cancel is not None:
            watcher = threading.Thread(
                target=self._watch_cancel, args=(session_id, round_id, cancel, finished, conn), daemon=True
            )
            watcher.start()
        try:
            return self._read_round(response, round_id, on_reasoning, on_progress, on_target, on_event, cancel)
        finally:
            finished.set()
            conn.close()

    def cancel_round(self, session_id: str, round_id: str = "current") -> dict:
        return self._json("POST", f"{API}/sessions/{_seg(session_id)}/rounds/{_seg(round_id)}/cancel")

    def session_archive(self, session_id: str) -> bytes:
        """The whole conversation as zip bytes (session folder format): keep it to continue after the session is gone."""
        conn = self._connection(fresh=True)
        try:
            response = self._send(conn, "GET", f"{API}/sessions/{_seg(session_id)}/archive", None, {})
            payload = response.read()
            if response.status != 200:
                raise self._error_from(response, payload)
            return payload
        finally:
            conn.close()

    def restore_session(self, archive: bytes) -> str:
        """A new session continuing the conversation in ``archive`` (from ``session_archive``); send its volume next."""
        headers = {"Content-Type": "application/zip"}
        return self._json("POST", f"{API}/sessions/restore", body=archive, headers=headers)["id"]

    def rounds(self, session_id: str) -> list[dict]:
        return self._json("GET", f"{API}/sessions/{_seg(session_id)}/rounds")["rounds"]

    def undo(self, session_id: str) -> dict:
        return self._json("POST", f"{API}/sessions/{_seg(session_id)}/undo")

    # -- entities -----------------------------------------------------------------------------------------------------
    def entities(self, session_id: str, *, masks: bool = False) -> list[Entity]:
        query = "?masks=true" if masks else ""
        data = self._json("GET", f"{API}/sessions/{_seg(session_id)}/entities{query}")
        return [Entity.from_json(e) for e in data["entities"]]

    def entity(self, session_id: str, entity_id: str, *, mask: bool = False) -> Entity:
        query = "?mask=true" if mask else ""
        return Entity.from_json(
            self._json("GET", f"{API}/sessions/{_seg(session_id)}/entities/{_seg(entity_id)}{query}")
        )

    def entity_mask(self, session_id: str, entity_id: str) -> CompactMask:
        data = self._json("GET", f"{API}/sessions/{_seg(session_id)}/entities/{_seg(entity_id)}/mask")
        return CompactMask.from_json({k: data[k] for k in ("box", "bits", "encoding", "voxels")})

    def replace_mask(self, session_id: str, entity_id: str, mask: CompactMask | np.ndarray) -> Entity:
        """The user's edit: a dense ``[k, j, i]`` bool array or a ``CompactMask``."""
        compact = mask if isinstance(mask, CompactMask) else CompactMask.from_dense(np.asarray(mask, dtype=bool))
        path = f"{API}/sessions/{_seg(session_id)}/entities/{_seg(entity_id)}/mask"
        return Entity.from_json(self._json("PUT", path, json_body=compact.to_json()))

    def update_entity(
        self,
        session_id: str,
        entity_id: str,
        *,
        label: str | None = None,
        color: Sequence[int] | None = None,
        review: str | None = None,
    ) -> Entity:
        patch = {
            k: v
            for k, v in (("label", label), ("color", list(color) if color else None), ("review", review))
            if v is not None
        }
        path = f"{API}/sessions/{_seg(session_id)}/entities/{_seg(entity_id)}"
        return Entity.from_json(self._json("PATCH", path, json_body=patch))

    def delete_entity(self, session_id: str, entity_id: str) -> None:
        self._json("DELETE", f"{API}/sessions/{_seg(session_id)}/entities/{_seg(entity_id)}")

    def export(self, session_id: str, fmt: str) -> bytes:
        """The exported file (or a zip of several), as the server's exporter wrote it."""
        conn = self._connection(fresh=True)
        try:
            response = self._send(
                conn, "POST", f"{API}/sessions/{_seg(session_id)}/export", _json_bytes({"format": fmt}), {}
            )
            if response.status != 200:
                raise self._error_from(response)
            return response.read()
        finally:
            conn.close()

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
            body = _json_bytes(json_body)
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
            conn._medseg_used = True  # type: ignore[attr-defined]
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
            "X-MedSeg-Affinity": self.affinity,
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
                    f"no MedSegReasoning server answers at {self.url} ({_reason(exc)}): start it, or check the address."
                ) from None
            try:  # the server may have refused the body (too large) and closed: read its answer if it sent one
                return conn.getresponse()
            except (OSError, http.client.HTTPException):
                raise ServerGone(
                    f"the server at {self.url} closed the connection while the request was being sent ({_reason(exc)})."
                ) from None
        try:
            return conn.getresponse()
        except TimeoutError:
            raise ServerGone(f"the server at {self.url} did not answer within {conn.timeout:.0f} s.") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ServerGone(f"the server at {self.url} stopped answering ({_reason(exc)}).") from None

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
        return _error_for(response.status, code, message, headers)

    # -- streaming ----------------------------------------------------------------------------------------------------
    def _read_round(self, response, round_id, on_reasoning, on_progress, on_target, on_event, cancel) -> RoundResult:
        entities: list[Entity] = []
        events: list[tuple[str, dict]] = []
        error: dict | None = None
        done: dict | None = None
        for event in _sse_events(response, self.url):
            events.append((event.name, event.data))
            if on_event is not None:
                on_event(event)
            if event.name == "reasoning" and on_reasoning is not None:
                on_reasoning(event.data.get("text", ""))
            elif event.name == "progress" and on_progress is not None:
                on_progress(event.data.get("stage", ""), float(event.data.get("fraction", 0.0)), event.data)
            elif event.name == "target":
                entity = Entity.from_json(event.data["entity"])
                entities.append(entity)
                if on_target is not None:
                    on_target(entity)
            elif event.name == "error":
                error = event.data
            elif event.name == "done":
                done = event.data
                break
        if done is None:
            raise ServerGone(
                f"the connection to the server at {self.url} was lost during the round (the server stopped or the "
                "network failed); nothing of the round was kept: ask again."
            )
        status = done.get("status")
        if status == "cancelled":
            raise RoundCancelled(
                f"the round was cancelled ({done.get('reason', 'cancelled')}); nothing of it was kept.",
                code="cancelled",
            )
        if status == "failed":
            error = error or {"status": 500, "code": "round_failed", "message": "the round failed."}
            cls = ModelUnavailable if error.get("code") in ("reasoner_missing", "model_missing") else RoundFailed
            raise cls(f"the round failed: {error['message']}", status=error.get("status"), code=error.get("code"))
        return RoundResult(
            round=done.get("round"),
            round_id=done.get("round_id", round_id),
            status=str(status),
            reasoning=done.get("reasoning", ""),
            clarification=done.get("clarification"),
            entities=entities,
            targets=done.get("targets", []),
            timings=done.get("timings", {}),
            events=events,
            refine=done.get("refine"),
        )

    def _watch_cancel(self, session_id, round_id, cancel: threading.Event, finished: threading.Event, conn) -> None:
        while not finished.is_set():
            if cancel.wait(0.1):
                try:
                    self.cancel_round(session_id, round_id or "current")
                except (NotFound, Conflict):
                    return  # it finished meanwhile
                except ClientError:  # the server is gone: unblock the reader
                    with contextlib.suppress(OSError, AttributeError):
                        conn.sock.shutdown(socket.SHUT_RDWR)
                return


def _sse_events(response: http.client.HTTPResponse, url: str) -> Iterator[RoundEvent]:
    """Parse a ``text/event-stream`` body line by line (comments are heartbeats)."""
    name, data_lines, event_id = "message", [], None
    while True:
        try:
            raw = response.readline()
        except TimeoutError:
            raise ServerGone(
                f"the server at {url} sent nothing for {_STREAM_IDLE_TIMEOUT_S:.0f} s during the round: it is stuck or gone."
            ) from None
        except (OSError, http.client.HTTPException):
            return  # connection lost: the caller reports it (no "done" came)
        if not raw:
            return
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data_lines:
                try:
                    data = json.loads("\n".join(data_lines))
                except ValueError:
                    data = {"text": "\n".join(data_lines)}
                yield RoundEvent(name, data, event_id)
            name, data_lines, event_id = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data_lines.append(value)
            elif key == "id":
                event_id = int(value) if value.isdigit() else None


def volume_content_sha256(
    array: np.ndarray,
    origin: Sequence[float],
    spacing: Sequence[float],
    direction: Sequence[Sequence[float]] | np.ndarray,
) -> str:
    """The content hash the server computes (``Volume.content_hash``): dtype, shape, rounded affine, voxels."""
    array = np.ascontiguousarray(array)
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, dtype=float).reshape(3, 3) * np.asarray(spacing, dtype=float)[None, :]
    affine[:3, 3] = np.asarray(origin, dtype=float)
    h = hashlib.sha256()
    h.update(str(array.dtype).encode())
    h.update(np.asarray(array.shape, dtype=np.int64).tobytes())
    h.update(np.asarray(affine, dtype=np.float64).round(6).tobytes())
    h.update(memoryview(array).cast("B"))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Start-or-connect: a server as a child process


class LocalServer:
    """``medseg-reasoning serve`` as a child process of this one (its own process group), on 127.0.0.1.

    ``command`` is how to run the server (default: ``medseg-reasoning serve`` found on PATH); Slicer points it at
    the engine's own Python environment, which has torch, while Slicer's has not. ``--host 127.0.0.1 --port 0`` are
    appended, then ``args``.
    """

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        startup_timeout: float = 300.0,
    ) -> None:
        self.command = list(command) if command else _default_command()
        self.args = list(args)
        self.env = env
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.ready: dict | None = None
        self.client: MedSegClient | None = None
        self._stdout: deque[str] = deque(maxlen=200)
        self._stderr: deque[str] = deque(maxlen=200)
        self._ready_event = threading.Event()

    def start(self, cancel: threading.Event | None = None) -> MedSegClient:
        """Launch, wait for the ready line and for health; ``cancel`` (another thread) kills it while starting."""
        if self.process is not None and self.process.poll() is None and self.client is not None:
            return self.client
        self.ready, self.client = None, None
        self._ready_event.clear()
        argv = [*self.command, "--host", "127.0.0.1", "--port", "0", *self.args]
        kwargs: dict[str, Any] = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True  # own process group: kill() reaches every descendant
        else:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        from .childenv import child_environment

        env = child_environment({**(self.env or {}), "PYTHONUNBUFFERED": "1"})
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=self.cwd,
                **kwargs,
            )
        except OSError as exc:
            raise ServerStartFailed(
                f"the server could not be started ({' '.join(argv[:2])}: {_reason(exc)})."
            ) from None
        atexit.register(self.stop)
        for stream, sink, watch in (
            (self.process.stdout, self._stdout, True),
            (self.process.stderr, self._stderr, False),
        ):
            threading.Thread(target=self._drain, args=(stream, sink, watch), daemon=True).start()
        try:
            return self._await_ready(cancel)
        except BaseException:
            self.kill()  # whatever went wrong, no half-started server is left behind
            raise

    def _await_ready(self, cancel: threading.Event | None) -> MedSegClient:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while not self._ready_event.wait(0.05):
            if cancel is not None and cancel.is_set():
                raise ServerStartFailed("starting the server was cancelled.")
            if self.process.poll() is not None:
                time.sleep(0.1)  # let the drain threads collect the last lines
                raise self._start_error()
            if time.monotonic() > deadline:
                raise ServerStartFailed(f"the server did not become ready within {self.startup_timeout:.0f} s.")
        assert self.ready is not None
        token = read_token_file(Path(self.ready["token_file"]))
        self.client = MedSegClient(self.ready["url"], token)
        self.client.wait_for_health(timeout=max(deadline - time.monotonic(), 5.0), cancel=cancel)
        return self.client

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the server to stop (SIGTERM to its group), then kill what is left after ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal(signal.SIGTERM if os.name == "posix" else signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._forget()

    def kill(self) -> None:
        """End the server and every process it started, at once (Cancel)."""
        if self.process is None:
            return
        if os.name == "posix":
            self._signal(signal.SIGKILL)
        else:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True, check=False)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._forget()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _signal(self, sig: int) -> None:
        assert self.process is not None
        try:
            if os.name == "posix":
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def _forget(self) -> None:
        atexit.unregister(self.stop)

    def _drain(self, stream, sink: deque[str], watch_ready: bool) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            sink.append(line)
            if watch_ready and line.startswith(READY_PREFIX) and not self._ready_event.is_set():
                try:
                    self.ready = json.loads(line[len(READY_PREFIX) :])
                except ValueError:
                    continue
                self._ready_event.set()
        stream.close()

    def _start_error(self) -> ClientError:
        code = self.process.returncode if self.process else None
        said = [line for line in self._stderr if "error:" in line]
        message = said[-1].split("error:", 1)[1].strip() if said else (self.log_tail(5) or "no message")
        text = f"the server stopped while starting (exit code {code}): {message}"
        if code == 3:
            return ModelUnavailable(text, code="model_missing")
        return ServerStartFailed(text, code="start_failed")


def connect_or_start(
    url: str | None = None,
    token: str | None = None,
    *,
    server_command: Sequence[str] | None = None,
    server_args: Sequence[str] = (),
    ca_file: str | Path | None = None,
    cancel: threading.Event | None = None,
) -> tuple[MedSegClient, LocalServer | None]:
    """A configured server (``url`` + ``token``), checked with ``/v1/health``; else a local one, started now.

    A configured server that does not answer is an error, not a reason to start a local one: the user chose it.
    """
    if url:
        if not token:
            raise AuthenticationFailed("a server address was given without a token: add the token for that server.")
        client = MedSegClient(url, token, ca_file=ca_file)
        client.health()
        return client, None
    server = LocalServer(server_command, args=server_args)
    return server.start(cancel=cancel), server


def read_token_file(path: Path) -> str:
    """The first token of a token file (``name:token`` or a bare token per line)."""
    try:
        for line in Path(path).read_text("utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                return line.split(":", 1)[1].strip() if ":" in line else line
    except OSError as exc:
        raise AuthenticationFailed(f"the token file {path} cannot be read ({_reason(exc)}).") from None
    raise AuthenticationFailed(f"the token file {path} holds no token.")


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _default_command() -> list[str]:
    exe = Path(sys.executable).with_name("medseg-reasoning")
    if exe.exists():
        return [str(exe), "serve"]
    return ["medseg-reasoning", "serve"]


def _seg(text: str) -> str:
    return quote(str(text), safe="")


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=_plain).encode("utf-8")


def _plain(value: Any) -> Any:
    """numpy numbers and arrays in prompts (what Slicer's array helpers hand out) as plain JSON values."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} cannot be sent as JSON")


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def decode_mask_bits(box: Sequence[int], bits_b64: str) -> np.ndarray:
    """The box's voxels as a bool array from the wire's base64 bits (for callers that do not want ``CompactMask``)."""
    return CompactMask.from_json({"box": list(box), "bits": bits_b64}).crop()


__all__ = [
    "AuthenticationFailed",
    "ClientError",
    "Conflict",
    "Entity",
    "LocalServer",
    "MedSegClient",
    "ModelUnavailable",
    "NotFound",
    "RequestRejected",
    "RoundCancelled",
    "RoundEvent",
    "RoundFailed",
    "RoundResult",
    "ServerBusy",
    "ServerError",
    "ServerGone",
    "ServerStartFailed",
    "ServerUnreachable",
    "connect_or_start",
    "read_token_file",
    "volume_content_sha256",
]


def chat_backend(url: str, token: str, **kw: Any) -> Any:
    """The chat panel's backend for the server at ``url``: a ``slicer.backend_link.BackendLink`` over a new client.

    ``ca_file``, ``timeout`` and ``affinity`` go to ``MedSegClient``; the rest (``session_id``, ``before_round``,
    ``on_target``, ``propagate``, ``window``) to the link. Imported late: scripts using the client never load it.
    """
    from .slicer.backend_link import BackendLink

    client_kw = {key: kw.pop(key) for key in ("ca_file", "timeout", "affinity") if key in kw}
    return BackendLink(MedSegClient(url, token, **client_kw), **kw)
