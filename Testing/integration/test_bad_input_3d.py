"""Issue 13's bad input, where no other test reaches it: a refine that names a session of another volume (CLI: exit
2, one sentence, the session as it was), a damaged or foreign file in the embedding store (refused, re-encoded, the
same mask; never another slice's embedding), and a disk that fills while the store writes (the round succeeds).

Covered elsewhere: a correction box outside the volume or on an empty region (``test_correction.py``,
``test_cli_refine.py``, ``test_server_refine.py``); a session opened on another volume (``test_dialogue_session.py``);
store files refused one by one (``test_embedding_store.py``)."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
from support.fakes import oracle

from MedSegReasoning.cli import main


def _series(folder: Path, value: int) -> Path:
    from MedSegReasoning.volume import write_dicom_series
    from MedSegReasoning.volume.core import Geometry

    array = np.full((6, 40, 48), -1000, dtype=np.int16)
    array[1:5, 10:30, 12:36] = value
    write_dicom_series(array, Geometry.from_arrays((0, 0, 0), (1.0, 1.0, 2.0), np.eye(3)), folder, modality="CT")
    return folder


def test_a_refine_on_another_volumes_session_exits_2_and_leaves_the_session(tmp_path, monkeypatch, capsys):
    from MedSegReasoning.dialogue import load_session
    from MedSegReasoning.segmentation import factory
    from MedSegReasoning.volume import load_volume

    first, other = _series(tmp_path / "a", 60), _series(tmp_path / "b", 70)
    voxels = load_volume(first).array
    monkeypatch.setattr(factory, "create_segmenter", lambda spec, **kw: oracle(voxels, voxels > 0))
    session = tmp_path / "session"
    argv = ["ask", str(first), "--box", "10,8,38,32,2", "--session", str(session), "--out", str(tmp_path / "r1")]
    assert main(argv) == 0
    assert len(load_session(session).rounds) == 1
    before = (session / "session.json").read_bytes()
    capsys.readouterr()
    argv = ["ask", str(other), "--session", str(session), "--refine", "E1", "--box", "12,10,30,29,3"]
    assert main([*argv, "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert "another volume" in err and "Traceback" not in err and len(errors) == 1, err
    assert len(load_session(session).rounds) == 1, "the session is as it was"
    assert (session / "session.json").read_bytes() == before
    assert not (tmp_path / "r2" / "mask.nii.gz").exists()


@pytest.fixture(scope="module")
def spleen(small_volume_cases):
    from MedSegReasoning.evaluation.layouts import read_folder
    from MedSegReasoning.volume import default_window

    unit = next(u for u in read_folder(small_volume_cases) if "spleen" in u.id)
    case = unit.load()
    return case.volume, default_window(case.volume), case.turns[0].truth


def _segment(volume, window, truth, segmenter):
    from MedSegReasoning.evaluation.runner import truth_prompt
    from MedSegReasoning.pipeline import segment_target

    return segment_target(volume, segmenter, window, truth_prompt(truth))


@pytest.mark.slow
def test_damaged_and_foreign_store_files_are_re_encoded_and_never_mixed(spleen, litemedsam, tmp_path, monkeypatch):
    """Two runs as two processes make them (empty memory each, one store); between them one stored embedding is
    truncated and another is overwritten by a copy of a third slice's file: the second run refuses both, encodes
    exactly those two slices again, and gives the same mask as the first."""
    from MedSegReasoning.segmentation.cache import EmbeddingCache

    volume, window, truth = spleen
    monkeypatch.setattr(litemedsam, "store", None)
    litemedsam.use_store(tmp_path / "store", 2**30, "test")
    monkeypatch.setattr(litemedsam, "cache", EmbeddingCache())
    first = _segment(volume, window, truth, litemedsam)
    files = sorted(litemedsam.store.folder.glob("*.npz"))
    assert len(files) >= 3 and first.work.encoder_calls == len(files)
    damaged, foreign, source = files[0], files[1], files[2]
    damaged.write_bytes(damaged.read_bytes()[:100])
    foreign.write_bytes(source.read_bytes())  # another slice's embedding under this slice's name
    monkeypatch.setattr(litemedsam, "cache", EmbeddingCache())
    refused = litemedsam.store.refused
    second = _segment(volume, window, truth, litemedsam)
    assert litemedsam.store.refused - refused == 2
    assert second.work.encoder_calls == 2, second.work
    np.testing.assert_array_equal(second.mask, first.mask)


@pytest.mark.slow
def test_a_disk_that_fills_while_the_store_writes_does_not_fail_the_round(spleen, litemedsam, tmp_path, monkeypatch):
    import MedSegReasoning.segmentation.disk_cache as disk_cache
    from MedSegReasoning.dialogue import RoundPlan, Session, TargetSpec, run_round
    from MedSegReasoning.evaluation.runner import truth_prompt
    from MedSegReasoning.segmentation.cache import EmbeddingCache

    volume, window, truth = spleen
    monkeypatch.setattr(litemedsam, "store", None)
    litemedsam.use_store(tmp_path / "store", 2**30, "test")
    monkeypatch.setattr(litemedsam, "cache", EmbeddingCache())
    real_savez = np.savez

    def disk_full(out, **arrays):
        real_savez(out, **arrays)  # the bytes go out, then the disk has no room for the rest
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk_cache.np, "savez", disk_full)
    session = Session.for_volume(volume, folder=tmp_path / "s")
    plan = RoundPlan(targets=(TargetSpec("spleen", truth_prompt(truth)),))
    rnd = run_round(session, volume, litemedsam, window, "segment the spleen", plan)
    (record,) = rnd.targets
    assert record.status in ("accepted", "uncertain") and record.entity_id == "E1"
    mask = session.dense_mask("E1")
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.8
    assert not litemedsam.store.enabled, "the store turned itself off for the run"
    assert not list(litemedsam.store.folder.glob("*")), "no partial or temporary file is left"
