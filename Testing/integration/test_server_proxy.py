"""The scale-out path of docs/deployment.md, run for real: nginx terminates TLS with the documented config (addresses
and paths substituted), two replicas share one session folder, the client verifies the certificate against the
department CA, a round streams through the proxy, and a session survives its replica going away."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support.external_tools import require_tool
from support.server import BOX_A, live_server, scripted_engine, small_volume, write_replay, write_tokens

from MedSegReasoning.wire.client import MedSegClient
from MedSegReasoning.wire.errors import Conflict, ServerUnreachable

ROOT = Path(__file__).resolve().parents[2]


def _documented_nginx_block() -> str:
    text = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```nginx\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "docs/deployment.md must hold exactly one nginx block"
    return blocks[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A department CA and a certificate it signed for localhost / 127.0.0.1."""
    openssl = require_tool("openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=Test Hospital CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return folder / "ca.pem", folder / "server.crt", folder / "server.key"


def _start_nginx(folder: Path, replica_ports: list[int], cert: Path, key: Path) -> tuple[subprocess.Popen, int]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        require_tool("nginx")  # skips, or fails in CI (MEDSEG_REQUIRE_TOOLS=1): apt nginx-light
    port = _free_port()
    block = _documented_nginx_block()
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=30s;\n" for p in replica_ports)
    block, n = re.subn(r"(    server 10\.0\.0\.\d+:\d+ [^\n]*\n)+", servers, block)
    assert n == 1
    block = block.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    block = block.replace("/etc/nginx/tls/medseg.crt", str(cert)).replace("/etc/nginx/tls/medseg.key", str(key))
    (folder / "medseg.conf").write_text(block)
    temp = "".join(
        f"  {name}_temp_path {folder / name};\n" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (folder / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'};\n"
        + f"events {{}}\nhttp {{\n  access_log off;\n{temp}  include {folder / 'medseg.conf'};\n}}\n"
    )
    process = subprocess.Popen(
        [nginx, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nginx did not start: {process.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("nginx did not listen")


def test_tls_proxy_two_replicas_and_failover(tmp_path):
    ca, cert, key = _certificates(tmp_path)
    replay = write_replay(tmp_path / "answers.jsonl")
    tokens = write_tokens(tmp_path / "tokens")
    with contextlib.ExitStack() as stack:
        # two replicas on the same --state-dir: shared session storage
        a, _ = stack.enter_context(live_server(tmp_path, scripted_engine(replay), tokens=tokens))
        b, _ = stack.enter_context(live_server(tmp_path, scripted_engine(replay), tokens=tokens))
        nginx, port = _start_nginx(tmp_path, [a.port, b.port], cert, key)
        stack.callback(nginx.wait, 10)
        stack.callback(nginx.terminate)
        _through_the_proxy(f"https://localhost:{port}", tokens, ca, a, b)


def _through_the_proxy(url: str, tokens: dict, ca: Path, a, b) -> None:
    """TLS verified against the CA, a streamed round, stickiness, then failover through the shared folder."""
    with pytest.raises(ServerUnreachable, match="certificate"):
        MedSegClient(url, tokens["alice"]).health()  # not signed by a CA this machine trusts
    client = MedSegClient(url, tokens["alice"], ca_file=ca)
    assert client.health()["status"] == "ok"
    sid = client.create_session()
    volume = small_volume()
    g = volume.geometry
    assert not client.upload_volume(sid, volume.array, g.origin, g.spacing, g.direction, "CT")["reused"]
    progress: list[str] = []
    result = client.ask(sid, "Segment the bright mass.", on_progress=lambda s, f, d: progress.append(s))
    assert [e.id for e in result.entities] == ["E1"] and progress[0] == "started"
    holders = [s for s in (a, b) if sid in s.runtime.store._sessions]
    assert len(holders) == 1, "sticky: one replica served the whole session"
    holder, other = holders[0], (b if holders[0] is a else a)

    # the replica goes away; the next request lands on the other one, which finds the session in the
    # shared folder and asks for the volume again
    holder.stop()
    assert client.session(sid)["volume"]["attached"] is False
    with pytest.raises(Conflict, match="sent again"):
        client.ask(sid, prompts=[{"slice": 1, "box": BOX_A}], propagate=False)
    client.upload_volume(sid, volume.array, g.origin, g.spacing, g.direction, "CT")
    again = client.ask(sid, prompts=[{"slice": 1, "box": BOX_A, "label": "lesion"}], propagate=False)
    assert [e.id for e in again.entities] == ["E2"] and [e.id for e in client.entities(sid)] == ["E1", "E2"]
    assert sid in other.runtime.store._sessions
