"""The CLI as a user meets it: exit codes, one-sentence errors, outputs on the input's grid, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from MedSegReasoning.cli import main, parse_prompt
from MedSegReasoning.wire.errors import InputError

CLI = [sys.executable, "-m", "MedSegReasoning.cli"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, encoding="utf-8", cwd=cwd, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def small_series(tmp_path_factory) -> Path:
    """A 6-slice 48x40 CT series with a bright block in the middle (enough for every bad-input case)."""
    from MedSegReasoning.volume import write_dicom_series
    from MedSegReasoning.volume.core import Geometry

    array = np.full((6, 40, 48), -1000, dtype=np.int16)
    array[1:5, 10:30, 12:36] = 60
    folder = tmp_path_factory.mktemp("small") / "dicom"
    write_dicom_series(array, Geometry.from_arrays((0, 0, 0), (1.0, 1.0, 2.0), np.eye(3)), folder, modality="CT")
    return folder


# --- parsing ---------------------------------------------------------------------------------------------------


def test_box_and_points_combine_into_one_prompt():
    prompt = parse_prompt("1,2,30,40,5", ["10,12,5", "3,4,5,0"])
    assert prompt.k == 5 and prompt.box == (1, 2, 30, 40)
    assert prompt.points == ((10, 12), (3, 4)) and prompt.labels == (1, 0)


@pytest.mark.parametrize(
    ("box", "points", "message"),
    [
        ("1,2,3", [], "I0,J0,I1,J1,K"),
        ("a,b,c,d,e", [], "whole numbers"),
        (None, ["1,2"], "I,J,K"),
        (None, ["1,2,3,7"], "must be 1 \\(foreground\\) or 0"),
        ("0,0,5,5,1", ["2,2,2"], "same slice"),
    ],
)
def test_malformed_prompts_say_how_to_write_them(box, points, message):
    with pytest.raises(InputError, match=message):
        parse_prompt(box, points)


# --- bad input: exit codes and one sentence, no traceback ------------------------------------------------------


def _bad(capsys, argv: list[str], code: int, phrase: str) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert phrase in err
    assert "Traceback" not in err
    said = [line for line in err.splitlines() if not line.startswith(("reading ", "loading "))]  # status lines
    assert len(said) == 1 and err.endswith("\n"), f"expected one line on stderr, got: {err!r}"


def test_nonexistent_input(capsys, tmp_path):
    _bad(capsys, ["ask", str(tmp_path / "nope"), "--box", "0,0,1,1,0", "--out", str(tmp_path / "o")], 2, "nope")


def test_text_file_is_not_an_image(capsys, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("not an image")
    _bad(capsys, ["ask", str(f), "--box", "0,0,1,1,0", "--out", str(tmp_path / "o")], 2, "notes.txt")


def test_folder_without_dicom(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    _bad(capsys, ["ask", str(tmp_path / "empty"), "--box", "0,0,1,1,0", "--out", str(tmp_path / "o")], 2, "DICOM")


def test_truncated_dicom(capsys, tmp_path, small_series):
    src = sorted(small_series.iterdir())[0]
    bad = tmp_path / "truncated.dcm"
    bad.write_bytes(src.read_bytes()[:700])
    _bad(capsys, ["ask", str(bad), "--box", "0,0,1,1,0", "--out", str(tmp_path / "o")], 2, "truncated.dcm")


@pytest.mark.parametrize(
    ("box", "phrase"),
    [("10,8,38,32,6", "slices 0 to 5"), ("12,10,48,29,2", "outside the slice"), ("30,10,12,29,2", "inverted")],
)
def test_box_outside_the_volume(capsys, tmp_path, small_series, box, phrase):
    _bad(capsys, ["ask", str(small_series), "--box", box, "--out", str(tmp_path / "o")], 2, phrase)
    assert not (tmp_path / "o" / "result.json").exists()


def test_box_on_an_empty_region(capsys, tmp_path, small_series):
    _bad(capsys, ["ask", str(small_series), "--box", "0,0,8,8,2", "--out", str(tmp_path / "o")], 2, "uniform region")


def test_neither_question_nor_prompt(capsys, tmp_path, small_series):
    _bad(capsys, ["ask", str(small_series), "--out", str(tmp_path / "o")], 2, "--box")


def test_non_empty_out_is_refused_without_force(capsys, tmp_path, small_series):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _bad(capsys, ["ask", str(small_series), "--box", "10,8,38,32,2", "--out", str(out)], 2, "--force")
    assert (out / "keep.txt").read_text() == "mine"


def test_missing_model_weights_exit_3(capsys, tmp_path, small_series):
    argv = ["ask", str(small_series), "--box", "10,8,38,32,2", "--segmenter", f"sam:{tmp_path / 'no.pth'}"]
    _bad(capsys, [*argv, "--out", str(tmp_path / "o")], 3, "no.pth")


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    proc = run_cli("ask", str(tmp_path / "missing"), "--box", "0,0,1,1,0", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "missing" in proc.stderr
    debug = run_cli("--debug", "ask", str(tmp_path / "missing"), "--box", "0,0,1,1,0", "--out", str(tmp_path / "o"))
    assert "Traceback" in debug.stderr


def test_help_documents_exit_codes_and_indices():
    proc = run_cli("ask", "--help")
    assert proc.returncode == 0
    for phrase in ("exit codes", "I is the column", "inclusive", "mask.nii.gz", "seg.dcm", "result.json"):
        assert phrase in proc.stdout


# --- success, with the real model --------------------------------------------------------------------------------


@pytest.mark.slow
def test_ask_on_real_ct_writes_mask_seg_and_result(shared_ct, litemedsam, tmp_path, monkeypatch, capsys):
    import SimpleITK as sitk
    from support.ct_reference import reference_on_ct_grid

    from MedSegReasoning.segmentation import factory
    from MedSegReasoning.volume import load_volume

    monkeypatch.setattr(factory, "create_segmenter", lambda spec, **kw: litemedsam)  # reuse the loaded model
    volume = load_volume(shared_ct / "dicom")
    liver = reference_on_ct_grid(shared_ct, volume, "liver")
    k = int(np.argmax(liver.sum(axis=(1, 2))))
    rows, cols = np.nonzero(liver[k])
    box = f"{cols.min()},{rows.min()},{cols.max()},{rows.max()},{k}"
    out = tmp_path / "out"
    assert (
        main(["ask", str(shared_ct / "dicom"), "--box", box, "--no-propagate", "--label", "liver", "--out", str(out)])
        == 0
    )
    assert "liver:" in capsys.readouterr().out

    image = sitk.ReadImage(str(out / "mask.nii.gz"))
    assert image.GetPixelID() == sitk.sitkUInt8
    assert np.allclose(image.GetOrigin(), volume.geometry.origin, atol=1e-3)
    assert np.allclose(image.GetDirection(), volume.geometry.direction_matrix.ravel(), atol=1e-5)
    mask = sitk.GetArrayFromImage(image)
    assert set(np.unique(mask)) == {0, 1} and mask[k].any() and not np.delete(mask, k, axis=0).any()
    dice = 2 * np.logical_and(mask[k] > 0, liver[k]).sum() / ((mask[k] > 0).sum() + liver[k].sum())
    assert dice > 0.9, f"liver Dice {dice:.3f} on the key slice"

    result = json.loads((out / "result.json").read_text())
    assert result["schema"] == "medseg-reasoning/result" and result["schema_version"] == 1
    assert result["input"]["series_instance_uid"] == volume.source.dicom.series_instance_uid
    (target,) = result["targets"]
    assert target["value"] == 1 and target["label"] == "liver" and target["key_slice"] == k
    assert target["voxels"] == int((mask > 0).sum())
    assert target["volume_ml"] == pytest.approx(target["voxels"] * np.prod(volume.geometry.spacing) / 1000, rel=1e-3)
    assert result["versions"]["segmenter"]["sha256"] == litemedsam.identity.sha256
    assert set(result["timings_s"]) >= {"load_s", "segment_s", "export_s"}
    # this anonymised series has blank Study/Series Instance UIDs: no SEG can reference it, the mask stays
    assert result["outputs"]["seg"] is None and not (out / "seg.dcm").exists()
    assert "Series Instance UID" in result["warnings"][0] or "SeriesInstanceUID" in result["warnings"][0]
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no staging leftovers"


def test_failed_export_keeps_the_previous_outputs(tmp_path, small_series, monkeypatch, capsys):
    from support.fakes import oracle

    from MedSegReasoning.export import dicom_seg
    from MedSegReasoning.segmentation import factory
    from MedSegReasoning.volume import load_volume

    voxels = load_volume(small_series).array
    truth = voxels > 0
    monkeypatch.setattr(factory, "create_segmenter", lambda spec, **kw: oracle(voxels, truth))
    out = tmp_path / "o"
    argv = ["ask", str(small_series), "--box", "10,8,38,32,2", "--out", str(out), "--force"]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"mask.nii.gz", "seg.dcm", "result.json", "overview.png"}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dicom_seg, "_build_segmentation", broken)
    assert main(argv) == 2
    assert "disk full" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before, "a failed run must leave the earlier outputs untouched"


def test_oracle_propagation_through_cli_on_a_series(tmp_path, small_series, monkeypatch, capsys):
    from support.external_tools import dciodvfy_errors
    from support.fakes import oracle

    from MedSegReasoning.segmentation import factory
    from MedSegReasoning.volume import load_volume

    voxels = load_volume(small_series).array
    truth = voxels > 0
    monkeypatch.setattr(factory, "create_segmenter", lambda spec, **kw: oracle(voxels, truth))
    assert main(["ask", str(small_series), "--box", "10,8,38,32,2", "--out", str(tmp_path / "o")]) == 0
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert result["targets"][0]["slice_range"] == [1, 4]
    assert result["targets"][0]["voxels"] == int(truth.sum())
    assert "ended" in result["targets"][0]["propagation"]["stopped"]["up"]
    assert result["outputs"]["seg"] == "seg.dcm" and result["warnings"] == []
    assert dciodvfy_errors(tmp_path / "o" / "seg.dcm") == []


# --- a question answered by a (replay) reasoner, and sessions over several asks --------------------------------


def _replay_file(path: Path, rounds: list[tuple[str, str]]) -> Path:
    """Recorded answers: per round a key-slice pick and a box on that slice (view pixels = i, j here)."""
    lines = []
    for n, (pick, locate) in enumerate(rounds, start=1):
        lines.append({"round": n, "step": "pick_slice", "raw": pick})
        lines.append({"round": n, "step": "locate", "raw": locate})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


PICK_2 = '{"reasoning": "The block is widest on slice 2.", "targets": [{"slice": 2, "label": "liver"}]}'
LOCATE_2 = (
    '{"reasoning": "Homogeneous soft tissue.", "targets": [{"slice": 2, "bbox": [10, 8, 38, 32], '
    '"label": "liver", "ref": null}], "clarification": null}'
)
LOCATE_REF = (
    '{"reasoning": "Same organ, tighter.", "targets": [{"slice": 2, "bbox": [11, 9, 37, 31], '
    '"label": "liver", "ref": "E1"}], "clarification": null}'
)


def test_question_is_answered_by_the_reasoner_and_recorded(tmp_path, small_series, monkeypatch, capsys):
    from support.fakes import oracle

    from MedSegReasoning.segmentation import factory
    from MedSegReasoning.volume import load_volume

    voxels = load_volume(small_series).array
    truth = voxels > 0
    monkeypatch.setattr(factory, "create_segmenter", lambda spec, **kw: oracle(voxels, truth))
    replay = _replay_file(tmp_path / "answers.jsonl", [(PICK_2, LOCATE_2)])
    out = tmp_path / "o"
    argv = ["ask", str(small_series), "segment the liver", "--reasoner", f"replay:{replay}", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Homogeneous soft tissue." in printed, "the reasoning is streamed to the user"
    assert "E1 liver:" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["reasoner"]["backend"] == "replay"
    assert "widest on slice 2" in result["round"]["reasoning"]
    (target,) = result["targets"]
    assert target["entity_id"] == "E1" and target["voxels"] == int(truth.sum())
    assert target["terminology"]["type"]["meaning"].lower() == "liver"
    assert "mL" in target["findings"]
    assert result["outputs"]["seg"] == "seg.dcm"


def test_session_carries_entities_across_asks(tmp_path, small_series, monkeypatch, capsys):
    from support.fakes import oracle

    from MedSegReasoning.dialogue import load_session
    from MedSegReasoning.segmentation import factory
    from MedSegReasoning.volume import load_volume

    voxels = load_volume(small_series).array
    truth = voxels > 0
    monkeypatch.setattr(factory, "create_segmenter", lambda spec, **kw: oracle(voxels, truth))
    replay = _replay_file(tmp_path / "answers.jsonl", [(PICK_2, LOCATE_2), (PICK_2, LOCATE_REF)])
    session = tmp_path / "session"
    base = ["ask", str(small_series), "--reasoner", f"replay:{replay}", "--session", str(session)]
    assert main([*base, "segment the liver", "--out", str(tmp_path / "r1")]) == 0
    assert main([*base, "redo E1 with a tighter box", "--out", str(tmp_path / "r2")]) == 0
    loaded = load_session(session)
    assert len(loaded.rounds) == 2 and list(loaded.entities) == ["E1"], "the redo replaced E1 instead of adding"
    second = json.loads((tmp_path / "r2" / "result.json").read_text())
    assert second["round"]["index"] == 2 and second["targets"][0]["entity_id"] == "E1"

    other = tmp_path / "other.nii.gz"
    from MedSegReasoning.volume.itk_io import write_label_image

    write_label_image(other, truth.astype(np.uint8), load_volume(small_series).geometry)
    capsys.readouterr()
    code = main(["ask", str(other), "--box", "10,8,38,32,2", "--session", str(session), "--out", str(tmp_path / "r3")])
    assert code == 2 and "session" in capsys.readouterr().err
    assert len(load_session(session).rounds) == 2, "a refused ask leaves the session as it was"


def test_missing_reasoner_model_names_the_pull_command(tmp_path, small_series, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("MEDSEG_MODELS_DIR", str(tmp_path / "models"))
    _bad(capsys, ["ask", str(small_series), "where is the liver?", "--out", str(tmp_path / "o")], 3, "models pull")
