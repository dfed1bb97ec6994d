"""Saved sessions: versioned JSON + content-addressed masks, atomic, and nothing lost but the round that died."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.dialogue import run_script

import MedSegReasoning.dialogue.store as store
from MedSegReasoning.dialogue import load_session
from MedSegReasoning.wire.errors import InputError

FIXTURES = Path(__file__).resolve().parents[1] / "support" / "dialogue.py"


def test_folder_layout_and_format(tmp_path):
    session, _, _ = run_script(tmp_path / "s")
    doc = json.loads((tmp_path / "s" / "session.json").read_text())
    assert (doc["format"], doc["version"]) == ("medseg-reasoning/session", 1)
    assert doc["volume"]["content_sha256"] == session.volume.content_hash and doc["volume"]["path"].endswith(
        "synthetic-abdomen"
    )
    files = sorted(p.name for p in (tmp_path / "s" / "masks").iterdir())
    # E1, E2 (redone), E3, and the round-2 version of E2 kept for undo: nothing else
    assert len(files) == 4 and all(f.endswith(".npz") for f in files)
    with np.load(tmp_path / "s" / "masks" / files[0], allow_pickle=False) as z:
        assert sorted(z.files) == ["bits", "box"] and z["bits"].dtype == np.uint8
    session.undo_last_round()
    assert len(list((tmp_path / "s" / "masks").iterdir())) == 3  # the redone version is no longer referenced


def test_a_failure_mid_save_leaves_the_previous_complete_state(tmp_path, monkeypatch):
    session, _, _ = run_script(tmp_path / "s", rounds=2)
    before = load_session(tmp_path / "s")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store, "write_text_atomic", fail)
    with pytest.raises(OSError):
        session.replace_mask("E1", session.dense_mask("E2"))
    monkeypatch.undo()
    assert load_session(tmp_path / "s") == before
    assert not list((tmp_path / "s").glob("**/.*partial*"))


def _child(folder: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FIXTURES), str(folder), mode], capture_output=True, timeout=120)


@pytest.mark.parametrize("mode", ["exit", "mid-round", "mid-save"])
def test_a_process_killed_during_round_three_keeps_rounds_one_and_two(tmp_path, mode):
    folder = tmp_path / "s"
    result = _child(folder, mode)
    assert result.returncode in (0, -9), result.stderr.decode()[-2000:]
    loaded = load_session(folder)
    assert [r.index for r in loaded.rounds] == [1, 2]
    assert list(loaded.entities) == ["E1", "E2", "E3"]
    reference, _, _ = run_script(None, rounds=2)
    for a, b in zip(loaded.entities.values(), reference.entities.values(), strict=True):
        assert a.mask == b.mask and a.findings == b.findings and a.ref == b.ref
    if mode == "mid-save":  # round 3's mask was written, but no session.json names it
        assert len(list((folder / "masks").iterdir())) == 4


def test_damaged_or_foreign_folders_are_refused_clearly(tmp_path):
    session, _, _ = run_script(tmp_path / "s", rounds=1)
    doc_path = tmp_path / "s" / "session.json"
    doc = json.loads(doc_path.read_text())
    with pytest.raises(InputError, match="holds no session.json"):
        load_session(tmp_path)
    doc["version"] = 99
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="version 99"):
        load_session(tmp_path / "s")
    doc["version"] = 1
    doc_path.write_text(json.dumps(doc))
    (mask_file,) = (tmp_path / "s" / "masks").iterdir()
    np.savez_compressed(mask_file, box=np.array([0, 0, 0, 0, 0, 0]), bits=np.array([1], dtype=np.uint8))
    with pytest.raises(InputError, match="does not hold the mask"):
        load_session(tmp_path / "s")
    mask_file.unlink()
    with pytest.raises(InputError, match="missing"):
        load_session(tmp_path / "s")
