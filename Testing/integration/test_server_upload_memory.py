"""Issue #15 item 1: a volume upload costs memory for the bytes that arrived, never for the size its header claims,
and all uploads in flight together stay within the server's upload budget. Measured on a real ``serve`` process
(uvicorn in a child process) by its resident memory, ``VmRSS`` in ``/proc/<pid>/status``."""

from __future__ import annotations

import json
import socket
import sys
import time
import zlib
from pathlib import Path

import pytest
from support.server import write_tokens

from MedSegReasoning.wire.process import LocalServer

HERE = Path(__file__).resolve().parent
MiB = 1 << 20
BUDGET_MB = 64
VOLUME_MB = 128  # what each hostile upload claims and (decompressed) really sends
SLACK_MB = 48  # allocator and interpreter noise around the budget: well below one hostile volume

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _meta(shape: list[int], dtype: str) -> str:
    return json.dumps(
        {
            "shape": shape,
            "dtype": dtype,
            "origin": [0.0, 0.0, 0.0],
            "spacing": [1.0, 1.0, 1.0],
            "direction": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        }
    )


def _open_upload(port: int, token: str, sid: str, meta: str, encoding: str) -> socket.socket:
    """A chunked PUT of the volume whose body is sent afterwards (and never finished)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"PUT /v1/sessions/{sid}/volume HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"X-MedSeg-Volume: {meta}\r\nContent-Type: application/octet-stream\r\nContent-Encoding: {encoding}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def _send_chunk(sock: socket.socket, data: bytes) -> None:
    sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def _zeros_deflated(nbytes: int) -> bytes:
    packer = zlib.compressobj(9)
    block = bytes(MiB)
    return b"".join(packer.compress(block) for _ in range(nbytes // MiB)) + packer.flush(zlib.Z_SYNC_FLUSH)


def _answer(sock: socket.socket) -> str:
    sock.settimeout(0.2)
    try:
        return sock.recv(65536).decode("latin-1")
    except (TimeoutError, OSError):
        return ""


@pytest.fixture
def server(tmp_path):
    tokens = write_tokens(tmp_path / "tokens", ("mallory",))
    local = LocalServer(
        [sys.executable, str(HERE.parent / "support" / "server.py")],
        args=[
            "--state-dir",
            str(tmp_path / "state"),
            "--token-file",
            str(tmp_path / "tokens"),
            "--max-upload-mb",
            "16",
            "--max-volume-mb",
            "256",
            "--upload-budget-mb",
            str(BUDGET_MB),
        ],
        cwd=HERE.parent,
        startup_timeout=60,
    )
    client = local.start()
    try:
        yield local, client, tokens["mallory"]
    finally:
        local.stop()


def test_hostile_uploads_stay_within_the_upload_budget(server):
    local, client, token = server
    pid, port = local.ready["pid"], local.ready["port"]
    assert pid == local.process.pid
    sids = [client.create_session() for _ in range(7)]
    # warm-up: one real upload, so that what the first request imports is part of the baseline
    import numpy as np

    client.upload_volume(sids[0], np.zeros((2, 16, 16), np.int16), (0, 0, 0), (1, 1, 1), np.eye(3))
    baseline = _rss(pid)

    # a declared size above the decoded limit: 413 before anything is allocated, whatever the body
    too_big = _open_upload(port, token, sids[1], _meta([750, 512, 512], "float64"), "identity")
    _send_chunk(too_big, b"\0\0\0\0")
    time.sleep(0.3)
    assert " 413 " in _answer(too_big).split("\r\n")[0]

    # a 4-byte chunked body claiming 128 MiB: the connection stays open, the server holds 4 bytes for it
    tiny = _open_upload(port, token, sids[2], _meta([128, 512, 512], "float32"), "identity")
    _send_chunk(tiny, b"\0\0\0\0")

    # five deflate bodies, each decoding to 128 MiB of voxels, held open (no final chunk): 640 MiB claimed
    bomb = _zeros_deflated(VOLUME_MB * MiB)
    assert len(bomb) < 16 * MiB
    floods = []
    for sid in sids[3:]:
        sock = _open_upload(port, token, sid, _meta([128, 512, 512], "float32"), "deflate")
        for at in range(0, len(bomb), 64 * 1024):
            _send_chunk(sock, bomb[at : at + 64 * 1024])
        floods.append(sock)

    peak = baseline
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        peak = max(peak, _rss(pid))
        time.sleep(0.02)
    answers = [_answer(s) for s in floods]
    grown_mb = (peak - baseline) / MiB
    assert grown_mb <= BUDGET_MB + SLACK_MB, f"the server grew by {grown_mb:.0f} MiB under the attack"
    refused = [a for a in answers if "upload_budget_exhausted" in a]
    assert refused and all(a.startswith("HTTP/1.1 503") and "retry-after: 5" in a.lower() for a in refused)
    for sock in [too_big, tiny, *floods]:
        sock.close()

    # the budget is given back: an honest upload succeeds afterwards
    time.sleep(0.3)
    volume = np.arange(4 * 64 * 64, dtype=np.int16).reshape(4, 64, 64)
    answer = client.upload_volume(sids[1], volume, (0, 0, 0), (1, 1, 1), np.eye(3))
    assert answer["shape"] == [4, 64, 64]
    print(f"RSS baseline {baseline / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB (+{grown_mb:.0f}), budget {BUDGET_MB}")
