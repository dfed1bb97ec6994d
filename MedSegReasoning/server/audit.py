"""The append-only audit log: who (token name) did what, when, to which session, with which model.

One JSON object per line, written with ``O_APPEND`` (each line lands whole at the end, even with several writers)
and flushed at once, so a crash loses nothing that was logged. What is deliberately *not* in it: voxels, masks,
question text, entity names or anything else that could carry a patient's identity; a volume appears as its
shape, type and the first 12 hex digits of its content hash, enough to tell uploads apart.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

_ALLOWED_FIELDS = frozenset(
    {
        "method",
        "route",
        "status",
        "ms",
        "client",
        "session",
        "round",
        "round_id",
        "entity",
        "model",
        "reasoner",
        "segmenter",
        "shape",
        "dtype",
        "volume",
        "bytes",
        "targets",
        "outcome",
        "code",
        "reason",
        "format",
        "suppressed",
    }
)

MAX_ROUTE_CHARS = 200
"""A request's path is logged up to this many characters (then ``…``): a path is the client's text, and no
client may write what it likes, as much as it likes, into the log."""
UNAUTHENTICATED_LINES_PER_MINUTE = 30
"""Requests without a valid token are logged at most this often; the rest are counted, and the count is written
with the next line that is logged (``"suppressed": n``). Anyone who can reach the port can send such requests, so
what they make the server write must be bounded: at most this many lines of at most ~0.5 kB a minute."""


class AuditLog:
    """Append JSON lines to ``path`` (mode 0600). Unknown fields are refused, so nothing slips in by accident."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._lock = threading.Lock()
        self._anonymous = _Throttle(UNAUTHENTICATED_LINES_PER_MINUTE, 60.0)

    def record_request(self, token: str | None, *, route: str, **fields: Any) -> None:
        """One HTTP request's line; the route cut to ``MAX_ROUTE_CHARS``, unauthenticated ones throttled."""
        if len(route) > MAX_ROUTE_CHARS:
            route = route[:MAX_ROUTE_CHARS] + "…"
        if isinstance(fields.get("method"), str):
            fields["method"] = fields["method"][:16]
        if token is None:
            allowed, suppressed = self._anonymous.take()
            if not allowed:
                return
            fields["suppressed"] = suppressed or None
        self.record("request", token, route=route, **fields)

    def record(self, event: str, token: str | None, **fields: Any) -> None:
        unknown = set(fields) - _ALLOWED_FIELDS
        if unknown:
            raise ValueError(f"audit fields {sorted(unknown)} are not allowed (the log must never hold patient data)")
        entry = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "event": event,
            "token": token or "-",
            **{k: v for k, v in fields.items() if v is not None},
        }
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode("utf-8")
        with self._lock:
            if self._fd >= 0:
                os.write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class _Throttle:
    """At most ``per_window`` events per ``window_s`` (a fixed window); counts the refused ones."""

    def __init__(self, per_window: int, window_s: float) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._start = time.monotonic()
        self._used = 0
        self._refused = 0
        self._lock = threading.Lock()

    def take(self) -> tuple[bool, int]:
        """(allowed, events refused since the last allowed one)."""
        with self._lock:
            now = time.monotonic()
            if now - self._start >= self.window_s:
                self._start, self._used = now, 0
            if self._used >= self.per_window:
                self._refused += 1
                return False, 0
            self._used += 1
            refused, self._refused = self._refused, 0
            return True, refused
