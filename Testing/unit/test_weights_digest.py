"""Weights digests remembered per file state: an unchanged file is hashed once, a changed one always again."""

from __future__ import annotations

import json
import os

import pytest

from MedSegReasoning.segmentation import weights_digest
from MedSegReasoning.segmentation._embedding import file_sha256


@pytest.fixture
def counted(monkeypatch):
    """Counts the real hashing calls (``file_sha256``) and lets freshly written files be remembered at once."""
    calls = []

    def counting(path):
        calls.append(path)
        return file_sha256(path)

    monkeypatch.setattr(weights_digest, "file_sha256", counting)
    monkeypatch.setattr(weights_digest, "RACY_SECONDS", -60.0)  # files written by the test are seconds old
    return calls


def test_an_unchanged_file_is_hashed_once(tmp_path, counted):
    weights, record = tmp_path / "w.pth", tmp_path / "cache" / "digests.json"
    weights.write_bytes(b"weights" * 1000)
    first = weights_digest.cached_sha256(weights, record)
    assert first == file_sha256(weights) and len(counted) == 1
    assert weights_digest.cached_sha256(weights, record) == first and len(counted) == 1
    stored = json.loads(record.read_text())["files"][str(weights.resolve())]
    assert stored["sha256"] == first and stored["size"] == weights.stat().st_size


def test_a_changed_file_is_hashed_again_even_with_its_old_size_and_mtime(tmp_path, counted):
    weights, record = tmp_path / "w.pth", tmp_path / "digests.json"
    weights.write_bytes(b"a" * 4096)
    before = weights_digest.cached_sha256(weights, record)
    stat = weights.stat()
    weights.write_bytes(b"b" * 4096)  # same size
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old modification time: ctime still moves
    after = weights_digest.cached_sha256(weights, record)
    assert after != before and after == file_sha256(weights) and len(counted) == 2


def test_a_freshly_written_file_is_not_remembered(tmp_path, monkeypatch):
    """A file changed within RACY_SECONDS of hashing could change again within the same timestamp tick."""
    weights, record = tmp_path / "w.pth", tmp_path / "digests.json"
    weights.write_bytes(b"new")
    monkeypatch.setattr(weights_digest, "RACY_SECONDS", 3600.0)
    weights_digest.cached_sha256(weights, record)
    assert not record.exists()


def test_a_damaged_record_is_ignored_and_rewritten(tmp_path, counted):
    weights, record = tmp_path / "w.pth", tmp_path / "digests.json"
    weights.write_bytes(b"x" * 100)
    record.write_text("{not json")
    assert weights_digest.cached_sha256(weights, record) == file_sha256(weights)
    assert json.loads(record.read_text())["format"] == weights_digest.RECORD_FORMAT
    # a forged digest for another state of the file is never used
    data = json.loads(record.read_text())
    data["files"][str(weights.resolve())]["size"] += 1
    data["files"][str(weights.resolve())]["sha256"] = "0" * 64
    record.write_text(json.dumps(data))
    assert weights_digest.cached_sha256(weights, record) == file_sha256(weights)


def test_litemedsam_checks_its_weights_through_the_record(tmp_path, monkeypatch, counted):
    """The real check: the pinned SHA-256 compared on every load; the file read only when its state is new."""
    from MedSegReasoning.segmentation import litemedsam

    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    path = litemedsam.default_weights_path()
    assert litemedsam.verify_weights(path) == litemedsam.checkpoint_constants()["CHECKPOINT_SHA256"]
    assert litemedsam.verify_weights(path) == litemedsam.checkpoint_constants()["CHECKPOINT_SHA256"]
    assert len(counted) == 1 and (tmp_path / weights_digest.RECORD_NAME).is_file()
