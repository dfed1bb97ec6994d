"""DICOM-SEG as other tools see it: codes, colours, algorithm, label map vs binary, voxels in physical space.

The source is the synthetic abdomen on an oblique, flipped grid with shuffled file names, so a SEG that leans on
array order or axis alignment lands its voxels in the wrong place and dcmqi shows it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from support.dialogue import DUODENUM, KIDNEY, LESION, VEIN, abdomen_labels
from support.export import index_set, mask_points, run_session, write_ct
from support.external_tools import dciodvfy_errors, dcmqi_meta, dcmqi_segment_points

from MedSegReasoning.export.dicom_seg import (
    AlgorithmInfo,
    SegmentSpec,
    build_dicom_seg,
    resolve_seg_type,
    write_dicom_seg,
)
from MedSegReasoning.export.model import ModelNames
from MedSegReasoning.export.source_check import load_checked_source
from MedSegReasoning.export.sources import load_export_set
from MedSegReasoning.terminology.codes import Code as CodedTerm
from MedSegReasoning.wire.errors import InputError

MODELS = ModelNames("Qwen2.5-VL-7B-Instruct", "LiteMedSAM", "rev-abc123", "sha256:79d8aa7f1c2e")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The scripted session on the oblique series, as an ExportSet with its checked source."""
    root = tmp_path_factory.mktemp("seg")
    series = write_ct(root / "ct")
    run_session(root / "session", series)
    export_set = load_export_set(root / "session", MODELS)
    load_checked_source(export_set)
    return export_set


def _labelmap_specs(volume) -> list[SegmentSpec]:
    """Four non-overlapping structures straight from the reference labels."""
    labels = abdomen_labels()
    names = {KIDNEY: "kidney", LESION: "lesion", DUODENUM: "duodenum", VEIN: "vein"}
    return [
        SegmentSpec(number=n, label=names[value], mask=labels == value, semiautomatic=n % 2 == 0)
        for n, value in enumerate((KIDNEY, LESION, DUODENUM, VEIN), start=1)
    ]


def test_session_segments_carry_codes_colours_algorithm_and_tracking(exported, tmp_path):
    seg = build_dicom_seg(exported.volume, exported.seg_specs(), exported.models.algorithm(), "auto")
    assert seg.SegmentationType == "BINARY", "E2 was repainted over the lesion: the segments overlap"
    lesion, kidney = seg.SegmentSequence
    assert [lesion.SegmentLabel, kidney.SegmentLabel] == ["Lesion in the left kidney", "Left kidney"]
    assert lesion.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"  # SCT Lesion
    assert lesion.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"  # Morphologically altered
    assert lesion.AnatomicRegionSequence[0].CodeValue == "64033007"  # Kidney ...
    assert lesion.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].CodeValue == "7771000"  # ... left
    kidney_type = kidney.SegmentedPropertyTypeCodeSequence[0]
    assert kidney_type.CodeValue == "64033007"
    assert kidney_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    # the reasoner placed E1; the user repainted E2
    assert [lesion.SegmentAlgorithmType, kidney.SegmentAlgorithmType] == ["AUTOMATIC", "SEMIAUTOMATIC"]
    algorithm = lesion.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "MedSegReasoning (Qwen2.5-VL-7B-Instruct + LiteMedSAM)"
    assert (
        "reasoner rev-abc123" in algorithm.AlgorithmVersion
        and "segmenter sha256:79d8aa7f1c2e" in algorithm.AlgorithmVersion
    )
    assert [lesion.TrackingID, kidney.TrackingID] == ["E1", "E2"]
    assert lesion.TrackingUID != kidney.TrackingUID

    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    points = dcmqi_segment_points(path, tmp_path / "dcmqi")
    meta = dcmqi_meta(tmp_path / "dcmqi")
    for spec in exported.segments:
        assert np.abs(np.subtract(meta[spec.number]["recommendedDisplayRGBValue"], spec.color)).max() <= 2
        assert meta[spec.number]["TrackingIdentifier"] == spec.entity_id
        expected = index_set(mask_points(spec.mask, exported.geometry), exported.geometry)
        assert index_set(points[spec.number], exported.geometry) == expected, f"segment {spec.number} moved"


def test_labelmap_seg_on_oblique_flipped_source_reads_back_in_place(exported, tmp_path):
    volume = exported.volume
    specs = _labelmap_specs(volume)
    path = write_dicom_seg(volume, specs, tmp_path / "labelmap.dcm", AlgorithmInfo("test", "1"), seg_type="auto")
    ds = pydicom.dcmread(path)
    assert ds.SegmentationType == "LABELMAP" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    assert ds.preamble == b"\x00" * 128
    occupied = np.logical_or.reduce([s.mask for s in specs]).any(axis=(1, 2))
    assert int(ds.NumberOfFrames) == int(occupied.sum()), "only non-empty frames are stored"
    assert dciodvfy_errors(path) == []
    points = dcmqi_segment_points(path, tmp_path / "dcmqi")
    for spec in specs:
        expected = index_set(mask_points(spec.mask, volume.geometry), volume.geometry)
        assert index_set(points[spec.number], volume.geometry) == expected


def test_binary_seg_keeps_overlapping_segments_whole(exported, tmp_path):
    import highdicom as hd

    specs = exported.seg_specs()
    path = write_dicom_seg(exported.volume, specs, tmp_path / "binary.dcm", exported.models.algorithm(), "binary")
    seg = hd.seg.segread(path)
    for spec in specs:
        got = seg.get_volume(segment_numbers=[spec.number], combine_segments=False)
        assert int((np.asarray(got.array) > 0).sum()) == int(spec.mask.sum())
    overlap = specs[0].mask & specs[1].mask
    assert overlap.any(), "the fixture must overlap, or this test proves nothing"


def test_seg_type_choice():
    a = np.zeros((2, 3, 3), bool)
    b = np.zeros((2, 3, 3), bool)
    a[0, 0, 0] = b[1, 1, 1] = True
    specs = [SegmentSpec(1, "a", a), SegmentSpec(2, "b", b)]
    assert resolve_seg_type("auto", specs) == "labelmap"
    assert resolve_seg_type("binary", specs) == "binary"
    b[0, 0, 0] = True
    assert resolve_seg_type("auto", specs) == "binary"
    with pytest.raises(InputError, match="overlap"):
        resolve_seg_type("labelmap", specs)


def test_empty_segment_is_refused_and_nothing_written(exported, tmp_path):
    specs = _labelmap_specs(exported.volume)
    specs[1] = SegmentSpec(2, "lesion", np.zeros(exported.shape, bool), category=CodedTerm("1", "SCT", "x"))
    with pytest.raises(InputError, match="segment 2 .*empty mask"):
        write_dicom_seg(exported.volume, specs, tmp_path / "seg.dcm", AlgorithmInfo("test", "1"))
    assert list(Path(tmp_path).iterdir()) == []
