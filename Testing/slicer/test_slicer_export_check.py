"""Pre-export checks: the rules on plain data, then on a real slicer-core scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from support.slicer import (
    blob_mask,
    load_volume_node,
    new_scene,
    oblique_geometry,
    ramp_array,
    require_slicer_core,
    write_nrrd_lps,
)

from MedSegReasoning.slicer.export_check import SegmentInfo, check_export, terminology_codes
from MedSegReasoning.terminology import map_label
from MedSegReasoning.wire.masks import CompactMask

KIDNEY = map_label("left kidney", use_embedding=False).to_slicer_string()
SLICER_DEFAULT = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue~SCT^85756007^Tissue~^^~"
    "Anatomic codes - DICOM master list~^^~^^"
)


def _seg(segment_id="E1", name="Left kidney", voxels=100, terminology=KIDNEY, review="proposed") -> SegmentInfo:
    return SegmentInfo(segment_id, name, voxels, terminology, review)


def test_terminology_entry_is_parsed() -> None:
    codes = terminology_codes(KIDNEY)
    assert codes["type"] == ("SCT", "64033007", "Kidney") and codes["modifier"] == ("SCT", "7771000", "Left")
    assert codes["category"] is not None
    assert terminology_codes("") == {"category": None, "type": None, "modifier": None}
    assert terminology_codes("ctx~^^~^^~^^")["type"] is None


def test_a_clean_export_has_no_problems() -> None:
    assert check_export(["seg", "sr"], source_is_dicom=True, segments=[_seg()]) == []
    assert check_export(["seg-nrrd", "nifti"], source_is_dicom=False, segments=[_seg()]) == []


def test_input_not_from_dicom_only_matters_for_dicom_formats() -> None:
    (problem,) = check_export(["seg", "sr"], source_is_dicom=False, segments=[_seg()])
    assert problem.code == "input_not_dicom"
    assert "DICOM-SEG and DICOM SR" in problem.message and "DICOM module" in problem.message
    assert ".seg.nrrd" in str(problem)


def test_every_problem_at_once_each_a_sentence_naming_the_segment() -> None:
    segments = [
        _seg("E1", "Left kidney", voxels=0),
        _seg("E2", "blob", terminology=""),
        _seg("E3", "odd thing", terminology=SLICER_DEFAULT),
        _seg("E4", "Tissue", terminology=SLICER_DEFAULT),  # the user really means tissue: fine
        _seg("E5", "gone", voxels=0, terminology="", review="rejected"),  # not exported, not checked
    ]
    problems = check_export(["seg"], source_is_dicom=False, segments=segments)
    assert [(p.code, p.segment_id) for p in problems] == [
        ("input_not_dicom", None),
        ("empty_segment", "E1"),
        ("missing_terminology", "E2"),
        ("missing_terminology", "E3"),
    ]
    assert "'Left kidney' (E1) is empty" in problems[1].message and "Segment Editor" in problems[1].message
    assert "no terminology" in problems[2].message and "default terminology (Tissue)" in problems[3].message
    for p in problems:
        assert p.message.endswith(".") and p.message[0].isupper()


def test_nothing_to_export() -> None:
    (problem,) = check_export(["nifti"], source_is_dicom=False, segments=[_seg(review="rejected")])
    assert problem.code == "nothing_to_export"
    assert check_export(["nifti"], source_is_dicom=False, segments=[])[0].code == "nothing_to_export"


def test_on_a_real_scene(tmp_path: Path) -> None:
    require_slicer_core()
    from MedSegReasoning.slicer.export_check import check_scene
    from MedSegReasoning.slicer.scene import SceneEntity, SessionScene

    array = ramp_array()
    scene = new_scene()
    volume = load_volume_node(scene, write_nrrd_lps(tmp_path / "v.nrrd", array, oblique_geometry()))
    session = SessionScene.create(scene, volume, "S1")
    coded = CompactMask.from_dense(blob_mask(array.shape))
    session.write_entity(SceneEntity("E1", "Left kidney", coded, (200, 100, 50), 2, "", KIDNEY))
    session.write_entity(SceneEntity("E2", "odd thing", coded, (20, 100, 50), 2, "", None))  # uncoded: Slicer default
    session.write_entity(SceneEntity("E3", "Left kidney", coded, (20, 10, 50), 2, "", KIDNEY))

    # the user erased E3 completely in Segment Editor
    empty = CompactMask.from_dense(np.zeros(array.shape, dtype=bool))
    session.write_entity(SceneEntity("E3", "Left kidney", empty, (20, 10, 50), 2, "", KIDNEY))

    problems = check_scene(session, ["seg", "sr"])
    assert [(p.code, p.segment_id) for p in problems] == [
        ("input_not_dicom", None),
        ("missing_terminology", "E2"),
        ("empty_segment", "E3"),
    ]
    # as Slicer's DICOMScalarVolumePlugin marks a volume it loaded from a series
    volume.SetAttribute("DICOM.instanceUIDs", "1.2.826.0.1.3680043.8.498.1 1.2.826.0.1.3680043.8.498.2")
    session.set_review("E2", "rejected")
    assert [(p.code, p.segment_id) for p in check_scene(session, ["seg", "sr"])] == [("empty_segment", "E3")]
    assert check_scene(session, ["seg"], segment_ids=["E1"]) == []
    assert [p.code for p in check_scene(session, ["nifti"], segment_ids=["E3"])] == ["empty_segment"]


def test_saving_what_the_server_exported(tmp_path: Path) -> None:
    import io
    import zipfile

    import pytest

    from MedSegReasoning.slicer.export_check import save_export

    (single,) = save_export(b"DICM-ish", "seg", tmp_path / "a")
    assert single == tmp_path / "a" / "seg.dcm" and single.read_bytes() == b"DICM-ish"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("labels.nii.gz", b"1")
        z.writestr("labels.json", b"{}")
    files = save_export(buf.getvalue(), "nifti", tmp_path / "b")
    assert sorted(f.name for f in files) == ["labels.json", "labels.nii.gz"]
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside.txt", b"x")
    with pytest.raises(ValueError, match="outside its folder"):
        save_export(evil.getvalue(), "nifti", tmp_path / "c")
    assert not (tmp_path / "outside.txt").exists()
