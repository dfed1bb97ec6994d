"""Client/server version negotiation (issue #15): the client names its version and wire version, the server names
what it serves; a mismatch is one sentence that says which side to update, in the client and in the Slicer panel.
Tested with a deliberately old and a deliberately new peer on either side; curl (no headers) is still served."""

from __future__ import annotations

import http.server
import json
import threading

import httpx
import numpy as np
import pytest
from support.server import live_server, scripted_engine, small_volume

from MedSegReasoning import __version__
from MedSegReasoning.server import guard
from MedSegReasoning.slicer.backend_link import BackendLink
from MedSegReasoning.wire import version
from MedSegReasoning.wire.client import MedSegClient
from MedSegReasoning.wire.errors import VersionMismatch


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("version"), scripted_engine(None)) as (server, tokens):
        yield server, tokens["alice"]


def _client(url: str, token: str, wire: int, release: str) -> MedSegClient:
    client = MedSegClient(url, token)
    client.wire_version, client.client_version = wire, release
    return client


def test_a_request_without_version_headers_is_served_as_the_current_wire_version(served):
    server, token = served
    answer = httpx.get(f"{server.url}/v1/health", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    assert answer.headers["x-medseg-wire-versions"] == f"{version.MIN_WIRE_VERSION}-{version.WIRE_VERSION}"
    assert answer.headers["x-medseg-server-version"] == __version__
    capabilities = MedSegClient(server.url, token).capabilities()
    assert capabilities["wire_versions"] == {"min": version.MIN_WIRE_VERSION, "max": version.WIRE_VERSION}


def test_an_unauthenticated_request_learns_no_version(served):
    server, _ = served
    answer = httpx.get(f"{server.url}/v1/health")
    assert answer.status_code == 401 and "x-medseg-server-version" not in answer.headers


def test_a_deliberately_new_client_is_told_to_have_the_server_updated(served):
    server, token = served
    client = _client(server.url, token, version.WIRE_VERSION + 1, "9.0.0")
    with pytest.raises(VersionMismatch) as refused:
        client.health()
    message = str(refused.value)
    assert refused.value.status == 400 and refused.value.code == "wire_version_unsupported"
    assert "newer than the server" in message and "update it to MedSegReasoning 9.0.0" in message
    assert message.count(". ") == 0 and message.endswith(".")


def test_a_deliberately_old_client_is_told_to_update_the_extension(served):
    server, token = served
    client = _client(server.url, token, version.MIN_WIRE_VERSION - 1, "0.0.1")
    with pytest.raises(VersionMismatch) as refused:
        client.create_session()
    assert "older than the server" in str(refused.value)
    assert f"update the MedSegReasoning extension or package to {__version__}" in str(refused.value)
    assert MedSegClient(server.url, token).sessions() == [], "the refused request did nothing"


def test_a_malformed_version_header_is_refused_in_a_sentence(served):
    server, token = served
    answer = httpx.get(
        f"{server.url}/v1/health", headers={"Authorization": f"Bearer {token}", "X-MedSeg-Wire-Version": "one"}
    )
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "wire_version_unsupported"


def test_a_deliberately_new_server_refuses_this_client(tmp_path, monkeypatch):
    monkeypatch.setattr(guard.wire_version, "MIN_WIRE_VERSION", version.WIRE_VERSION + 1)
    monkeypatch.setattr(guard.wire_version, "WIRE_VERSION", version.WIRE_VERSION + 2)
    with live_server(tmp_path, scripted_engine(None)) as (server, tokens):
        with pytest.raises(VersionMismatch, match="older than the server"):
            MedSegClient(server.url, tokens["alice"]).health()


class _OldServer(http.server.BaseHTTPRequestHandler):
    """A server that predates the check but names the (old) wire versions it serves: the client must notice."""

    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "version": "0.0.3", "sessions": 0, "queues": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-MedSeg-Wire-Versions", "0-0")
        self.send_header("X-MedSeg-Server-Version", "0.0.3")
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def old_server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OldServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_deliberately_old_server_is_noticed_by_the_client(old_server):
    with pytest.raises(VersionMismatch) as refused:
        MedSegClient(old_server, "t" * 24).health()
    message = str(refused.value)
    assert "newer than the server (MedSegReasoning 0.0.3, wire version 0)" in message
    assert "ask the server's operator to update it" in message


def test_the_slicer_panel_shows_the_mismatch_as_one_sentence(served, old_server):
    server, token = served
    volume = small_volume()
    g = volume.geometry
    for client, words in (
        (_client(server.url, token, version.WIRE_VERSION + 1, "9.0.0"), "newer than the server"),
        (MedSegClient(old_server, "t" * 24), "newer than the server (MedSegReasoning 0.0.3"),
    ):
        link = BackendLink(client)
        link.set_volume(np.asarray(volume.array), g.origin, g.spacing, g.direction, "CT")
        events = list(link.ask("Segment the bright mass.", {}))
        assert [e.kind for e in events][-2:] == ["error", "done"]
        error = next(e for e in events if e.kind == "error")
        assert words in error.data["message"] and "Traceback" not in error.data["message"]
        assert events[-1].data["status"] == "failed"
