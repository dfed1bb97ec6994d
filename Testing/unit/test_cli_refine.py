"""``ask INPUT --session DIR --refine E1 --box|--erase ...``: a correction of an entity as a round, through the CLI,
with a segmenter that answers from the truth (``support.fakes.oracle``): OUT gets the corrected entity under the same
id, result.json counts the segmenter's work, and every usage error exits 2 with one sentence and no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.fakes import oracle

from MedSegReasoning.cli import main

FIRST_BOX = "10,8,38,32,2"  # on the block (rows 10-29, columns 12-35, slices 1-4), key slice 2


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """A 6-slice 48 x 40 CT series with a bright block on slices 1-4."""
    from MedSegReasoning.volume import write_dicom_series
    from MedSegReasoning.volume.core import Geometry

    array = np.full((6, 40, 48), -1000, dtype=np.int16)
    array[1:5, 10:30, 12:36] = 60
    folder = tmp_path_factory.mktemp("refine") / "dicom"
    write_dicom_series(array, Geometry.from_arrays((0, 0, 0), (1.0, 1.0, 2.0), np.eye(3)), folder, modality="CT")
    return folder


@pytest.fixture
def session(series, tmp_path, monkeypatch) -> Path:
    """A session whose round 1 made E1 (the whole block) from FIRST_BOX; the fake segmenter stays patched in."""
    from MedSegReasoning.segmentation import factory
    from MedSegReasoning.volume import load_volume

    voxels = load_volume(series).array
    truth = voxels > 0
    monkeypatch.setattr(factory, "create_segmenter", lambda spec, **kw: oracle(voxels, truth))
    folder = tmp_path / "session"
    assert main(["ask", str(series), "--box", FIRST_BOX, "--session", str(folder), "--out", str(tmp_path / "r1")]) == 0
    return folder


def _mask(out: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / "mask.nii.gz"))) > 0


def _target(out: Path) -> dict:
    (target,) = json.loads((out / "result.json").read_text())["targets"]
    return target


def _counts_are_consistent(target: dict) -> None:
    """result.json's per-target segmenter counts: present, whole numbers, and every segmented slice had an embedding."""
    counts = {
        k: target[k] for k in ("encoder_calls", "embedding_cache_hits", "segmented_slices", "interpolated_slices")
    }
    assert all(isinstance(v, int) and v >= 0 for v in counts.values()), counts
    assert counts["encoder_calls"] + counts["embedding_cache_hits"] >= counts["segmented_slices"], counts


def test_the_first_round_records_its_counts(session, tmp_path):
    target = _target(tmp_path / "r1")
    _counts_are_consistent(target)
    # skip-and-interpolate (the default): key slice 2; up, slice 4 agrees so 3 is interpolated, then 5 ends it;
    # down, slice 0 (two away) is empty, so 1 is segmented and 0 ends it
    assert target["segmented_slices"] == 5 and target["interpolated_slices"] == 1
    assert target["encoder_calls"] == 5  # a fresh segmenter: every segmented slice encoded once, none twice


def test_refine_add_writes_the_same_entity_with_only_the_corrected_slices_changed(series, session, tmp_path, capsys):
    from MedSegReasoning.dialogue import load_session

    before = _mask(tmp_path / "r1")
    out = tmp_path / "r2"
    narrower = "12,10,30,29,3"  # slice 3: the block's columns 12-30 only
    assert (
        main(["ask", str(series), "--session", str(session), "--refine", "E1", "--box", narrower, "--out", str(out)])
        == 0
    )
    assert "E1 " in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"mask.nii.gz", "result.json"}
    result = json.loads((out / "result.json").read_text())
    target = result["targets"][0]
    assert target["entity_id"] == "E1" and result["round"]["index"] == 2
    assert target["prompt"]["kind"] == "add" and target["prompt"]["changed_slices"] == [3]
    _counts_are_consistent(target)
    assert target["segmented_slices"] >= 1 and target["interpolated_slices"] == 0
    after = _mask(out)
    assert after[3].sum() == 20 * 19 and after[3, 10:30, 12:31].all()  # rows 10-29 x columns 12-30
    np.testing.assert_array_equal(np.delete(after, 3, axis=0), np.delete(before, 3, axis=0))
    loaded = load_session(session)
    assert list(loaded.entities) == ["E1"] and len(loaded.rounds) == 2
    np.testing.assert_array_equal(loaded.dense_mask("E1"), after)


def test_refine_erase_removes_the_box(series, session, tmp_path):
    before = _mask(tmp_path / "r1")
    out = tmp_path / "r2"
    argv = ["ask", str(series), "--session", str(session), "--refine", "e1", "--erase", "30,8,40,32,4"]
    assert main([*argv, "--out", str(out)]) == 0
    target = _target(out)
    assert target["entity_id"] == "E1" and target["prompt"]["kind"] == "erase"
    _counts_are_consistent(target)
    assert (target["encoder_calls"], target["segmented_slices"]) == (0, 0)  # an erase runs no segmenter
    after = _mask(out)
    assert not after[4, :, 30:41].any() and after[4, 10:30, 12:30].all()
    np.testing.assert_array_equal(after[:4], before[:4])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--refine", "E9", "--box", "12,10,30,29,3"], "there is no entity 'E9' in this session (entities: E1)"),
        (["--refine", "E1", "--box", "12,10,30,29,3", "--erase", "30,8,40,32,4"], "needs exactly one of --box"),
        (["--refine", "E1"], "needs exactly one of --box"),
        (["--refine", "E1", "--box", "12,10,60,29,3"], "lies outside the slice"),
        (["--refine", "E1", "--erase", "12,10,30,29,9"], "slice K=9 does not exist"),
        (["--refine", "E1", "--box", "12,10,30,29,3", "where is it?"], "--refine takes no QUESTION"),
    ],
)
def test_refine_usage_errors_exit_2_and_leave_the_session(series, session, tmp_path, capsys, args, message):
    from MedSegReasoning.dialogue import load_session

    capsys.readouterr()
    argv = ["ask", str(series), "--session", str(session), *args, "--out", str(tmp_path / "r2")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if not line.startswith("reading ")]  # the status line before a read
    assert message in err and "Traceback" not in err and len(said) == 1, err
    assert len(load_session(session).rounds) == 1, "a refused correction leaves the session as it was"


def test_refine_without_a_session_exits_2(series, tmp_path, capsys):
    box = ["--box", "12,10,30,29,3"]
    assert main(["ask", str(series), "--refine", "E1", *box, "--out", str(tmp_path / "a")]) == 2
    assert "--refine E1 needs --session DIR" in capsys.readouterr().err
    empty = tmp_path / "no-session"
    assert (
        main(["ask", str(series), "--session", str(empty), "--refine", "E1", *box, "--out", str(tmp_path / "b")]) == 2
    )
    err = capsys.readouterr().err
    assert f"there is no session in {empty}" in err and "Traceback" not in err
    assert not empty.exists(), "a refused correction creates no session"
