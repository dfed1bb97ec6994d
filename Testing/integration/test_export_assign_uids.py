"""Series with blank UIDs (#16): ``ask/export --assign-uids`` reference the source by UIDs derived from its content
hash; without the flag the message says how; a folder holding two copies of a series says which one is used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from support.export import export, run_session, write_ct
from support.external_tools import dciodvfy_errors

from MedSegReasoning.cli import main
from MedSegReasoning.export.assigned_uids import derive_uids, fill_blank_uids
from MedSegReasoning.volume import load_volume
from MedSegReasoning.wire.errors import InputError

BLANKED = ("StudyInstanceUID", "SeriesInstanceUID")


def blank_uids(folder: Path) -> Path:
    """What an anonymiser that blanks Study/Series Instance UID leaves (the shared CT is such a series)."""
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        for keyword in BLANKED:
            setattr(ds, keyword, "")
        ds.save_as(path)
    return folder


@pytest.fixture(scope="module")
def blank_session(tmp_path_factory):
    root = tmp_path_factory.mktemp("blank")
    series = blank_uids(write_ct(root / "series"))
    run_session(root / "session", series)
    return root, series


def test_uids_derive_from_the_content_hash_only(blank_session):
    _, series = blank_session
    volume = load_volume(series)
    first, again = derive_uids(volume), derive_uids(load_volume(series))
    assert first == again and first.content_sha256 == volume.content_hash()
    assert len(set(first.uids.values())) == 3 and all(len(uid) <= 64 for uid in first.uids.values())
    other = write_ct(blank_session[0] / "other", seed=12)  # same voxels, own UIDs: nothing to assign
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(other.iterdir())]
    kept = {ds.StudyInstanceUID for ds in headers}
    assert fill_blank_uids(headers, first).assigned == () and {ds.StudyInstanceUID for ds in headers} == kept


def test_export_assigns_uids_and_the_seg_and_sr_reference_them(blank_session, tmp_path, capsys):
    root, series = blank_session
    with pytest.raises(InputError) as refused:
        export(root / "session", "--format", "seg", "--to", tmp_path / "refused")
    assert "--assign-uids" in str(refused.value) and "--series DICOM_DIR" in str(refused.value)
    assert not (tmp_path / "refused").exists()

    derived = derive_uids(load_volume(series)).uids
    for run in ("a", "b"):  # deterministic: a second export references the same UIDs
        assert export(root / "session", "--format", "seg,sr", "--to", tmp_path / run, "--assign-uids") == 0
        said = capsys.readouterr().out
        assert derived["study_instance_uid"] in said and "content hash" in said
        seg = pydicom.dcmread(tmp_path / run / "seg.dcm")
        sr = pydicom.dcmread(tmp_path / run / "sr.dcm")
        assert seg.StudyInstanceUID == sr.StudyInstanceUID == derived["study_instance_uid"]
        referenced = seg.ReferencedSeriesSequence[0]
        assert referenced.SeriesInstanceUID == derived["series_instance_uid"]
        assert seg.FrameOfReferenceUID != derived["frame_of_reference_uid"]  # the series had one: kept
        assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} <= {
            pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.iterdir()
        }
    assert dciodvfy_errors(tmp_path / "a" / "seg.dcm") == []
    assert dciodvfy_errors(tmp_path / "a" / "sr.dcm") == []
    import highdicom as hd

    read_back = hd.seg.segread(tmp_path / "a" / "seg.dcm")
    assert read_back.get_segment_numbers() and read_back.StudyInstanceUID == derived["study_instance_uid"]


def test_a_folder_with_two_copies_says_which_series_is_used(tmp_path, capsys):
    with_uids = write_ct(tmp_path / "both" / "original")
    run_session(tmp_path / "session", with_uids)
    shutil.copytree(with_uids, tmp_path / "both" / "blanked")
    blank_uids(tmp_path / "both" / "blanked")
    with pytest.raises(InputError) as two:
        load_volume(tmp_path / "both")
    assert "(no UID: --series '')" in str(two.value)
    assert load_volume(tmp_path / "both", series_uid="").source.dicom.series_instance_uid == ""
    export(tmp_path / "session", "--format", "seg", "--to", tmp_path / "out", "--series", tmp_path / "both")
    recorded = pydicom.dcmread(next((tmp_path / "both" / "original").iterdir())).SeriesInstanceUID
    assert f"holds several series: used {recorded}" in capsys.readouterr().out


def test_ask_assign_uids_on_the_real_blank_uid_ct(shared_ct, tmp_path, capsys):
    """The shared CT has blank Study/Series UIDs: without the flag no SEG (a warning naming --assign-uids); with
    it a valid SEG, the UIDs in result.json and on the terminal."""
    series = shared_ct / "dicom"
    box = ["--box", "300,180,420,300,10", "--no-propagate", "--label", "spleen"]
    assert main(["ask", str(series), *box, "--out", str(tmp_path / "plain")]) == 0
    err = capsys.readouterr().err
    assert not (tmp_path / "plain" / "seg.dcm").exists() and "--assign-uids" in err and "export" in err
    assert main(["ask", str(series), *box, "--out", str(tmp_path / "assigned"), "--assign-uids"]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "assigned" / "result.json").read_text())
    assigned = result["assigned_uids"]
    assert assigned["derived_from"]["content_sha256"] == result["input"]["content_sha256"]
    assert set(assigned) == {"study_instance_uid", "series_instance_uid", "derived_from"}
    assert assigned["study_instance_uid"] in out and "blank UIDs" in out
    seg = pydicom.dcmread(tmp_path / "assigned" / "seg.dcm")
    assert seg.StudyInstanceUID == assigned["study_instance_uid"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == assigned["series_instance_uid"]
    assert dciodvfy_errors(tmp_path / "assigned" / "seg.dcm") == []
