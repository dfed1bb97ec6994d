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
    }
)


class AuditLog:
    """Append JSON lines to ``path`` (mode 0600). Unknown fields are refused, so nothing slips in by accident."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._lock = threading.Lock()

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
