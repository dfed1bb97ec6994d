"""EmbeddingCache: LRU bounded in bytes (no model, no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from MedSegReasoning.segmentation.cache import EmbeddingCache, nbytes_of


def block(kib: int) -> np.ndarray:
    return np.zeros(kib * 1024, dtype=np.uint8)


def test_evicts_least_recently_used_until_the_new_entry_fits():
    cache = EmbeddingCache(max_bytes=3 * 1024)
    for key in ("a", "b", "c"):
        assert cache.put(key, block(1))
    assert cache.get("a") is not None  # "a" is now the most recent; "b" the least
    cache.put("d", block(1))
    assert "b" not in cache and {"a", "c", "d"} <= {k for k in ("a", "c", "d") if k in cache}
    assert cache.nbytes == 3 * 1024 and cache.evictions == 1
    cache.put("e", block(2))  # needs two slots: evicts "c" then "a"
    assert "c" not in cache and "a" not in cache and "d" in cache and "e" in cache
    assert cache.nbytes <= cache.max_bytes


def test_counts_hits_and_misses():
    cache = EmbeddingCache(max_bytes=10 * 1024)
    assert cache.get(("vol", 2, 7, "ct-soft")) is None
    cache.put(("vol", 2, 7, "ct-soft"), block(1))
    assert cache.get(("vol", 2, 7, "ct-soft")) is not None
    assert (cache.hits, cache.misses) == (1, 1)


def test_an_entry_larger_than_the_bound_is_not_cached_and_evicts_nothing():
    cache = EmbeddingCache(max_bytes=2 * 1024)
    cache.put("small", block(1))
    assert cache.put("huge", block(3)) is False
    assert "huge" not in cache and "small" in cache and cache.nbytes == 1024


def test_replacing_a_key_updates_the_byte_count():
    cache = EmbeddingCache(max_bytes=4 * 1024)
    cache.put("a", block(1))
    cache.put("a", block(3))
    assert len(cache) == 1 and cache.nbytes == 3 * 1024
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_sizes_arrays_and_tuples_and_refuses_unsized_values():
    assert nbytes_of((block(1), block(2))) == 3 * 1024
    with pytest.raises(TypeError, match="nbytes"):
        nbytes_of(object())
    cache = EmbeddingCache(max_bytes=100)
    assert cache.put("explicit", object(), nbytes=10) and cache.nbytes == 10
