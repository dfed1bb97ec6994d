"""The torch-free client: typed errors, uploads by content hash, rounds with callbacks and cancel, and
start-or-connect with a real child-process server (including one that dies mid-round and a whole process tree)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from support.server import BOX_A, live_server, scripted_engine, small_volume, write_replay, write_tokens

from MedSegReasoning.server.auth import TokenStore, ensure_default_token_file
from MedSegReasoning.server.cli import main as serve_main
from MedSegReasoning.server.config import ServerConfig, is_loopback
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.wire.client import MedSegClient
from MedSegReasoning.wire.errors import (
    AuthenticationFailed,
    ClientError,
    Conflict,
    ModelUnavailable,
    NotFound,
    RequestRejected,
    RoundCancelled,
    ServerBusy,
    ServerGone,
    ServerStartFailed,
    ServerUnreachable,
)
from MedSegReasoning.wire.hashing import volume_content_sha256
from MedSegReasoning.wire.process import LocalServer, connect_or_start

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FIXTURES = HERE.parent / "support" / "server.py"  # run as a script: the scripted engine behind the real serve path


def _upload(client: MedSegClient, sid: str, volume: Volume, **kw) -> dict:
    g = volume.geometry
    return client.upload_volume(sid, volume.array, g.origin, g.spacing, g.direction, volume.modality, **kw)


def test_client_imports_neither_torch_nor_the_server():
    code = (
        "import sys, MedSegReasoning.wire.client, MedSegReasoning.wire.process; "
        "bad = [m for m in ('torch', 'fastapi', 'uvicorn', 'scipy', 'MedSegReasoning.server') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dtype", ["int16", "uint8", "float32"])
def test_content_hash_matches_the_engine(dtype):
    array = (np.arange(2 * 9 * 11) % 97).reshape(2, 9, 11).astype(dtype)
    direction = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    geometry = Geometry.from_arrays((1.5, -3.25, 7.0), (0.7, 0.7, 2.5), direction)
    expected = Volume(array, geometry).content_hash()
    assert volume_content_sha256(array, (1.5, -3.25, 7.0), (0.7, 0.7, 2.5), direction) == expected


def test_typed_errors_and_reuse_by_hash(tmp_path):
    replay = write_replay(tmp_path / "answers.jsonl")
    with live_server(tmp_path, scripted_engine(replay), max_sessions=2) as (server, tokens):
        with pytest.raises(AuthenticationFailed, match="not valid for this server"):
            MedSegClient(server.url, "w" * 32).health()
        client = MedSegClient(server.url, tokens["alice"])
        with pytest.raises(NotFound, match="no session"):
            client.session("00000000-0000-4000-8000-000000000000")
        sid = client.create_session()
        with pytest.raises(Conflict, match="no volume yet"):
            client.ask(sid, "Segment the mass.")
        volume = small_volume()
        first = _upload(client, sid, volume)
        assert not first["reused"]
        # a second session on the same volume: nothing is transferred
        other = client.create_session()
        assert _upload(client, other, volume)["reused"]
        with pytest.raises(ServerBusy) as busy:
            client.create_session()
        assert busy.value.retry_after is not None and busy.value.retry_after >= 1
        client.delete_session(other)
        with pytest.raises(RequestRejected, match="outside the slice"):
            client.ask(sid, prompts=[{"slice": 1, "box": [0, 0, 99, 99]}])
        with pytest.raises(RequestRejected, match="3D"):
            client.upload_volume(sid, np.zeros((4, 4), np.int16), (0, 0, 0), (1, 1, 1), np.eye(3))
        result = client.ask(sid, "Segment the mass.")
        assert [e.id for e in result.entities] == ["E1"]
    with pytest.raises(ServerUnreachable, match="no MedSegReasoning server answers"):
        MedSegClient(server.url, tokens["alice"], timeout=2).health()
    with pytest.raises(ClientError, match="https"):
        MedSegClient("http://10.1.2.3:8000", "t" * 32)


def test_model_missing_and_cancel(tmp_path):
    engine = scripted_engine(None, shape=(12, 64, 64), delay_s=0.3)  # no reasoner: questions alone cannot be answered
    with live_server(tmp_path, engine) as (server, tokens):
        client = MedSegClient(server.url, tokens["bob"])
        sid = client.create_session()
        _upload(client, sid, small_volume(shape=(12, 64, 64)))
        with pytest.raises(ModelUnavailable, match="without a reasoner"):
            client.ask(sid, "Segment the mass.")
        cancel = threading.Event()
        progress: list[str] = []

        def on_progress(stage, fraction, data):
            progress.append(stage)
            if stage == "segmenting" or "propagating slice" in stage:  # propagation reports per slice instead
                cancel.set()

        with pytest.raises(RoundCancelled, match="cancelled by the client"):
            client.ask(sid, prompts=[{"slice": 6, "box": BOX_A}], on_progress=on_progress, cancel=cancel)
        assert client.entities(sid) == [] and client.session(sid)["running_round"] is None
        done = client.ask(
            sid, prompts=[{"slice": np.int64(6), "box": np.array(BOX_A), "label": "mass"}], propagate=False
        )
        assert done.entities[0].label == "mass"


# ---------------------------------------------------------------------------------------------------------------
# start-or-connect with a real child process


def _local(tmp_path: Path, *extra: str) -> LocalServer:
    write_tokens(tmp_path / "tokens", ("local",))
    return LocalServer(
        [sys.executable, str(FIXTURES)],
        args=["--state-dir", str(tmp_path / "state"), "--token-file", str(tmp_path / "tokens"), *extra],
        cwd=ROOT,
        startup_timeout=60,
    )


def test_local_server_start_use_stop(tmp_path):
    server = _local(tmp_path)
    client = server.start()
    try:
        assert client.url.startswith("http://127.0.0.1:") and server.ready["pid"] == server.process.pid
        sid = client.create_session()
        _upload(client, sid, small_volume())
        result = client.ask(sid, "Segment the bright mass.")
        assert [e.label for e in result.entities] == ["mass"]
        assert server.start() is client  # already running: the same client
    finally:
        server.stop()
    assert not server.running and server.process.returncode is not None
    with pytest.raises(ServerUnreachable):
        client.health(timeout=2)


def test_server_dying_mid_round_and_killing_the_tree(tmp_path):
    server = _local(tmp_path, "--delay", "0.3", "--spawn-child")
    client = server.start()
    grandchild = int((tmp_path / "state" / "grandchild.pid").read_text())
    sid = client.create_session()
    _upload(client, sid, small_volume())

    def on_progress(stage, fraction, data):
        if stage.startswith("target"):  # the model is at work: pull the plug
            server.kill()

    with pytest.raises(ServerGone, match="lost during the round"):
        client.ask(sid, "Segment the bright mass.", on_progress=on_progress)
    assert not server.running
    for _ in range(50):
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild), "the server's own child must die with it"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (already dead, not yet reaped by its new parent) counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_start_failures_are_typed(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_CONFIG_DIR", str(tmp_path / "config"))
    missing = LocalServer(
        [sys.executable, "-m", "MedSegReasoning.server"],
        args=["--segmenter", f"sam:{tmp_path / 'missing.pth'}", "--state-dir", str(tmp_path / "state")],
        cwd=ROOT,
        startup_timeout=60,
    )
    with pytest.raises(ModelUnavailable, match="missing.pth does not exist"):
        missing.start()
    # the default token file was made (only the user may read it) before the model was looked for
    token_file = tmp_path / "config" / "server-token"
    assert token_file.is_file() and (token_file.stat().st_mode & 0o777) == 0o600
    with pytest.raises(ServerStartFailed, match="exit code 2"):
        LocalServer([sys.executable, "-m", "MedSegReasoning.server"], args=["--port", "x"], cwd=ROOT).start()
    with pytest.raises(ServerStartFailed, match="could not be started"):
        LocalServer([str(tmp_path / "no-such-program")]).start()
    with pytest.raises(AuthenticationFailed):
        connect_or_start("http://127.0.0.1:9", None)
    cancelled = threading.Event()
    cancelled.set()
    starting = _local(tmp_path)
    with pytest.raises(ServerStartFailed, match="cancelled"):
        starting.start(cancel=cancelled)
    assert not starting.running


# ---------------------------------------------------------------------------------------------------------------
# safety defaults of ``serve``


def test_non_loopback_bind_needs_an_explicit_token_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDSEG_CONFIG_DIR", str(tmp_path / "config"))
    assert serve_main(["--host", "0.0.0.0", "--state-dir", str(tmp_path)]) == 2
    assert "without an explicit token file" in capsys.readouterr().err
    assert not (tmp_path / "config").exists()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    ServerConfig(host="0.0.0.0", token_file=tmp_path / "tokens").check_bind()  # explicit tokens: allowed


def test_token_files(tmp_path, monkeypatch):
    path = tmp_path / "tokens"
    path.write_text("# staff\nalice:" + "a" * 20 + "\n\n" + "b" * 24 + "\n")
    path.chmod(0o600)
    store = TokenStore.from_file(path)
    assert store.identify("a" * 20) == "alice" and store.identify("b" * 24) == "token4"
    assert store.identify("a" * 19) is None and store.identify("") is None and store.identify(None) is None
    for bad, message in (("carol:short\n", "at least 16"), ("x y:" + "c" * 20 + "\n", "name"), ("", "holds no token")):
        path.write_text(bad)
        with pytest.raises(Exception, match=message):
            TokenStore.from_file(path)
    monkeypatch.setenv("MEDSEG_CONFIG_DIR", str(tmp_path / "cfg"))
    made = ensure_default_token_file()
    assert ensure_default_token_file() == made and len(TokenStore.from_file(made).tokens) == 1
    made.chmod(0o644)
    with pytest.raises(Exception, match="can be read by other users"):
        ensure_default_token_file()
    ready_like = json.dumps({"token_file": str(made)})
    assert "cfg" in ready_like
