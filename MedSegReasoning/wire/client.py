"""The torch-free client of the MedSegReasoning server, for the Slicer module and scripts.

``MedSegClient`` speaks every endpoint of the server (docs/wire-format.md): sessions, volumes sent once (by content
hash when the server still holds them), rounds whose Server-Sent Events reach callbacks as they arrive and that a
``threading.Event`` cancels, entities and their masks, archives and exports. Failures are typed ``ClientError``s
(``wire.errors``) whose message a user can act on. It imports the standard library and numpy only, because it runs
inside Slicer's Python, which must never load torch. How requests travel (connections, TLS, errors) is
``wire.transport``; starting a server on this machine is ``wire.process``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    ClientError,
    Conflict,
    ModelUnavailable,
    NotFound,
    RequestRejected,
    RoundCancelled,
    RoundFailed,
    ServerError,
    ServerGone,
    ServerUnreachable,
)
from .events import STREAM_IDLE_TIMEOUT_S, Entity, RoundEvent, RoundResult, sse_events
from .hashing import volume_content_sha256
from .headers import API, ROUND_ID_HEADER, VOLUME_HEADER
from .masks import CompactMask
from .network import is_loopback_host
from .transport import HttpTransport, json_bytes, url_segment

ProgressCallback = Callable[[str, float, dict[str, Any]], None]
"""``(stage, fraction, detail)`` of a round's progress events."""


class MedSegClient(HttpTransport):
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
        super().__init__(url, token, timeout=timeout, ca_file=ca_file, affinity=affinity)
        self._capabilities: dict[str, Any] | None = None
        self._hashes: dict[tuple[str, int], str] = {}  # volumes sent: (description, CRC-32) -> content hash

    # -- service --------------------------------------------------------------------------------------------------
    def health(self, timeout: float | None = None) -> dict[str, Any]:
        return self._json("GET", f"{API}/health", timeout=timeout)

    def capabilities(self, refresh: bool = False) -> dict[str, Any]:
        if self._capabilities is None or refresh:
            self._capabilities = self._json("GET", f"{API}/capabilities")
        return self._capabilities

    def wait_for_health(self, timeout: float = 30.0, cancel: threading.Event | None = None) -> dict[str, Any]:
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

    def session(self, session_id: str) -> dict[str, Any]:
        return self._json("GET", f"{API}/sessions/{url_segment(session_id)}")

    def sessions(self) -> list[dict[str, Any]]:
        return self._json("GET", f"{API}/sessions")["sessions"]

    def delete_session(self, session_id: str) -> None:
        self._json("DELETE", f"{API}/sessions/{url_segment(session_id)}")

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
    ) -> dict[str, Any]:
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
        if array.nbytes > limits.get("max_volume_bytes", array.nbytes):
            raise RequestRejected(
                f"the volume needs {array.nbytes:,} bytes as {dtype.name}, more than the server accepts "
                f"({limits['max_volume_bytes']:,}): crop it, or send a smaller voxel type."
            )
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
        data = memoryview(array).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers; its stubs lack Buffer
        key = (json.dumps(meta, sort_keys=True), zlib.crc32(data))
        path = f"{API}/sessions/{url_segment(session_id)}/volume"
        known = self._hashes.get(key)
        if known is not None:
            headers = {VOLUME_HEADER: json_bytes({**meta, "content_sha256": known}).decode()}
            try:
                return self._json("PUT", path, body=b"", headers=headers)  # by hash: nothing to send
            except Conflict as exc:
                if exc.code != "volume_not_cached":
                    raise
        headers = {VOLUME_HEADER: json_bytes(meta).decode(), "Content-Type": "application/octet-stream"}
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
        prompts: Sequence[dict[str, Any]] = (),
        current_view: dict[str, Any] | None = None,
        window: str | None = None,
        propagate: bool = True,
        on_reasoning: Callable[[str], None] | None = None,
        on_progress: ProgressCallback | None = None,
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
        path = f"{API}/sessions/{url_segment(session_id)}/rounds"
        return self._round(session_id, path, body, on_reasoning, on_progress, on_target, on_event, cancel)

    def refine(
        self,
        session_id: str,
        entity_id: str,
        *,
        box: Sequence[int] | None = None,
        erase: Sequence[int] | None = None,
        points: Sequence[Sequence[int]] = (),
        view: dict[str, Any] | None = None,
        window: str | None = None,
        on_progress: ProgressCallback | None = None,
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
        path = f"{API}/sessions/{url_segment(session_id)}/entities/{url_segment(entity_id)}/refine"
        return self._round(session_id, path, body, None, on_progress, on_target, on_event, cancel)

    def _round(
        self,
        session_id: str,
        path: str,
        body: dict[str, Any],
        on_reasoning: Callable[[str], None] | None,
        on_progress: ProgressCallback | None,
        on_target: Callable[[Entity], None] | None,
        on_event: Callable[[RoundEvent], None] | None,
        cancel: threading.Event | None,
    ) -> RoundResult:
        """POST a round-like request and read its event stream (``ask`` and ``refine`` alike)."""
        conn = self._connection(fresh=True, timeout=STREAM_IDLE_TIMEOUT_S)
        response = self._send(conn, "POST", path, json_bytes(body), {})
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

    def cancel_round(self, session_id: str, round_id: str = "current") -> dict[str, Any]:
        return self._json("POST", f"{API}/sessions/{url_segment(session_id)}/rounds/{url_segment(round_id)}/cancel")

    def session_archive(self, session_id: str) -> bytes:
        """The whole conversation as zip bytes (session folder format): keep it to continue after the session is gone."""
        conn = self._connection(fresh=True)
        try:
            response = self._send(conn, "GET", f"{API}/sessions/{url_segment(session_id)}/archive", None, {})
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

    def rounds(self, session_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"{API}/sessions/{url_segment(session_id)}/rounds")["rounds"]

    def undo(self, session_id: str) -> dict[str, Any]:
        return self._json("POST", f"{API}/sessions/{url_segment(session_id)}/undo")

    # -- entities -----------------------------------------------------------------------------------------------------
    def entities(self, session_id: str, *, masks: bool = False) -> list[Entity]:
        query = "?masks=true" if masks else ""
        data = self._json("GET", f"{API}/sessions/{url_segment(session_id)}/entities{query}")
        return [Entity.from_json(e) for e in data["entities"]]

    def entity(self, session_id: str, entity_id: str, *, mask: bool = False) -> Entity:
        query = "?mask=true" if mask else ""
        return Entity.from_json(
            self._json("GET", f"{API}/sessions/{url_segment(session_id)}/entities/{url_segment(entity_id)}{query}")
        )

    def entity_mask(self, session_id: str, entity_id: str) -> CompactMask:
        data = self._json("GET", f"{API}/sessions/{url_segment(session_id)}/entities/{url_segment(entity_id)}/mask")
        return CompactMask.from_json({k: data[k] for k in ("box", "bits", "encoding", "voxels")})

    def replace_mask(self, session_id: str, entity_id: str, mask: CompactMask | np.ndarray) -> Entity:
        """The user's edit: a dense ``[k, j, i]`` bool array or a ``CompactMask``."""
        compact = mask if isinstance(mask, CompactMask) else CompactMask.from_dense(np.asarray(mask, dtype=bool))
        path = f"{API}/sessions/{url_segment(session_id)}/entities/{url_segment(entity_id)}/mask"
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
        path = f"{API}/sessions/{url_segment(session_id)}/entities/{url_segment(entity_id)}"
        return Entity.from_json(self._json("PATCH", path, json_body=patch))

    def delete_entity(self, session_id: str, entity_id: str) -> None:
        self._json("DELETE", f"{API}/sessions/{url_segment(session_id)}/entities/{url_segment(entity_id)}")

    def export(self, session_id: str, fmt: str) -> bytes:
        """The exported file (or a zip of several), as the server's exporter wrote it."""
        conn = self._connection(fresh=True)
        try:
            response = self._send(
                conn, "POST", f"{API}/sessions/{url_segment(session_id)}/export", json_bytes({"format": fmt}), {}
            )
            if response.status != 200:
                raise self._error_from(response)
            return response.read()
        finally:
            conn.close()

    # -- streaming ----------------------------------------------------------------------------------------------------
    def _read_round(
        self,
        response: Any,
        round_id: str,
        on_reasoning: Callable[[str], None] | None,
        on_progress: ProgressCallback | None,
        on_target: Callable[[Entity], None] | None,
        on_event: Callable[[RoundEvent], None] | None,
        cancel: threading.Event | None,
    ) -> RoundResult:
        entities: list[Entity] = []
        events: list[tuple[str, dict[str, Any]]] = []
        error: dict[str, Any] | None = None
        done: dict[str, Any] | None = None
        for event in sse_events(response, self.url):
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

    def _watch_cancel(
        self, session_id: str, round_id: str, cancel: threading.Event, finished: threading.Event, conn: Any
    ) -> None:
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
