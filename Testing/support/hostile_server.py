"""OpenAI-compatible chat servers that misbehave in exactly one way, for the reasoner's hardening tests (issue #15)
and ``batch --reasoner-timeout``: a few lines of ``http.server`` each, started in the test. ``HostileServer(kind)``:
``keepalive`` keeps the stream alive with SSE comments and never answers; ``cut-mid-line`` cuts a data line in the
middle; ``usage-lots``, ``choices-abc`` and ``delta-list`` send fields of the wrong type."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = '{"reasoning": "r", "targets": [], "clarification": "which one?"}'


def _event(obj) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _replies(kind: str, stop: threading.Event) -> Iterator[bytes]:
    """What the server sends after its headers, per misbehaviour."""
    if kind == "keepalive":  # a comment every 20 ms, never an answer, until the client hangs up
        while not stop.is_set():
            yield b": keep-alive\n\n"
            time.sleep(0.02)
    elif kind == "cut-mid-line":
        yield _event({"choices": [{"delta": {"content": ANSWER[:20]}}]})
        yield b'data: {"choices": [{"delta": {"content": "ab'
    elif kind == "usage-lots":
        yield _event({"choices": [{"delta": {"content": ANSWER}, "finish_reason": "stop"}], "usage": "lots"})
        yield b"data: [DONE]\n\n"
    elif kind == "choices-abc":
        yield _event({"choices": "abc"})
    elif kind == "delta-list":
        yield _event({"choices": [{"delta": ["content", "x"]}]})


class HostileServer:
    def __init__(self, kind: str) -> None:
        self.stop = threading.Event()
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def do_POST(self) -> None:
                outer.requests += 1
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for piece in _replies(kind, outer.stop):
                        self.wfile.write(piece)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
