"""Issue #15, the server's half: a token file others can read (item 7), the audit log under unauthenticated
requests (item 5), per-token session quotas and eviction (item 6), error codes (item 14)."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import httpx
import pytest
from support.server import live_server, scripted_engine, small_volume, volume_meta, write_tokens

from MedSegReasoning.server.audit import MAX_ROUTE_CHARS, UNAUTHENTICATED_LINES_PER_MINUTE
from MedSegReasoning.server.cli import main as serve_main
from MedSegReasoning.server.config import Limits
from MedSegReasoning.wire.client import MedSegClient
from MedSegReasoning.wire.errors import NotFound, RequestRejected, ServerBusy

ROOT = Path(__file__).resolve().parents[2]
WIRE_FORMAT = ROOT / "docs" / "wire-format.md"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_serve_refuses_a_token_file_others_can_read_and_says_the_chmod(tmp_path, capsys, mode):
    path = tmp_path / "tokens"
    write_tokens(path)
    path.chmod(mode)
    code = serve_main(["--token-file", str(path), "--state-dir", str(tmp_path / "state"), "--segmenter", "none"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"chmod 600 {path}" in err and "Traceback" not in err
    assert "loading models" not in err, "refused before any model loads"


def test_unauthenticated_requests_write_a_bounded_amount_to_the_audit_log(tmp_path):
    with live_server(tmp_path, scripted_engine(None)) as (server, tokens):
        log = server.config.audit_path
        before = log.stat().st_size
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for n in range(120):
                answer = http.get("/v1/sessions/" + "x" * 60_000, headers={"Authorization": f"Bearer wrong{n}"})
                assert answer.status_code == 401
            grown = log.stat().st_size - before
            # 30 lines a minute at most, each with the route cut to 200 characters
            assert grown < UNAUTHENTICATED_LINES_PER_MINUTE * 600, grown
            lines = [json.loads(line) for line in log.read_text("utf-8").splitlines()]
            refused = [e for e in lines if e.get("status") == 401]
            assert len(refused) == UNAUTHENTICATED_LINES_PER_MINUTE
            assert all(len(e["route"]) <= MAX_ROUTE_CHARS + 1 for e in refused)
            # an authenticated request is always logged, its long route cut as well
            ok = http.get("/v1/sessions", headers={"Authorization": f"Bearer {tokens['alice']}"})
            assert ok.status_code == 200
        last = json.loads(log.read_text("utf-8").splitlines()[-1])
        assert last["token"] == "alice" and last["status"] == 200


def test_one_token_cannot_take_every_session_slot(tmp_path):
    tokens = {"alice": "a" * 24, "bob": "b" * 24, "carol": "c" * 24}
    with live_server(tmp_path, scripted_engine(None), tokens=tokens, max_sessions=4, max_sessions_per_token=2) as (
        server,
        _,
    ):
        alice, bob, carol = (MedSegClient(server.url, tokens[n]) for n in ("alice", "bob", "carol"))
        alice.create_session(), alice.create_session()
        with pytest.raises(ServerBusy) as quota:
            alice.create_session()
        assert quota.value.status == 429 and quota.value.code == "session_quota_reached"
        assert "2 sessions" in str(quota.value) and quota.value.retry_after >= 1
        bob.create_session(), bob.create_session()  # the others still get theirs
        with pytest.raises(ServerBusy) as full:
            carol.create_session()
        assert full.value.status == 503 and full.value.code == "too_many_sessions"
        assert server.runtime.config.max_sessions_per_token == 2
        assert len(server.runtime.store) == 4


def test_idle_sessions_make_room_and_their_client_restores_the_archive(tmp_path):
    tokens = {"alice": "a" * 24, "bob": "b" * 24}
    with live_server(
        tmp_path, scripted_engine(None), tokens=tokens, max_sessions=3, max_sessions_per_token=2, evict_idle_s=0.5
    ) as (server, _):
        alice, bob = MedSegClient(server.url, tokens["alice"]), MedSegClient(server.url, tokens["bob"])
        oldest = alice.create_session()
        volume = small_volume()
        g = volume.geometry
        alice.upload_volume(oldest, volume.array, g.origin, g.spacing, g.direction, "CT")
        archive = alice.session_archive(oldest)
        time.sleep(0.6)
        newer = alice.create_session()
        third = alice.create_session()  # at alice's quota: her idle session makes room
        with pytest.raises(NotFound):
            alice.session(oldest)
        assert {s["id"] for s in alice.sessions()} == {newer, third}
        bob.create_session()  # the server is full now (3)
        time.sleep(0.6)
        bob.create_session()  # so the longest-idle session of the biggest holder (alice) goes
        assert [s["id"] for s in alice.sessions()] == [third]
        restored = alice.restore_session(archive)  # the client continues from its archive (bob's idle one goes)
        assert alice.session(restored)["rounds"] == 0 and len(bob.sessions()) == 1
        audit = server.config.audit_path.read_text("utf-8")
        assert audit.count('"event":"session.evict"') == 3
        assert not (server.config.sessions_dir / oldest).exists()


def test_serve_documents_the_quota_options(capsys):
    with pytest.raises(SystemExit):
        serve_main(["--help"])
    out = capsys.readouterr().out
    assert "--max-sessions-per-token" in out and "--evict-idle-minutes" in out


@pytest.mark.parametrize("body", [b"{bad", b"\xff\xfe{", b'{"question": "x",}'])
def test_a_malformed_json_body_gets_its_own_listed_code(tmp_path, body):
    with live_server(tmp_path, scripted_engine(None)) as (server, tokens):
        http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tokens['alice']}"}, timeout=10)
        sid = http.post("/v1/sessions").json()["id"]
        answer = http.post(f"/v1/sessions/{sid}/rounds", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "invalid_json" and "not valid JSON" in error["message"]
        assert "`invalid_json`" in WIRE_FORMAT.read_text("utf-8")


def _codes_the_server_sends() -> set[str]:
    """Every error code written in the server's source (and the archive checks it answers with)."""
    calls = {"ApiError": 1, "bad_request": 0, "conflict": 0, "not_found": 0, "ArchiveRefused": 0}
    files = [
        *sorted((ROOT / "MedSegReasoning" / "server").rglob("*.py")),
        ROOT / "MedSegReasoning/wire/session_archive.py",
    ]
    codes: set[str] = set()
    for path in files:
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", None))
                if name in calls and len(node.args) > calls[name]:
                    arg = node.args[calls[name]]
                    for value in (arg.body, arg.orelse) if isinstance(arg, ast.IfExp) else (arg,):
                        if isinstance(value, ast.Constant) and isinstance(value.value, str):
                            codes.add(value.value + ("_not_found" if name == "not_found" else ""))
            if isinstance(node, ast.Dict) and path.name == "error_handlers.py":  # status -> code of HTTP errors
                codes.update(
                    v.value
                    for v in node.values
                    if isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value.isidentifier()
                )
    codes.update({"invalid_request", "internal_error"})  # error_handlers' fallbacks
    return codes


def test_docs_list_every_error_code_the_server_sends():
    codes = _codes_the_server_sends()
    assert {"body_too_large", "session_quota_reached", "wire_version_unsupported", "invalid_json"} <= codes
    doc = WIRE_FORMAT.read_text("utf-8")
    errors = doc[doc.index("## Errors") : doc.index("## Endpoints")]
    missing = sorted(code for code in codes if f"`{code}`" not in errors)
    assert not missing, f"docs/wire-format.md's Errors table lacks {missing}"


def test_the_openapi_document_names_the_archive_and_export_content_types(tmp_path):
    """Found by schemathesis (ST105): the archive answered application/zip where the schema said JSON."""
    with live_server(tmp_path, scripted_engine(None)) as (server, tokens):
        doc = httpx.get(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {tokens['alice']}"}).json()
    archive = doc["paths"]["/v1/sessions/{session_id}/archive"]["get"]["responses"]["200"]["content"]
    export = doc["paths"]["/v1/sessions/{session_id}/export"]["post"]["responses"]["200"]["content"]
    assert set(archive) == {"application/zip"}
    assert set(export) == {"application/octet-stream", "application/zip"}


def test_a_volume_above_the_decoded_limit_is_refused_from_its_header(tmp_path):
    limits = Limits(max_volume_bytes=20_000)
    with live_server(tmp_path, scripted_engine(None), limits=limits) as (server, tokens):
        client = MedSegClient(server.url, tokens["alice"])
        sid = client.create_session()
        volume = small_volume()  # 3 x 64 x 64 int16: 24,576 bytes
        g = volume.geometry
        with pytest.raises(RequestRejected, match="more than the server accepts"):
            client.upload_volume(sid, volume.array, g.origin, g.spacing, g.direction, "CT")
        meta = json.dumps(volume_meta(volume))
        answer = httpx.put(
            f"{server.url}/v1/sessions/{sid}/volume",
            content=b"\0" * 4,
            headers={"Authorization": f"Bearer {tokens['alice']}", "X-MedSeg-Volume": meta},
        )
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "volume_too_large"
        assert "--max-volume-mb" in answer.json()["error"]["message"]
        assert client.capabilities(refresh=True)["limits"]["max_volume_bytes"] == 20_000
