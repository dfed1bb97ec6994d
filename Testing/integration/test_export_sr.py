"""DICOM SR (TID 1500): valid for dciodvfy, read back to the same findings, verified only when confirmed."""

from __future__ import annotations

from dataclasses import replace

import pydicom
import pytest
from support.export import run_session, write_ct
from support.external_tools import dciodvfy_errors

from MedSegReasoning.export.dicom_seg import build_dicom_seg, read_source_headers
from MedSegReasoning.export.model import ModelNames
from MedSegReasoning.export.source_check import load_checked_source
from MedSegReasoning.export.sources import load_export_set
from MedSegReasoning.export.sr import build_measurement_report, read_measurement_report

MODELS = ModelNames("Qwen2.5-VL-7B-Instruct", "LiteMedSAM")


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sr")
    series = write_ct(root / "ct")
    session, _, _ = run_session(root / "session", series)
    export_set = load_export_set(root / "session", MODELS)
    volume = load_checked_source(export_set)
    headers = read_source_headers(volume)
    seg = build_dicom_seg(volume, export_set.seg_specs(), export_set.models.algorithm(), "binary", headers)
    return session, export_set, seg, headers


def test_sr_is_valid_and_reads_back_the_findings(report_inputs, tmp_path):
    session, export_set, seg, headers = report_inputs
    sr = build_measurement_report(export_set, seg, headers)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).preamble == b"\x00" * 128
    assert dciodvfy_errors(path) == []

    content = read_measurement_report(path)
    assert content.observer == "Qwen2.5-VL-7B-Instruct", "the reasoner is the device observer"
    assert content.verification == "UNVERIFIED", "E2 is not confirmed"
    assert [f.tracking_id for f in content.findings] == ["E1", "E2"], "E3 was rejected: not reported"
    for segment, finding in zip(export_set.segments, content.findings, strict=True):
        entity = session.entities[segment.entity_id]
        assert finding.tracking_uid == segment.tracking_uid == seg.SegmentSequence[segment.number - 1].TrackingUID
        assert finding.finding.value == entity.terminology.type.value
        assert finding.category.value == entity.terminology.category.value
        assert finding.segment_number == segment.number and finding.seg_sop_instance_uid == seg.SOPInstanceUID
        assert finding.volume_ml == pytest.approx(entity.measurements.volume_ml, rel=1e-4)
        assert finding.diameter_mm == pytest.approx(entity.measurements.max_diameter_mm, abs=1e-3)
        assert finding.findings == entity.findings
        assert finding.review == entity.review
        assert finding.round == entity.updated_round
    lesion, kidney = content.findings
    assert (lesion.site.meaning, lesion.laterality.meaning) == ("Kidney", "Left"), "the organ the lesion lies in"
    assert (kidney.site.meaning, kidney.laterality.meaning) == ("Kidney", "Left")
    assert "edited by the user" in kidney.provenance and "placed by the reasoner" in lesion.provenance
    assert content.questions == {r.index: r.question for r in session.rounds}
    assert content.reasoning == {r.index: r.reasoning for r in session.rounds if r.reasoning}


def test_verified_only_when_every_entity_is_confirmed_and_a_verifier_is_named(report_inputs):
    _, export_set, seg, headers = report_inputs
    confirmed = replace(export_set, segments=tuple(replace(s, review="confirmed") for s in export_set.segments))
    unnamed = build_measurement_report(confirmed, seg, headers)
    assert unnamed.VerificationFlag == "UNVERIFIED", "DICOM needs the verifier's name"
    named = build_measurement_report(confirmed, seg, headers, verifier="Doe^Jane", organization="Radiology")
    assert named.VerificationFlag == "VERIFIED" and named.PreliminaryFlag == "FINAL"
    assert read_measurement_report(named).verifier == "Doe^Jane"
    partly = build_measurement_report(export_set, seg, headers, verifier="Doe^Jane")
    assert partly.VerificationFlag == "UNVERIFIED"


def test_free_text_can_be_left_out(report_inputs):
    _, export_set, seg, headers = report_inputs
    content = read_measurement_report(build_measurement_report(export_set, seg, headers, include_free_text=False))
    assert content.questions == {} and content.reasoning == {}
    assert [f.tracking_id for f in content.findings] == ["E1", "E2"]
