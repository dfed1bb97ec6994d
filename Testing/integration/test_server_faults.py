"""Every bad input and fault of the server issue, over real HTTP: the right status, a JSON error with a sentence, a
server that keeps serving, and saved sessions that stay intact."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import uuid
import zipfile
import zlib

import httpx
import numpy as np
import pytest
from support.server import (
    BOX_A,
    live_server,
    offline_terminology,
    read_sse,
    scripted_engine,
    small_volume,
    volume_meta,
    write_replay,
)

from MedSegReasoning.dialogue import load_session
from MedSegReasoning.server.config import Limits
from MedSegReasoning.volume.core import Volume

SMALL_LIMITS = Limits(max_upload_bytes=64 * 1024, max_voxels=20_000, max_json_bytes=64 * 1024)


@pytest.fixture
def served(tmp_path):
    """A live server (scripted segmenter, replay reasoner, small limits) and an httpx client per token."""
    replay = write_replay(tmp_path / "answers.jsonl", rounds=6)
    engine = scripted_engine(replay)
    with live_server(tmp_path, engine, limits=SMALL_LIMITS, max_sessions=4) as (server, tokens):
        clients = {
            name: httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {t}"}, timeout=15)
            for name, t in tokens.items()
        }
        yield server, clients, tokens
        for c in clients.values():
            c.close()


def _error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and error["message"].endswith(".") and len(error["message"]) > 20
    if code is not None:
        assert error["code"] == code, error
    return error


def _session_with_volume(http: httpx.Client, volume=None) -> str:
    volume = volume if volume is not None else small_volume()
    sid = http.post("/v1/sessions").json()["id"]
    put = http.put(
        f"/v1/sessions/{sid}/volume",
        content=volume.array.tobytes(),
        headers={"X-MedSeg-Volume": json.dumps(volume_meta(volume))},
    )
    assert put.status_code == 200, put.text
    return sid


def _round(http: httpx.Client, sid: str, body: dict) -> list[tuple[str, dict]]:
    with http.stream("POST", f"/v1/sessions/{sid}/rounds", json=body) as response:
        assert response.status_code == 200, response.read()
        return read_sse(response)


def _still_serving(http: httpx.Client) -> None:
    assert http.get("/v1/health").json()["status"] == "ok"


# ---------------------------------------------------------------------------------------------------------------
# tokens


def test_no_token_and_wrong_token(served):
    server, clients, tokens = served
    for path in ("/v1/health", "/v1/capabilities", "/v1/sessions", "/openapi.json"):
        response = httpx.get(server.url + path)
        _error(response, 401, "token_missing")
        assert response.headers["www-authenticate"] == "Bearer"
    _error(httpx.get(server.url + "/v1/health", headers={"Authorization": "Bearer " + "x" * 32}), 401, "token_invalid")
    _error(httpx.get(server.url + "/v1/health", headers={"Authorization": tokens["alice"]}), 401, "token_invalid")
    _still_serving(clients["alice"])
    audit = (server.config.resolved_state_dir() / "audit.log").read_text()
    assert '"status":401' in audit and tokens["alice"] not in audit


# ---------------------------------------------------------------------------------------------------------------
# uploads


def test_oversized_body_is_refused_before_it_is_read(served):
    server, clients, tokens = served
    sid = clients["alice"].post("/v1/sessions").json()["id"]
    meta = json.dumps(volume_meta(small_volume()))
    # a declared 10 GB body: refused from the headers alone (the body is never sent)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            (
                f"PUT /v1/sessions/{sid}/volume HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tokens['alice']}\r\n"
                f"X-MedSeg-Volume: {meta}\r\nContent-Length: 10000000000\r\nExpect: 100-continue\r\n\r\n"
            ).encode()
        )
        reply = b""
        while chunk := sock.recv(65536):  # the server answers and closes
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413") and "body_too_large" in reply and "100 Continue" not in reply
    # a body of undeclared length (chunked) is cut off at the limit (float64: 98 kB, within the voxel limit)
    meta64 = json.dumps(volume_meta(small_volume(), dtype="float64"))
    chunks = (b"\0" * 8192 for _ in range(12))
    response = clients["alice"].put(f"/v1/sessions/{sid}/volume", content=chunks, headers={"X-MedSeg-Volume": meta64})
    _error(response, 413, "body_too_large")
    # JSON bodies have their own limit
    response = clients["alice"].post(f"/v1/sessions/{sid}/rounds", content=b"{" + b" " * 70000 + b"}")
    _error(response, 413, "body_too_large")
    _still_serving(clients["alice"])


def test_volume_checks(served):
    server, clients, _ = served
    http = clients["alice"]
    sid = http.post("/v1/sessions").json()["id"]
    volume = small_volume()

    def put(body: bytes, headers: dict | None = None, **meta):
        return http.put(
            f"/v1/sessions/{sid}/volume",
            content=body,
            headers={"X-MedSeg-Volume": json.dumps(volume_meta(volume, **meta)), **(headers or {})},
        )

    raw = volume.array.tobytes()
    _error(put(raw[:-2]), 400, "shape_mismatch")
    _error(put(raw, shape=[3, 64, 32]), 400, "shape_mismatch")
    _error(put(raw, shape=[3, 64]), 400, "invalid_shape")
    _error(put(raw, shape=[3, 200, 200]), 413, "volume_too_large")
    _error(put(raw, dtype="complex64"), 415, "unsupported_dtype")
    _error(put(raw, spacing=[1.0, -1.0, 3.0]), 400, "invalid_geometry")
    _error(put(raw, direction=[[1, 0, 0], [0, 2, 0], [0, 0, 1]]), 400, "invalid_geometry")
    _error(put(raw, direction=[[1, 0], [0, 1]]), 400, "invalid_geometry")
    _error(put(raw, origin=[0, "x", 0]), 400, "invalid_geometry")
    bad_origin = http.put(
        f"/v1/sessions/{sid}/volume",
        content=raw,
        headers={"X-MedSeg-Volume": json.dumps(volume_meta(volume)).replace('"origin": [-48.0', '"origin": [NaN')},
    )
    _error(bad_origin, 400, "invalid_geometry")
    _error(http.put(f"/v1/sessions/{sid}/volume", content=raw), 400, "volume_header_missing")
    _error(put(raw, content_sha256="0" * 64), 400, "hash_mismatch")
    _error(put(b"not deflate at all", {"Content-Encoding": "deflate"}), 400, "invalid_body")
    _error(put(raw, {"Content-Encoding": "br"}), 415, "unsupported_encoding")
    floats = np.full(volume.array.shape, np.nan, dtype=np.float32)  # some NaN are accepted (the CLI's rule); all is not
    _error(put(floats.tobytes(), dtype="float32"), 400, "invalid_voxels")
    _error(put(b"", content_sha256="1" * 64), 409, "volume_not_cached")
    # a compression bomb: far more voxels than announced
    _error(put(zlib.compress(b"\0" * (len(raw) * 4)), {"Content-Encoding": "deflate"}), 400, "shape_mismatch")
    # after all that the session has no volume, and a good upload (compressed) still works
    assert http.get(f"/v1/sessions/{sid}").json()["volume"] is None
    ok = put(zlib.compress(raw), {"Content-Encoding": "deflate"})
    assert ok.status_code == 200 and ok.json()["content_sha256"] == volume.content_hash()
    assert ok.json()["non_finite_voxels"] == 0 and ok.json()["warnings"] == []
    # some NaN voxels: accepted, counted and said (the CLI's rule), in a session of their own
    sid = http.post("/v1/sessions").json()["id"]
    some = volume.array.astype(np.float32)
    some[0, :2, :] = np.nan
    nan_volume = Volume(some, volume.geometry, volume.modality)
    answer = http.put(
        f"/v1/sessions/{sid}/volume",
        content=some.tobytes(),
        headers={"X-MedSeg-Volume": json.dumps(volume_meta(nan_volume))},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["non_finite_voxels"] == 2 * some.shape[2]
    assert f"{2 * some.shape[2]:,} of" in answer.json()["warnings"][0]


# ---------------------------------------------------------------------------------------------------------------
# sessions and rounds


def test_unknown_session_and_another_tokens_session(served):
    _, clients, _ = served
    sid = _session_with_volume(clients["alice"])
    for bad in (str(uuid.uuid4()), "..%2F..%2Fetc", "E1", sid[:-1]):
        _error(clients["alice"].get(f"/v1/sessions/{bad}/entities"), 404)
    _error(clients["bob"].get(f"/v1/sessions/{sid}"), 404, "session_not_found")
    _error(clients["bob"].delete(f"/v1/sessions/{sid}"), 404, "session_not_found")
    _error(clients["bob"].post(f"/v1/sessions/{sid}/rounds", json={"question": "x"}), 404, "session_not_found")
    _error(clients["alice"].get("/v1/nothing-here"), 404, "no_such_endpoint")
    assert clients["alice"].get(f"/v1/sessions/{sid}").status_code == 200


def test_round_without_volume_and_bad_round_bodies(served):
    _, clients, _ = served
    http = clients["alice"]
    sid = http.post("/v1/sessions").json()["id"]
    _error(http.post(f"/v1/sessions/{sid}/rounds", json={"question": "Segment the liver."}), 409, "volume_missing")
    sid = _session_with_volume(http)
    _error(http.post(f"/v1/sessions/{sid}/rounds", json={}), 400, "empty_round")
    _error(
        http.post(f"/v1/sessions/{sid}/rounds", json={"question": "x", "prompts": [{"slice": 1, "box": [1, 2, 3]}]}),
        422,
    )
    _error(http.post(f"/v1/sessions/{sid}/rounds", json={"question": "x", "colour": "red"}), 422, "invalid_body")
    _error(
        http.post(f"/v1/sessions/{sid}/rounds", content=b"{not json", headers={"Content-Type": "application/json"}),
        400,  # not JSON at all (issue #15): its own code; JSON of the wrong shape stays 422 invalid_body
        "invalid_json",
    )
    outside = {"prompts": [{"slice": 1, "box": [10, 10, 90, 20]}]}
    _error(http.post(f"/v1/sessions/{sid}/rounds", json=outside), 400, "invalid_input")
    _error(
        http.post(f"/v1/sessions/{sid}/rounds", json={"prompts": [{"slice": 9, "box": BOX_A}]}), 400, "invalid_input"
    )
    _error(http.post(f"/v1/sessions/{sid}/rounds", json={"question": "x" * 5000}), 400, "question_too_long")
    _error(http.post(f"/v1/sessions/{sid}/undo"), 409, "nothing_to_undo")
    events = _round(http, sid, {"question": "Segment the mass."})
    assert events[-1][1]["status"] == "ok"


def test_malformed_mask_edits(served):
    server, clients, _ = served
    http = clients["alice"]
    sid = _session_with_volume(http)
    _round(http, sid, {"prompts": [{"slice": 1, "box": BOX_A, "label": "mass"}], "propagate": False})
    before = http.get(f"/v1/sessions/{sid}/entities/E1/mask").json()
    url = f"/v1/sessions/{sid}/entities/E1/mask"
    three_bytes = base64.b64encode(b"\x01\x02\x03").decode()
    _error(http.put(url, json={"box": [0, 0, 0, 0, 0, 9], "bits": "!!!"}), 400, "invalid_input")
    _error(http.put(url, json={"box": [0, 0, 0, 0, 0, 9], "bits": three_bytes}), 400, "invalid_input")
    _error(http.put(url, json={"box": [0, 0, 0, 9, 0, 7], "bits": base64.b64encode(bytes(10)).decode()}), 400)
    _error(http.put(url, json={"box": [1, 2, 3], "bits": ""}), 400, "invalid_input")
    _error(http.put(url, json={"box": [0, 0, 0, 0, 0, 7], "bits": base64.b64encode(b"\x00").decode()}), 400)
    _error(http.put(url, json={"bits": three_bytes}), 422, "invalid_body")
    valid = {"box": before["box"], "bits": before["bits"]}
    _error(http.put(f"/v1/sessions/{sid}/entities/E9/mask", json=valid), 404, "entity_not_found")
    _error(http.patch(f"/v1/sessions/{sid}/entities/E1", json={"review": "maybe"}), 422)
    _error(http.patch(f"/v1/sessions/{sid}/entities/E1", json={"color": [1, 2, 300]}), 400)
    _error(http.patch(f"/v1/sessions/{sid}/entities/E1", json={}), 400, "empty_patch")
    assert http.get(url).json()["bits"] == before["bits"]
    state = server.runtime.store.get(sid, "alice")
    assert load_session(state.folder, terminology=offline_terminology()) == state.dialogue


def test_model_raising_mid_round(served):
    server, clients, _ = served
    http = clients["alice"]
    sid = _session_with_volume(http)
    _round(http, sid, {"prompts": [{"slice": 1, "box": BOX_A, "label": "mass"}], "propagate": False})
    state = server.runtime.store.get(sid, "alice")
    saved = (state.folder / "session.json").read_bytes()
    segmenter = server.engine.segmenter
    segmenter.fail_at = segmenter.calls + 2  # the key slice works, the first propagated slice crashes
    events = _round(http, sid, {"question": "Segment the bright lesion."})
    kinds = [name for name, _ in events]
    assert kinds[-2:] == ["error", "done"] and "target" not in kinds
    error = events[-2][1]
    assert error["status"] == 500 and error["code"] == "model_failed" and "RuntimeError" in error["message"]
    assert events[-1][1]["status"] == "failed"
    # nothing of the failed round was kept, in memory or on disk
    assert [e["id"] for e in http.get(f"/v1/sessions/{sid}/entities").json()["entities"]] == ["E1"]
    assert (state.folder / "session.json").read_bytes() == saved
    assert load_session(state.folder, terminology=offline_terminology()) == state.dialogue
    # the model works again: the same session and a new one carry on
    segmenter.fail_at = None
    retry = {"prompts": [{"slice": 1, "box": BOX_A, "label": "lesion"}]}  # the replay served round 2 already
    assert _round(http, sid, retry)[-1][1]["status"] == "ok"
    other = _session_with_volume(clients["bob"])
    assert _round(clients["bob"], other, {"question": "Segment the mass."})[-1][1]["status"] == "ok"


def test_client_disconnect_mid_stream_cancels_the_round(served):
    server, clients, tokens = served
    http = clients["alice"]
    sid = _session_with_volume(http)
    segmenter = server.engine.segmenter
    segmenter.gate = threading.Event()
    segmenter.started.clear()
    state = server.runtime.store.get(sid, "alice")
    with http.stream("POST", f"/v1/sessions/{sid}/rounds", json={"question": "Segment the mass."}) as response:
        # Keep the line iterator: one dropped after next() is closed at once, and closing it closes the
        # connection, so the client would leave before the model starts.
        lines = response.iter_lines()
        assert next(lines).startswith("event: progress")
        assert segmenter.started.wait(30)  # the model is busy with this round
        active = state.active
    # The client is gone. The server notices that asynchronously (the stream task is cancelled when uvicorn sees
    # the connection close); wait for it before the model may go on, else on a loaded machine the round can
    # finish first, and a round that finished before its client left is rightly kept.
    assert active is not None and active.cancel.wait(5), "the server did not notice the client leaving"
    segmenter.gate.set()  # the round is cancelled at its next model call
    deadline = time.monotonic() + 5
    while state.active is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    segmenter.gate = None
    assert state.active is None and state.dialogue.entities == {} and state.dialogue.rounds == []
    audit = (server.config.resolved_state_dir() / "audit.log").read_text()
    assert '"reason":"disconnect"' in audit and '"outcome":"cancelled"' in audit
    assert _round(http, sid, {"prompts": [{"slice": 1, "box": BOX_A}]})[-1][1]["status"] == "ok"


def test_cancel_endpoint(served):
    server, clients, _ = served
    http = clients["alice"]
    sid = _session_with_volume(http)
    segmenter = server.engine.segmenter
    segmenter.gate = threading.Event()
    segmenter.started.clear()
    result: dict = {}

    def ask():
        result["events"] = _round(
            httpx.Client(base_url=server.url, headers=http.headers, timeout=15), sid, {"question": "Segment the mass."}
        )

    thread = threading.Thread(target=ask)
    thread.start()
    assert segmenter.started.wait(30)
    _error(http.post(f"/v1/sessions/{sid}/rounds", json={"question": "again"}), 409, "round_running")
    _error(http.patch(f"/v1/sessions/{sid}/entities/E1", json={"label": "x"}), 409, "round_running")
    _error(http.post(f"/v1/sessions/{sid}/rounds/{uuid.uuid4()}/cancel"), 404, "round_not_found")
    assert http.post(f"/v1/sessions/{sid}/rounds/current/cancel").status_code == 202
    segmenter.gate.set()
    thread.join(10)
    segmenter.gate = None
    assert result["events"][-1][1]["status"] == "cancelled"
    assert http.get(f"/v1/sessions/{sid}/entities").json()["entities"] == []


def test_session_cap_retry_after_and_idle_expiry(tmp_path):
    engine = scripted_engine(None)
    with live_server(tmp_path, engine, max_sessions=2, session_idle_s=0.4, sweep_interval_s=0.1) as (server, tokens):
        http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tokens['alice']}"}, timeout=5)
        first = http.post("/v1/sessions").json()["id"]
        http.post("/v1/sessions")
        full = http.post("/v1/sessions")
        _error(full, 503, "too_many_sessions")
        assert 1 <= int(full.headers["retry-after"]) <= 2
        folder = server.config.sessions_dir / first
        assert folder.is_dir()
        time.sleep(0.8)
        _error(http.get(f"/v1/sessions/{first}"), 404, "session_not_found")
        assert not folder.exists()
        assert http.post("/v1/sessions").status_code == 201
        assert '"event":"session.expire"' in (server.config.resolved_state_dir() / "audit.log").read_text()


def test_delete_session_and_export_hook(served, monkeypatch):
    server, clients, _ = served
    http = clients["alice"]
    sid = _session_with_volume(http)
    _round(http, sid, {"prompts": [{"slice": 1, "box": BOX_A, "label": "mass"}], "propagate": False})
    url = f"/v1/sessions/{sid}/export"

    import MedSegReasoning.server.exporting as exporting

    real_import = exporting.importlib.import_module

    def without_export(name, *args):
        if name.startswith("MedSegReasoning.export"):
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(exporting.importlib, "import_module", without_export)
    _error(http.post(url, json={"format": "nifti"}), 501, "export_unavailable")
    monkeypatch.setattr(exporting.importlib, "import_module", real_import)

    # the interop exporters, through the session's saved folder: formats that need no DICOM series
    pytest.importorskip("MedSegReasoning.export.sources", reason="the interop exporters are not installed")
    nifti = http.post(url, json={"format": "nifti"})
    assert nifti.status_code == 200, nifti.text
    with zipfile.ZipFile(io.BytesIO(nifti.content)) as z:
        assert sorted(z.namelist()) == ["labels.json", "labels.nii.gz"]
    _error(http.post(url, json={"format": "seg"}), 400, "export_needs_source")
    _error(http.post(url, json={"format": "mp4"}), 400, "unknown_format")

    # the preferred contract, when the exporters offer it
    import MedSegReasoning.export as export_package

    def export_session(session, volume, fmt, out_dir):
        path = out_dir / f"{fmt}.txt"
        path.write_text(f"{len(session.entities)} entities on {volume.shape}")
        return [path]

    monkeypatch.setattr(export_package, "export_session", export_session, raising=False)
    response = http.post(url, json={"format": "summary"})
    assert response.status_code == 200 and response.content == b"1 entities on (3, 64, 64)"
    assert 'filename="summary.txt"' in response.headers["content-disposition"]
    folder = server.runtime.store.get(sid, "alice").folder
    assert http.delete(f"/v1/sessions/{sid}").status_code == 204
    assert not folder.exists()
    _error(http.get(f"/v1/sessions/{sid}"), 404)


def test_audit_log_holds_no_patient_data(served):
    server, clients, _ = served
    http = clients["alice"]
    sid = _session_with_volume(http)
    _round(http, sid, {"question": "Segment the mass of Jane Doe."})
    lines = (server.config.resolved_state_dir() / "audit.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert all({"time", "event", "token"} <= set(e) for e in entries)
    text = "\n".join(lines)
    assert "Jane Doe" not in text and "bits" not in text
    rounds = [e for e in entries if e["event"] == "round.end"]
    assert rounds[0]["token"] == "alice" and rounds[0]["segmenter"] == "scripted-oracle" and rounds[0]["session"] == sid
    assert rounds[0]["reasoner"].startswith("replay of")


def test_restart_on_the_same_state_folder_keeps_sessions(tmp_path):
    """What replicas sharing a session folder rely on: a session saved by one server process is picked up by the
    next (its owner only); the volume must be sent again and is checked against the saved content hash."""
    replay = write_replay(tmp_path / "answers.jsonl")
    volume = small_volume()
    with live_server(tmp_path, scripted_engine(replay)) as (server, tokens):
        http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tokens['alice']}"}, timeout=10)
        sid = _session_with_volume(http, volume)
        _round(http, sid, {"prompts": [{"slice": 1, "box": BOX_A, "label": "mass"}], "propagate": False})
    with live_server(tmp_path, scripted_engine(replay), tokens=tokens) as (server, _):  # the same users as before
        http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tokens['alice']}"}, timeout=10)
        _error(
            httpx.get(f"{server.url}/v1/sessions/{sid}", headers={"Authorization": f"Bearer {tokens['bob']}"}),
            404,
            "session_not_found",
        )
        info = http.get(f"/v1/sessions/{sid}").json()
        assert info["rounds"] == 1 and info["volume"]["attached"] is False
        _error(
            http.post(f"/v1/sessions/{sid}/rounds", json={"prompts": [{"slice": 1, "box": BOX_A}]}),
            409,
            "volume_missing",
        )
        other = small_volume()
        other.array[0, 0, 0] = 1
        _error(
            http.put(
                f"/v1/sessions/{sid}/volume",
                content=other.array.tobytes(),
                headers={"X-MedSeg-Volume": json.dumps(volume_meta(other))},
            ),
            409,
            "session_has_other_volume",
        )
        again = http.put(
            f"/v1/sessions/{sid}/volume",
            content=volume.array.tobytes(),
            headers={"X-MedSeg-Volume": json.dumps(volume_meta(volume))},
        )
        assert again.status_code == 200
        assert [e["id"] for e in http.get(f"/v1/sessions/{sid}/entities").json()["entities"]] == ["E1"]
        assert _round(http, sid, {"prompts": [{"slice": 1, "box": BOX_A}], "propagate": False})[-1][1]["status"] == "ok"
