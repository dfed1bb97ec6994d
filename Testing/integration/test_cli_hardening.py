"""Issue 15, the CLI half: hostile and unlucky inputs get their documented exit code, nothing is lost or half-kept.

Each test here failed before its fix. In-process (``cli.main``) wherever the failure is an exception; the
non-UTF-8 file name runs in a subprocess because it used to abort the interpreter (SIGABRT from ITK's C++).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from MedSegReasoning.cli import main

TESTING = Path(__file__).resolve().parents[1]  # Testing/: the support package is found from there
ROOT = TESTING.parent


@pytest.fixture(scope="module")
def block_volume():
    """A 6-slice 48x40 volume with a bright block (the oracle segmenter's truth is ``array > 0``)."""
    array = np.full((6, 40, 48), -1000, dtype=np.int16)
    array[1:5, 10:30, 12:36] = 60
    return array


@pytest.fixture(scope="module")
def block_nifti(tmp_path_factory, block_volume) -> Path:
    import SimpleITK as sitk

    path = tmp_path_factory.mktemp("nifti") / "block.nii.gz"
    image = sitk.GetImageFromArray(block_volume)
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def oracle(monkeypatch, block_volume):
    """``create_segmenter`` and ``preload`` give the oracle: no model weights are loaded."""
    from support.fakes import oracle as fake

    from MedSegReasoning.segmentation import factory

    monkeypatch.setattr(factory, "create_segmenter", lambda spec, **kw: fake(block_volume, block_volume > 0))
    monkeypatch.setattr(factory, "preload", lambda *a, **kw: None)


BOX = ["--box", "10,8,38,32,2"]

# --- 2: non-UTF-8 file names -----------------------------------------------------------------------------------

_RUN_WITH_ORACLE = """
import sys
sys.path.insert(0, {testing!r})
import numpy as np
from support.fakes import oracle
from MedSegReasoning.segmentation import factory
from MedSegReasoning import cli
array = np.full((6, 40, 48), -1000, dtype=np.int16); array[1:5, 10:30, 12:36] = 60
factory.create_segmenter = lambda spec, **kw: oracle(array, array > 0)
factory.preload = lambda *a, **kw: None
sys.exit(cli.main(sys.argv[1:]))
"""


def test_non_utf8_input_and_out_names_work_in_a_subprocess(tmp_path, block_nifti):
    """Linux names are bytes: an input and an --out that are not UTF-8 are read and written, never an abort."""
    base = os.fsencode(tmp_path)
    bad_in = base + b"/scan-\xff.nii.gz"
    bad_out = base + b"/out-\xfe"
    with open(bad_in, "wb") as f:
        f.write(block_nifti.read_bytes())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "PYTHONIOENCODING": "utf-8"}
    script = _RUN_WITH_ORACLE.format(testing=str(TESTING))
    argv = [sys.executable, "-c", script, "ask", bad_in, *(a.encode() for a in BOX), b"--out", bad_out]
    proc = subprocess.run(argv, capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    written = sorted(os.listdir(bad_out))
    assert b"mask.nii.gz" in written and b"result.json" in written
    assert not [n for n in written if n.startswith(b".")], "no staging leftovers"
    result = json.loads(open(bad_out + b"/result.json", "rb").read())
    assert result["targets"][0]["voxels"] == 4 * 20 * 24


def test_a_leftover_staging_folder_does_not_block_the_next_run(tmp_path, block_nifti, oracle, capsys):
    out = tmp_path / "o"
    (out / ".staging-abc123").mkdir(parents=True)  # what a killed run leaves behind
    assert main(["ask", str(block_nifti), *BOX, "--out", str(out)]) == 0
    assert (out / "mask.nii.gz").is_file()


# --- 3: --force replaces the output set all or nothing ---------------------------------------------------------


def test_force_replacement_is_all_or_nothing(tmp_path, block_nifti, oracle, capsys, monkeypatch):
    from MedSegReasoning import atomic

    out = tmp_path / "o"
    argv = ["ask", str(block_nifti), *BOX, "--out", str(out), "--force"]
    assert main(argv) == 0
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace

    def failing_replace(src, dst):  # the third file's move fails, after two files were replaced
        if Path(src).name == "result.json" and Path(src).parent.name.startswith(".staging-"):  # the new one moving in
            raise OSError("Is a directory")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    assert main([*argv, "--no-propagate"]) == 2  # a different result: a half-replaced set would show
    assert "Is a directory" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before, "the earlier result is back, whole, and the user's own file untouched"


def test_a_folder_named_like_an_output_is_refused_before_the_model(tmp_path, block_nifti, capsys, monkeypatch):
    from MedSegReasoning.segmentation import factory

    def no_model(*a, **kw):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(factory, "create_segmenter", no_model)
    monkeypatch.setattr(factory, "preload", no_model)
    out = tmp_path / "o"
    (out / "result.json").mkdir(parents=True)
    assert main(["ask", str(block_nifti), *BOX, "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert "folder named result.json" in err and "Traceback" not in err


# --- 4: a failed ask --session does not commit its round -------------------------------------------------------


def test_a_failed_session_ask_leaves_the_session_as_it_was(
    tmp_path, block_volume, block_nifti, oracle, capsys, monkeypatch
):
    from MedSegReasoning import output
    from MedSegReasoning.dialogue import load_session

    session = tmp_path / "s"
    base = ["ask", str(block_nifti), *BOX, "--session", str(session)]
    assert main([*base, "--out", str(tmp_path / "r1")]) == 0
    saved = (session / "session.json").read_bytes()
    masks = sorted(p.name for p in (session / "masks").iterdir())

    def disk_full(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output, "write_ask_outputs", disk_full)
    assert main([*base, "--out", str(tmp_path / "r2")]) == 2
    assert "No space left" in capsys.readouterr().err
    assert (session / "session.json").read_bytes() == saved, "round 2 and E2 were not committed"
    assert sorted(p.name for p in (session / "masks").iterdir()) == masks
    monkeypatch.undo()
    # the retry (outputs writable again) gives round 2 once
    from support.fakes import oracle as fake

    from MedSegReasoning.segmentation import factory

    monkeypatch.setattr(factory, "create_segmenter", lambda spec, **kw: fake(block_volume, block_nifti_truth()))
    monkeypatch.setattr(factory, "preload", lambda *a, **kw: None)
    assert main([*base, "--out", str(tmp_path / "r2")]) == 0
    loaded = load_session(session)
    assert len(loaded.rounds) == 2 and list(loaded.entities) == ["E1", "E2"]


def block_nifti_truth() -> np.ndarray:
    truth = np.zeros((6, 40, 48), dtype=bool)
    truth[1:5, 10:30, 12:36] = True
    return truth


# --- 13: NaN/inf voxels, one rule for the CLI and the server ----------------------------------------------------


def _float_nifti(path: Path, array: np.ndarray) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))
    return path


def test_nan_voxels_are_counted_and_treated_as_the_finite_minimum(tmp_path, block_volume, oracle, capsys):
    array = block_volume.astype(np.float32)
    array[:, :3, :] = np.nan  # a NaN background band
    array[0, 0, 0] = np.inf
    path = _float_nifti(tmp_path / "nan.nii.gz", array)
    out = tmp_path / "o"
    assert main(["ask", str(path), *BOX, "--out", str(out)]) == 0
    n_bad = 6 * 3 * 48
    assert f"{n_bad:,} of" in capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert any(f"{n_bad:,} of" in w for w in result["warnings"])
    assert result["targets"][0]["voxels"] == 4 * 20 * 24


def test_the_volume_layer_rule_keeps_the_given_voxels_hash():
    from MedSegReasoning.volume.core import Geometry, Volume
    from MedSegReasoning.volume.finite import with_finite_voxels

    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4) + 5
    array[0, 0, :2] = [np.nan, -np.inf]
    given = Volume(array.copy(), Geometry.from_arrays((0, 0, 0), (1, 1, 1), np.eye(3)))
    clean = with_finite_voxels(given)
    assert clean.non_finite_voxels == 2 and np.isfinite(clean.array).all()
    assert clean.array[0, 0, 0] == clean.array[0, 0, 1] == 7.0  # the finite minimum
    assert clean.content_hash() == given.content_hash(), "CLI and server name the volume by the voxels as given"


def test_an_all_nan_volume_is_bad_input_before_the_model(tmp_path, capsys, monkeypatch):
    from MedSegReasoning.segmentation import factory

    monkeypatch.setattr(factory, "create_segmenter", lambda *a, **kw: pytest.fail("the model must not load"))
    monkeypatch.setattr(factory, "preload", lambda *a, **kw: None)
    path = _float_nifti(tmp_path / "allnan.nii.gz", np.full((3, 8, 8), np.nan))
    assert main(["ask", str(path), "--box", "1,1,5,5,1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "allnan.nii.gz" in err and "all 192 voxels are NaN or infinite" in err and "uniform" not in err


# --- 10, 12, 14: damaged DICOM headers are bad input, named, before any model runs -------------------------------


@pytest.fixture
def no_model(monkeypatch):
    from MedSegReasoning.segmentation import factory

    monkeypatch.setattr(factory, "create_segmenter", lambda *a, **kw: pytest.fail("no model may run on bad input"))
    monkeypatch.setattr(factory, "preload", lambda *a, **kw: None)


def _series_with(tmp_path: Path, block_volume, edit) -> Path:
    """The block as a 6-file CT series, with ``edit(dataset)`` applied to its third file."""
    import pydicom

    from MedSegReasoning.volume import write_dicom_series
    from MedSegReasoning.volume.core import Geometry

    folder = tmp_path / "dicom"
    write_dicom_series(block_volume, Geometry.from_arrays((0, 0, 0), (1.0, 1.0, 2.0), np.eye(3)), folder, modality="CT")
    victim = sorted(folder.iterdir())[2]
    ds = pydicom.dcmread(victim)
    edit(ds)
    ds.save_as(victim)
    return folder


def _raw(keyword: str, vr: str, value: bytes):
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement

    tag = tag_for_keyword(keyword)
    return tag, RawDataElement(tag, vr, len(value), value, 0, False, True)


def _set_raw(keyword: str, vr: str, value: bytes):
    def edit(ds):
        tag, element = _raw(keyword, vr, value)
        ds[tag] = element

    return edit


DAMAGED_HEADERS = {
    "iop-zeros": (_set_raw("ImageOrientationPatient", "DS", b"0\\0\\0\\0\\0\\0 "), "not two perpendicular unit"),
    "spacing-zero": (_set_raw("PixelSpacing", "DS", b"0\\0 "), "PixelSpacing [0, 0]"),
    "ipp-text": (_set_raw("ImagePositionPatient", "DS", b"0\\abc\\1 "), "ImagePositionPatient '0\\abc\\1'"),
    "slope-nan": (_set_raw("RescaleSlope", "DS", b"NaN "), "a NaN RescaleSlope makes every voxel NaN"),
    "huge-matrix": (lambda ds: setattr(ds, "Rows", 65535) or setattr(ds, "Columns", 65535), "65535 x 65535 pixels"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_HEADERS))
def test_damaged_dicom_headers_exit_2_naming_the_file(case, tmp_path, block_volume, no_model, capsys):
    edit, phrase = DAMAGED_HEADERS[case]
    folder = _series_with(tmp_path, block_volume, edit)
    victim = sorted(folder.iterdir())[2]
    given = victim if case == "huge-matrix" else folder  # one file: a series would differ in matrix size first
    assert main(["ask", str(given), *BOX, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert phrase in err and victim.name in err, err
    assert "unexpected internal error" not in err and "uniform" not in err


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_nifti_header_announcing_huge_dimensions_is_bad_input(suffix, tmp_path, no_model, capsys):
    import gzip
    import struct

    import SimpleITK as sitk

    plain = tmp_path / "small.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), str(plain))
    data = bytearray(plain.read_bytes())
    data[40:56] = struct.pack("<8h", 3, 32767, 32767, 32767, 1, 1, 1, 1)  # dim[] of the NIfTI-1 header
    path = tmp_path / f"huge{suffix}"
    path.write_bytes(gzip.compress(bytes(data)) if suffix.endswith(".gz") else bytes(data))
    assert main(["ask", str(path), "--box", "1,1,3,3,1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"huge{suffix} announces 32767 x 32767 x 32767 voxels" in err and "out of memory" not in err


# --- 10: replay files, hf: folders and session folders that are damaged -----------------------------------------

ANSWER_LINE = {"raw": '{"reasoning": "r", "targets": [], "clarification": "which?"}'}


@pytest.mark.parametrize(
    "content, phrase",
    [
        (b'{"raw": "caf\xe9"}\n', "is not UTF-8 text"),
        (json.dumps({"meta": {"identity": "x"}}).encode() + b"\n" + json.dumps(ANSWER_LINE).encode(), '"identity"'),
        (json.dumps({"meta": {"convention": 7}}).encode() + b"\n" + json.dumps(ANSWER_LINE).encode(), '"convention"'),
        (
            json.dumps({"meta": {"identity": {"name": ["a"]}}}).encode() + b"\n" + json.dumps(ANSWER_LINE).encode(),
            '"identity.name"',
        ),
    ],
    ids=["not-utf8", "identity-text", "convention-number", "name-list"],
)
def test_damaged_replay_files_are_bad_input(content, phrase, tmp_path, block_nifti, no_model, capsys):
    replay = tmp_path / "answers.jsonl"
    replay.write_bytes(content)
    argv = ["ask", str(block_nifti), "where?", "--reasoner", f"replay:{replay}", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert phrase in err and "unexpected internal error" not in err, err


def test_a_replay_folder_is_named_as_a_folder(tmp_path, block_nifti, no_model, capsys):
    argv = ["ask", str(block_nifti), "where?", "--reasoner", f"replay:{tmp_path}", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "does not exist" not in err


@pytest.mark.parametrize("config", [b"[]", b'{"model_type": "qwen2_5_vl\xff"}'], ids=["list", "not-utf8"])
def test_an_hf_folder_with_a_damaged_config_is_a_model_error(config, tmp_path, block_nifti, no_model, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_bytes(config)
    (model / "model.safetensors").write_bytes(b"")
    argv = ["ask", str(block_nifti), "where?", "--reasoner", f"hf:{model}", "--out", str(tmp_path / "o")]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "config.json" in err and "unexpected internal error" not in err, err


def _damage_session(session: Path, how: str) -> None:
    doc_path = session / "session.json"
    doc = json.loads(doc_path.read_text())
    mask = next((session / "masks").iterdir())
    if how == "no-entities":
        del doc["entities"]
    elif how == "entity-without-id":
        del doc["entities"][0]["id"]
    elif how == "not-utf8":
        doc_path.write_bytes(doc_path.read_bytes().replace(b'"E1"', b'"E\xff"', 1))
        return
    elif how == "mask-corrupt":
        mask.write_bytes(b"PK\x03\x04 this is no zip")
        return
    elif how == "mask-truncated":
        mask.write_bytes(mask.read_bytes()[:40])
        return
    doc_path.write_text(json.dumps(doc))


DAMAGES = ["no-entities", "entity-without-id", "not-utf8", "mask-corrupt", "mask-truncated"]


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_session_folders_are_bad_input_for_ask_and_export(how, tmp_path, block_nifti, oracle, capsys):
    session = tmp_path / "s"
    assert main(["ask", str(block_nifti), *BOX, "--session", str(session), "--out", str(tmp_path / "r1")]) == 0
    _damage_session(session, how)
    capsys.readouterr()
    argv = ["ask", str(block_nifti), *BOX, "--session", str(session), "--out", str(tmp_path / "r2")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "damaged" in err and "unexpected internal error" not in err, err
    assert main(["export", str(session), "--format", "nifti", "--to", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "damaged" in err and "unexpected internal error" not in err, err


# --- 9: a cap on targets per answer; the rest recorded as refused -----------------------------------------------


def test_targets_beyond_the_cap_are_recorded_as_refused(block_volume):
    from support.fakes import oracle as fake

    from MedSegReasoning.dialogue import RoundConfig, RoundPlan, Session, TargetSpec, run_round
    from MedSegReasoning.dialogue.rounds import DEFAULT_ROUND
    from MedSegReasoning.pipeline import VoxelPrompt
    from MedSegReasoning.volume.core import Geometry, Volume
    from MedSegReasoning.volume.windowing import WINDOW_PRESETS

    volume = Volume(block_volume.copy(), Geometry.from_arrays((0, 0, 0), (1.0, 1.0, 2.0), np.eye(3)), "CT")
    session = Session.for_volume(volume)
    box = VoxelPrompt(k=2, box=(10, 8, 38, 32))
    plan = RoundPlan(targets=tuple(TargetSpec(f"block {n}", box, propagate=False) for n in range(5)))
    config = RoundConfig(max_targets=2)
    rnd = run_round(
        session,
        volume,
        fake(block_volume, block_volume > 0),
        WINDOW_PRESETS["ct-soft-tissue"],
        "all",
        plan,
        config=config,
    )
    assert [t.status for t in rnd.targets][2:] == ["refused"] * 3
    assert all(t.status != "refused" for t in rnd.targets[:2]) and len(session.entities) <= 2
    assert "named 5 targets and at most 2 are segmented" in rnd.targets[4].error
    assert DEFAULT_ROUND.max_targets == 20, "the documented cap (docs/reasoning.md)"


# --- 14: messages that say what is wrong ------------------------------------------------------------------------


def test_a_negative_box_value_gets_the_prompt_message_not_argparse(tmp_path, block_nifti, no_model, capsys):
    assert main(["ask", str(block_nifti), "--box", "-5,8,38,32,2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "lies outside the slice" in err and "expected one argument" not in err


def test_a_one_pixel_box_is_too_thin_not_uniform(tmp_path, block_nifti, no_model, capsys):
    assert main(["ask", str(block_nifti), "--box", "20,20,20,20,2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "1 x 1 pixel(s), too thin" in err and "uniform" not in err
