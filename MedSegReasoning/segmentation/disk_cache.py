"""Image embeddings kept on disk, so a second question on the same scan, or a restarted server, does not encode again.

The encoder is the only expensive step (0.6-2 s a slice on two CPU cores); a slice's embedding depends only on the
rendered pixels, which the in-memory cache key already names (volume content hash, plane, slice, window, input
resampling). The store sits behind the in-memory ``EmbeddingCache``: a memory miss looks here before encoding, and
every fresh embedding is written here too.

Trust nothing read back:

- a file is named by the SHA-256 of its full key *and* stores that key; a file whose stored key, model
  namespace, array shape, dtype or values (non-finite) disagree is refused, deleted and re-encoded, so a damaged or
  foreign file can never mix volumes or models;
- files live under a folder named by the model namespace (name, weights SHA-256, runtime) and a format version,
  so new weights or a new layout never read old files;
- writes go to a temporary file moved into place (``os.replace``): a crash or two processes never leave half a file;
  a full or read-only disk is logged once and the round goes on without the store;
- the store is bounded in bytes and evicted least-recently-used (a read refreshes a file's modification time).

Files are plain ``.npz`` read with ``allow_pickle=False``: never pickle.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import zipfile
from collections.abc import Hashable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

STORE_FORMAT = 1
DEFAULT_STORE_BYTES = 4 * 2**30
STORE_BYTES_ENV = "MEDSEG_EMBEDDING_STORE_MB"
"""Environment variable: the store's bound in MiB; 0 turns the store off."""
_SCAN_EVERY = 16
"""Writes between two scans of the folder for its size (a scan lists every file: cheap, but not free)."""


def key_text(key: Hashable) -> str:
    """The stable text of a cache key: tuples of str, int, float, as ``repr`` writes them."""
    return repr(key)


class DiskEmbeddingStore:
    """Embeddings in ``root/v<format>/<namespace digest>/<key digest>.npz``, at most ``max_bytes`` together.

    ``namespace`` identifies the model (its name, weights SHA-256 and runtime); it is part of every stored key.
    ``load`` and ``save`` deal in ``(embedding array (1, C, h, w) float32, frame fields)``; the segmenter turns
    them into its own types.
    """

    def __init__(self, root: str | Path, namespace: Hashable, max_bytes: int = DEFAULT_STORE_BYTES) -> None:
        self.namespace_text = key_text(namespace)
        digest = hashlib.sha256(self.namespace_text.encode()).hexdigest()[:24]
        self.folder = Path(root).expanduser() / f"v{STORE_FORMAT}" / digest
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.refused = 0
        self.writes = 0
        self._disabled_reason: str | None = None
        self._lock = threading.Lock()
        self._writes_since_scan = _SCAN_EVERY

    @property
    def enabled(self) -> bool:
        return self._disabled_reason is None and self.max_bytes > 0

    def path_of(self, key: Hashable) -> Path:
        return self.folder / f"{hashlib.sha256(key_text(key).encode()).hexdigest()}.npz"

    def load(self, key: Hashable) -> tuple[np.ndarray, dict[str, int]] | None:
        """The stored embedding and frame of ``key``, or ``None`` (absent, or refused and deleted)."""
        if not self.enabled:
            return None
        path = self.path_of(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                stored_key = str(data["key"])
                stored_namespace = str(data["namespace"])
                embedding = np.array(data["embedding"])
                frame = {name: int(v) for name, v in zip(_FRAME_FIELDS, data["frame"].tolist(), strict=True)}
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
            self._refuse(path, f"unreadable ({type(exc).__name__})")
            return None
        if stored_key != key_text(key) or stored_namespace != self.namespace_text:
            self._refuse(path, "it belongs to another slice, volume or model")
            return None
        if embedding.ndim != 4 or embedding.shape[0] != 1 or embedding.dtype != np.float32:
            self._refuse(path, f"its embedding has shape {embedding.shape} and dtype {embedding.dtype}")
            return None
        if not np.isfinite(embedding).all():
            self._refuse(path, "its embedding holds non-finite values")
            return None
        try:
            os.utime(path)  # least recently used: a read counts as a use
        except OSError:
            pass
        self.hits += 1
        return embedding, frame

    def save(self, key: Hashable, embedding: np.ndarray, frame: dict[str, int]) -> bool:
        """Write ``key``'s embedding atomically; ``False`` (and the store off for this process) on a disk error."""
        if not self.enabled:
            return False
        path = self.path_of(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as out:
                    np.savez(
                        out,
                        key=np.array(key_text(key)),
                        namespace=np.array(self.namespace_text),
                        embedding=np.ascontiguousarray(embedding, dtype=np.float32),
                        frame=np.array([frame[name] for name in _FRAME_FIELDS], dtype=np.int64),
                    )
                os.replace(temp, path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            self._disabled_reason = f"{type(exc).__name__}: {exc.strerror or exc}"
            log.warning(
                "embedding store %s turned off for this run (%s); segmentation goes on without it",
                self.folder,
                self._disabled_reason,
            )
            return False
        self.writes += 1
        with self._lock:
            self._writes_since_scan += 1
            if self._writes_since_scan >= _SCAN_EVERY:
                self._writes_since_scan = 0
                self.evict()
        return True

    def evict(self) -> int:
        """Delete the least recently used files until the store fits ``max_bytes``; returns how many went."""
        entries: list[tuple[float, int, Path]] = []
        try:
            for namespace in self.folder.parent.iterdir():  # the bound holds for every model's files together
                for path in namespace.glob("*.npz"):
                    stat = path.stat()
                    entries.append((stat.st_mtime, stat.st_size, path))
        except OSError:
            return 0
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed

    def _refuse(self, path: Path, why: str) -> None:
        self.refused += 1
        log.warning("embedding file %s refused (%s): encoding the slice again", path.name, why)
        path.unlink(missing_ok=True)


_FRAME_FIELDS = ("original_h", "original_w", "resized_h", "resized_w", "input_size")


def store_bytes_from_env(default: int = DEFAULT_STORE_BYTES) -> int:
    """The store's bound: ``$MEDSEG_EMBEDDING_STORE_MB`` MiB where set (0: off), else ``default``."""
    text = os.environ.get(STORE_BYTES_ENV, "").strip()
    if not text:
        return default
    try:
        return max(0, int(float(text) * 2**20))
    except ValueError:
        log.warning("%s=%r is not a number of MiB: using the default", STORE_BYTES_ENV, text)
        return default
