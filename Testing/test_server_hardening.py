"""Issue #15, the server's half: a token file others can read (item 7), the audit log under unauthenticated
requests (item 5), per-token session quotas and eviction (item 6), error codes (item 14)."""

from __future__ import annotations

import json

import httpx
import pytest
from server_fixtures import live_server, scripted_engine, write_tokens

from MedSegReasoning.server.audit import MAX_ROUTE_CHARS, UNAUTHENTICATED_LINES_PER_MINUTE
from MedSegReasoning.server.cli import main as serve_main


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
