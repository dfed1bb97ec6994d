"""An LRU cache of image embeddings, bounded in bytes.

Why bytes and not entries: one LiteMedSAM embedding is 4 MiB, one SAM ViT-H embedding is 4 MiB too, but a
future model may differ, and what the user cares about is memory. The engine keeps a whole volume's slices
warm while a dialogue goes on (a question, then a follow-up on the same slice), so the encoder, the only
expensive step, runs once per (volume, axis, slice, window). Keys are any hashable; the segmenters use
``(volume hash, slice axis, slice index, window key)`` given by their callers.

Thread-safe for single operations (a lock around each), so a server may share one cache between requests.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

DEFAULT_CACHE_BYTES = 512 * 2**20


def nbytes_of(value: Any) -> int:
    """Memory held by ``value``: ``.nbytes`` for numpy arrays and torch tensors, summed through tuples/lists."""
    if isinstance(value, (tuple, list)):
        return sum(nbytes_of(item) for item in value)
    size = getattr(value, "nbytes", None)
    if size is None:
        raise TypeError(f"cannot size a {type(value).__name__} for the embedding cache: pass nbytes explicitly")
    return int(size)


class EmbeddingCache:
    """Least-recently-used mapping whose values together hold at most ``max_bytes`` bytes.

    ``get`` counts a hit or a miss and refreshes the entry; ``put`` evicts the least recently used entries
    until the new one fits. A value larger than the whole bound is not stored at all (storing it would evict
    everything and still exceed the bound).
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def nbytes(self) -> int:
        """Bytes currently held."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        """Membership without counting a hit or refreshing the entry."""
        return key in self._entries

    def get(self, key: Hashable) -> Any | None:
        """The value stored under ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def peek(self, key: Hashable) -> Any | None:
        """The value stored under ``key`` without counting a hit or a miss or refreshing it (encoding ahead asks
        whether a slice is there; only a use by a round is a hit)."""
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry[0]

    def put(self, key: Hashable, value: Any, nbytes: int | None = None) -> bool:
        """Store ``value``; returns ``False`` (and stores nothing) when it alone exceeds the bound."""
        size = nbytes_of(value) if nbytes is None else int(nbytes)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._nbytes -= old[1]
            if size > self.max_bytes:
                return False
            while self._entries and self._nbytes + size > self.max_bytes:
                _, (_, evicted_size) = self._entries.popitem(last=False)
                self._nbytes -= evicted_size
                self.evictions += 1
            self._entries[key] = (value, size)
            self._nbytes += size
            return True

    def clear(self) -> None:
        """Drop every entry (counters are kept: they describe the whole session)."""
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def __repr__(self) -> str:
        return (
            f"EmbeddingCache({len(self)} entries, {self._nbytes / 2**20:.1f}/{self.max_bytes / 2**20:.1f} MiB, "
            f"hits={self.hits}, misses={self.misses})"
        )
