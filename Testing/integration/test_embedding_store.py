"""Embeddings on disk: a second run on the same scan reads them instead of encoding; nothing read back is trusted."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import numpy as np
import pytest

from MedSegReasoning.segmentation.disk_cache import DiskEmbeddingStore, store_bytes_from_env

FRAME = {"original_h": 40, "original_w": 50, "resized_h": 205, "resized_w": 256, "input_size": 256}


def _embedding(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 8, 4, 4)).astype(np.float32)


def test_round_trip_and_namespace(tmp_path):
    store = DiskEmbeddingStore(tmp_path, ("LiteMedSAM", "abc", "openvino"))
    key = ("volume-hash", "k", 3, "w:40,400")
    assert store.load(key) is None
    assert store.save(key, _embedding(1), FRAME)
    embedding, frame = store.load(key)
    assert np.array_equal(embedding, _embedding(1)) and frame == FRAME
    other_model = DiskEmbeddingStore(tmp_path, ("LiteMedSAM", "def", "openvino"))
    assert other_model.load(key) is None, "other weights never read this model's files"


def test_foreign_corrupt_and_non_finite_files_are_refused_and_deleted(tmp_path):
    store = DiskEmbeddingStore(tmp_path, ("m", "1"))
    a, b, c, d = (("v", "k", i, "w") for i in range(4))
    store.save(a, _embedding(1), FRAME)
    # a file copied under another key's name (another slice, volume or model) is refused, never used
    shutil.copy(store.path_of(a), store.path_of(b))
    assert store.load(b) is None and not store.path_of(b).exists()
    # a truncated file
    store.save(c, _embedding(2), FRAME)
    data = store.path_of(c).read_bytes()
    store.path_of(c).write_bytes(data[: len(data) // 2])
    assert store.load(c) is None and not store.path_of(c).exists()
    # non-finite values
    bad = _embedding(3)
    bad[0, 0, 0, 0] = np.nan
    store.save(d, bad, FRAME)
    assert store.load(d) is None
    assert store.refused == 3
    assert store.load(a) is not None, "the good file is still read"


def test_bounded_least_recently_used(tmp_path):
    store = DiskEmbeddingStore(tmp_path, ("m",), max_bytes=10**9)
    keys = [("v", "k", i, "w") for i in range(5)]
    for i, key in enumerate(keys):
        store.save(key, _embedding(i), FRAME)
        os.utime(store.path_of(key), (1000 + i, 1000 + i))
    store.load(keys[0])  # read now: the most recently used
    size = store.path_of(keys[0]).stat().st_size
    store.max_bytes = 3 * size
    assert store.evict() == 2
    assert [store.path_of(k).exists() for k in keys] == [True, False, False, True, True]


def test_an_unwritable_store_turns_itself_off_and_the_caller_goes_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = DiskEmbeddingStore(blocker, ("m",))  # its folder would have to be inside a file
    assert store.save(("k",), _embedding(1), FRAME) is False
    assert not store.enabled and store.load(("k",)) is None


def test_store_bound_from_environment(monkeypatch):
    monkeypatch.setenv("MEDSEG_EMBEDDING_STORE_MB", "0")
    assert store_bytes_from_env() == 0
    monkeypatch.setenv("MEDSEG_EMBEDDING_STORE_MB", "lots")
    assert store_bytes_from_env(123) == 123


@pytest.mark.slow
def test_a_second_run_on_the_same_scan_reads_embeddings_from_disk(tmp_path, shared_ct):
    """Two segmenters as two processes would build them: the second encodes nothing for the slices the first saw."""
    from MedSegReasoning.pipeline import VoxelPrompt, segment_target
    from MedSegReasoning.propagation import DEFAULT_PROPAGATION
    from MedSegReasoning.segmentation.factory import create_segmenter
    from MedSegReasoning.volume import default_window, load_volume

    volume = load_volume(shared_ct / "dicom")
    window = default_window(volume)
    prompt = VoxelPrompt(k=10, box=(291, 245, 392, 377))  # the spleen
    first = create_segmenter("litemedsam", embedding_store=tmp_path)
    small = replace(DEFAULT_PROPAGATION, max_slices=3, skip=1)  # three slices, each segmented
    a = segment_target(volume, first, window, prompt, config=small)
    assert first.stats.encoder_calls == 3 and first.stats.store_hits == 0
    second = create_segmenter("litemedsam", embedding_store=tmp_path)
    b = segment_target(volume, second, window, prompt, config=small)
    assert second.stats.encoder_calls == 0, "every slice came from the disk store"
    assert second.stats.store_hits == 3
    assert np.array_equal(a.mask, b.mask)
