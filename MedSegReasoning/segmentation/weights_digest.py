"""SHA-256 of weight files, remembered per file state so that an unchanged file is hashed once, not on every start.

Why: every segmenter checks its weights against their SHA-256 before loading them. Hashing LiteMedSAM's 39 MB
costs 0.1-0.2 s of every ``ask`` (a SAM ViT-H checkpoint, 2.5 GB, several seconds), though the file is the same
each time. The digest is still compared with the expected one on every load; only its computation is skipped while
the file's state is the one it was hashed in: device, inode, size, modification *and* change time in nanoseconds.
The change time (ctime) cannot be set by a user: any write, rename onto the path or ``touch -d`` moves it, so an
edited or replaced file is always hashed again.

Racy files are never remembered (git's "racily clean" rule): a digest is kept only when the file's state was the
same before and after hashing and its last change lies ``RACY_SECONDS`` or more before hashing began, because file
timestamps advance in coarse ticks and a write within the same tick as the hash would leave them unchanged.

The record is a plain JSON file, ``<cache>/weights-sha256.json``, written atomically (temp file + ``os.replace``);
an unreadable record is ignored and rewritten. It is as trusted as the derived files beside it (the ONNX exports):
whoever can write the cache folder could replace those too.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

from ._embedding import cache_root, file_sha256

log = logging.getLogger(__name__)

RECORD_NAME = "weights-sha256.json"
RECORD_FORMAT = 1
RACY_SECONDS = 2.0
MAX_ENTRIES = 64
"""Files remembered at most (the least recently used are forgotten): a handful of checkpoints in practice."""


def file_state(path: Path) -> dict[str, int]:
    """What identifies one version of a file without reading it."""
    st = path.stat()
    return {
        "dev": int(st.st_dev),
        "ino": int(st.st_ino),
        "size": int(st.st_size),
        "mtime_ns": int(st.st_mtime_ns),
        "ctime_ns": int(st.st_ctime_ns),
    }


def cached_sha256(path: Path, record: Path | None = None) -> str:
    """The SHA-256 of ``path``: remembered where the file is unchanged since it was hashed, else computed (and kept).

    ``record`` is the JSON file remembering digests (default ``<cache>/weights-sha256.json``). Raises what
    ``Path.stat`` and ``open`` raise for a missing or unreadable file.
    """
    path = Path(path)
    record = record if record is not None else cache_root() / RECORD_NAME
    key = str(path.resolve())
    state = file_state(path)
    entries = _read(record)
    known = entries.get(key)
    if known is not None and all(known.get(name) == value for name, value in state.items()):
        digest = known.get("sha256")
        if isinstance(digest, str) and len(digest) == 64:
            _touch(record, entries, key)
            return digest
    started = time.time_ns()
    digest = file_sha256(path)
    if file_state(path) == state and state["ctime_ns"] <= started - int(RACY_SECONDS * 1e9):
        entries[key] = {**state, "sha256": digest, "used_ns": time.time_ns()}
        _write(record, entries)
    return digest


def _read(record: Path) -> dict[str, dict]:
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT or not isinstance(data.get("files"), dict):
        return {}
    return {k: v for k, v in data["files"].items() if isinstance(v, dict)}


def _touch(record: Path, entries: dict[str, dict], key: str) -> None:
    """Refresh ``key``'s last use at most once a day (a write per start would cost more than it tells)."""
    now = time.time_ns()
    if now - int(entries[key].get("used_ns", 0)) > 86_400 * 10**9:
        entries[key]["used_ns"] = now
        _write(record, entries)


def _write(record: Path, entries: dict[str, dict]) -> None:
    """Write the record atomically; a read-only or full disk only costs the next start a hash."""
    kept = dict(sorted(entries.items(), key=lambda item: -int(item[1].get("used_ns", 0)))[:MAX_ENTRIES])
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=record.parent, prefix=f".{record.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as out:
                json.dump({"format": RECORD_FORMAT, "files": kept}, out, indent=1, sort_keys=True)
            os.replace(temp, record)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.debug("weights digest record %s not written (%s)", record, exc)
