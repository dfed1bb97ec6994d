"""``medseg-reasoning export``: the parser, whole exports from a session and from an ``ask`` result, and every
bad input of the issue (changed source, empty mask, non-DICOM source, ...) with nothing left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from support.dialogue import KIDNEY, abdomen_labels, abdomen_volume, prompt_on
from support.export import export, export_parser, folder_digest, run_session, write_ct
from support.external_tools import dciodvfy_errors, dcmqi_segment_points

from MedSegReasoning.export.command import parse_formats
from MedSegReasoning.export.sr import read_measurement_report
from MedSegReasoning.volume.core import Geometry
from MedSegReasoning.wire.errors import EXIT_BAD_INPUT, InputError

ALL = "seg,sr,seg-nrrd,nifti"


@pytest.fixture
def session_case(tmp_path):
    series = write_ct(tmp_path / "ct")
    run_session(tmp_path / "session", series)
    return tmp_path / "session", series


@pytest.fixture
def result_case(tmp_path, monkeypatch):
    """A real ``ask`` output folder (CLI, box prompt, a scripted segmenter that answers with the true kidney)."""
    from support.fakes import oracle

    from MedSegReasoning.cli import main
    from MedSegReasoning.segmentation import factory
    from MedSegReasoning.volume import load_volume

    series = write_ct(tmp_path / "ct")
    labels = abdomen_labels()
    voxels = load_volume(series).array
    monkeypatch.setattr(factory, "create_segmenter", lambda spec, **kw: oracle(voxels, labels == KIDNEY))
    p = prompt_on(labels, KIDNEY, 12)
    box = f"{p.box[0]},{p.box[1]},{p.box[2]},{p.box[3]},{p.k}"
    assert main(["ask", str(series), "--box", box, "--label", "left kidney", "--out", str(tmp_path / "ask")]) == 0
    return tmp_path / "ask", series, labels == KIDNEY


def test_parser_documents_formats_files_and_credentials():
    text = export_parser().parse_args(["export", "s", "--format", "seg"]).format
    assert text == "seg"
    help_text = export_parser()._subparsers._group_actions[0].choices["export"].format_help()
    for expected in (
        "seg.dcm",
        "sr.dcm",
        "segmentation.seg.nrrd",
        "labels.nii.gz",
        "MEDSEG_DICOMWEB_TOKEN",
        "--deidentify",
    ):
        assert expected in help_text
    with pytest.raises(SystemExit):
        export_parser().parse_args(["export", "s", "--format", "seg", "--to", "d", "--dicomweb", "http://x/dicom-web"])


@pytest.mark.parametrize(
    "text, message",
    [("seg,xyz", "xyz"), ("sr", "sr needs seg"), (" , ", "nothing")],
)
def test_bad_format_lists_are_refused(text, message):
    with pytest.raises(InputError, match=message):
        parse_formats(text)


def test_session_exports_every_format_and_stays_untouched(session_case, tmp_path, capsys):
    session_dir, _ = session_case
    before = folder_digest(session_dir)
    out = tmp_path / "out"
    assert export(session_dir, "--format", ALL, "--to", out, "--reasoner", "Qwen2.5-VL-7B-Instruct") == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["seg.dcm", "sr.dcm", "segmentation.seg.nrrd", "labels.nii.gz", "labels-layer2.nii.gz", "labels.json"]
    )
    printed = capsys.readouterr().out
    assert "left out: E3" in printed and "SR: verification UNVERIFIED" in printed
    for name in ("seg.dcm", "sr.dcm"):
        assert pydicom.dcmread(out / name).preamble == b"\x00" * 128
        assert dciodvfy_errors(out / name) == []
    sr = read_measurement_report(out / "sr.dcm")
    assert sr.findings[0].seg_sop_instance_uid == pydicom.dcmread(out / "seg.dcm").SOPInstanceUID
    assert folder_digest(session_dir) == before, "an export never changes the session"


def test_ask_result_exports_with_the_recorded_codes(result_case, tmp_path):
    ask_dir, _, kidney = result_case
    before = folder_digest(ask_dir)
    out = tmp_path / "out"
    assert export(ask_dir, "--format", ALL, "--to", out) == 0
    seg = pydicom.dcmread(out / "seg.dcm")
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Left kidney" and segment.SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert "oracle" in segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName
    geometry = _geometry_of_result(ask_dir)
    points = dcmqi_segment_points(out / "seg.dcm", tmp_path / "dcmqi")[1]
    ijk = np.round(geometry.physical_to_index(points)).astype(int)
    got = np.zeros_like(kidney)
    got[ijk[:, 2], ijk[:, 1], ijk[:, 0]] = True
    mask = _ask_mask(ask_dir) > 0  # the SEG holds the ask's mask, voxel for voxel
    np.testing.assert_array_equal(got, mask)
    assert (mask & kidney).sum() > 0.9 * mask.sum()
    assert read_measurement_report(out / "sr.dcm").findings[0].tracking_id == "T1"
    assert folder_digest(ask_dir) == before


# --- bad input -------------------------------------------------------------------------------------------------


def test_changed_source_uids_are_refused(result_case, tmp_path):
    ask_dir, series, _ = result_case
    shutil.rmtree(series)
    write_ct(series, seed=99)  # the same voxels and grid, written again: new Study/Series/SOP UIDs
    before = folder_digest(ask_dir)
    with pytest.raises(InputError, match="changed since it was segmented: its Study Instance UID") as info:
        export(ask_dir, "--format", "seg,sr", "--to", tmp_path / "out")
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert not (tmp_path / "out").exists(), "no partial output"
    assert folder_digest(ask_dir) == before


def test_changed_source_voxels_are_refused_for_a_session(session_case, tmp_path):
    session_dir, series = session_case
    shutil.rmtree(series)
    write_ct(series, geometry=Geometry.from_arrays((0.0, 0.0, 0.0), (1.0, 1.0, 3.0), np.eye(3)))
    before = folder_digest(session_dir)
    with pytest.raises(InputError, match="voxels or geometry differ"):
        export(session_dir, "--format", "seg", "--to", tmp_path / "out")
    assert not (tmp_path / "out").exists() and folder_digest(session_dir) == before
    # the label files need no source: they still export
    assert export(session_dir, "--format", "seg-nrrd,nifti", "--to", tmp_path / "files") == 0


def test_recorded_series_uid_is_checked_for_a_session(session_case, tmp_path):
    """Sessions that record the source's UIDs (``volume.series_instance_uid`` in session.json) are held to them."""
    session_dir, series = session_case
    doc = json.loads((session_dir / "session.json").read_text())
    doc["volume"]["series_instance_uid"] = "1.2.826.0.1.3680043.8.498.1"
    (session_dir / "session.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="Series Instance UID is now .* recorded 1.2.826.0.1.3680043.8.498.1"):
        export(session_dir, "--format", "seg", "--to", tmp_path / "out")


def test_empty_target_mask_is_refused(result_case, tmp_path):
    ask_dir, _, _ = result_case
    doc = json.loads((ask_dir / "result.json").read_text())
    doc["targets"].append({**doc["targets"][0], "value": 7, "label": "spleen", "entity_id": None})
    (ask_dir / "result.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"target T2 \('spleen'\) has an empty mask"):
        export(ask_dir, "--format", "seg-nrrd,nifti", "--to", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nifti_source_gets_label_files_but_no_dicom(tmp_path):
    from MedSegReasoning.dialogue import Session
    from MedSegReasoning.volume import load_volume
    from MedSegReasoning.volume.itk_io import write_label_image
    from MedSegReasoning.wire.masks import CompactMask

    source = tmp_path / "ct.nii.gz"
    volume = abdomen_volume()
    write_label_image(source, (volume.array > 0).astype(np.uint8), volume.geometry)
    loaded = load_volume(source)
    session = Session.for_volume(loaded, folder=tmp_path / "session")
    rnd = session.begin_round("mark the kidney")
    session.add_entity(rnd, "left kidney", CompactMask.from_dense(abdomen_labels() == KIDNEY))
    session.finish_round(rnd)
    with pytest.raises(InputError, match="need a DICOM source.*seg-nrrd"):
        export(tmp_path / "session", "--format", "seg", "--to", tmp_path / "out")
    assert export(tmp_path / "session", "--format", "seg-nrrd,nifti", "--to", tmp_path / "out") == 0


def test_missing_source_and_busy_output_folder(session_case, tmp_path):
    session_dir, series = session_case
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        export(session_dir, "--format", "nifti", "--to", busy)
    shutil.rmtree(series)
    with pytest.raises(InputError, match="no longer exists"):
        export(session_dir, "--format", "seg", "--to", busy, "--force")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]


def test_failure_while_writing_leaves_no_file(session_case, tmp_path, monkeypatch):
    from MedSegReasoning.export import slicer_seg

    session_dir, _ = session_case
    before = folder_digest(session_dir)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(slicer_seg, "write_seg_nrrd", broken)
    with pytest.raises(OSError, match="disk full"):
        export(session_dir, "--format", ALL, "--to", tmp_path / "out")
    assert not (tmp_path / "out").exists(), "the SEG and SR written before the failure must not appear"
    assert folder_digest(session_dir) == before


# ---------------------------------------------------------------------------------------------------------------
def _geometry_of_result(ask_dir: Path) -> Geometry:
    record = json.loads((ask_dir / "result.json").read_text())["input"]
    return Geometry.from_arrays(record["origin_lps_mm"], record["spacing_mm"], record["direction"])


def _ask_mask(ask_dir: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(ask_dir / "mask.nii.gz")))


def test_dicomweb_credentials_come_from_the_environment_only():
    from MedSegReasoning.volume.dicomweb import headers_from_env, parse_series_url

    assert headers_from_env({}) == {}
    assert headers_from_env({"MEDSEG_DICOMWEB_TOKEN": "t0k"}) == {"Authorization": "Bearer t0k"}
    basic = headers_from_env({"MEDSEG_DICOMWEB_USER": "u", "MEDSEG_DICOMWEB_PASSWORD": "p"})
    assert basic == {"Authorization": "Basic dTpw"}
    extra = headers_from_env({"MEDSEG_DICOMWEB_HEADERS": '{"X-Api-Key": "k"}'})
    assert extra == {"X-Api-Key": "k"}
    with pytest.raises(InputError, match="both"):
        headers_from_env({"MEDSEG_DICOMWEB_USER": "u"})
    with pytest.raises(InputError, match="JSON object"):
        headers_from_env({"MEDSEG_DICOMWEB_HEADERS": "X-Api-Key: k"})
    where = parse_series_url("https://pacs.example/dicom-web/studies/1.2.3/series/1.2.3.4/")
    assert (where.base, where.study_instance_uid, where.series_instance_uid) == (
        "https://pacs.example/dicom-web",
        "1.2.3",
        "1.2.3.4",
    )
    with pytest.raises(InputError, match="not a DICOMweb series URL"):
        parse_series_url("https://pacs.example/dicom-web/studies/1.2.3")


# --- --series: the source given where the session records no path, or one that moved ----------------------------


def _record_no_path(session_dir: Path) -> None:
    """What a session made from uploaded voxels records: no path (the server never saw the files)."""
    doc = json.loads((session_dir / "session.json").read_text())
    doc["volume"]["path"] = ""
    (session_dir / "session.json").write_text(json.dumps(doc))


def test_series_gives_a_moved_source_as_folder_or_files(session_case, tmp_path, capsys):
    session_dir, series = session_case
    moved = series.rename(tmp_path / "moved")
    with pytest.raises(InputError, match="no longer exists"):
        export(session_dir, "--format", "seg,sr", "--to", tmp_path / "out")
    assert export(session_dir, "--format", "seg,sr", "--to", tmp_path / "out", "--series", moved) == 0
    assert "source series" in capsys.readouterr().out
    files = sorted(moved.iterdir())
    assert export(session_dir, "--series", *files, "--format", "seg", "--to", tmp_path / "files") == 0
    seg = pydicom.dcmread(tmp_path / "files" / "seg.dcm")
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert dciodvfy_errors(tmp_path / "files" / "seg.dcm") == []


def test_session_without_a_path_asks_for_the_series(session_case, tmp_path, capsys):
    session_dir, series = session_case
    _record_no_path(session_dir)
    with pytest.raises(InputError, match="give it with --series DIR"):
        export(session_dir, "--format", "seg", "--to", tmp_path / "out")
    assert export(session_dir, "--format", "seg,sr", "--to", tmp_path / "out", "--series", series) == 0
    assert "same grid, same voxels" in capsys.readouterr().out


def test_uploaded_voxels_of_another_dtype_match_their_series(tmp_path, capsys):
    """A client (Slicer) that read the series into another voxel type uploaded the same numbers: accepted; the
    engine's own int16 reading, cast losslessly, reproduces the session's content hash."""
    from MedSegReasoning.volume import load_volume
    from MedSegReasoning.volume.core import Volume, VolumeSource

    series = write_ct(tmp_path / "ct")
    read = load_volume(series)
    uploaded = Volume(read.array.astype(np.int32), read.geometry, "CT", VolumeSource(kind="array", path=""))
    run_session(tmp_path / "session", series, volume=uploaded)
    _record_no_path(tmp_path / "session")
    assert export(tmp_path / "session", "--format", "seg", "--to", tmp_path / "out", "--series", series) == 0
    assert "same voxels (uploaded as int32)" in capsys.readouterr().out


def test_series_on_another_grid_or_with_other_voxels_is_refused(session_case, tmp_path):
    session_dir, _ = session_case
    _record_no_path(session_dir)
    before = folder_digest(session_dir)
    # the same series (UIDs, voxels) on an axis-aligned grid
    other_grid = write_ct(
        tmp_path / "axial", geometry=Geometry.from_arrays((0.0, 0.0, 0.0), (2.0, 2.0, 4.0), np.eye(3))
    )
    with pytest.raises(InputError, match=r"does not lie on the grid .*corner voxels up to .* mm apart") as info:
        export(session_dir, "--format", "seg", "--to", tmp_path / "out", "--series", other_grid)
    assert info.value.exit_code == EXIT_BAD_INPUT
    # the same series with one pixel changed (another reconstruction under the same UIDs)
    changed = write_ct(tmp_path / "changed")
    first = sorted(changed.iterdir())[0]
    ds = pydicom.dcmread(first)
    pixels = ds.pixel_array.copy()
    pixels[0, 0] += 7
    ds.PixelData = pixels.tobytes()
    ds.save_as(first)
    with pytest.raises(InputError, match="lies on the session's grid but its voxels differ"):
        export(session_dir, "--format", "seg", "--to", tmp_path / "out", "--series", changed)
    # a different series on the same grid: its UIDs differ from the recorded ones
    with pytest.raises(InputError, match="is not the one .* Study Instance UID"):
        export(session_dir, "--format", "seg", "--to", tmp_path / "out", "--series", write_ct(tmp_path / "new", seed=5))
    with pytest.raises(InputError, match="does not exist"):
        export(session_dir, "--format", "seg", "--to", tmp_path / "out", "--series", tmp_path / "nowhere")
    assert not (tmp_path / "out").exists() and folder_digest(session_dir) == before
