"""De-identification on the way out: no PHI in the SEG and SR, references still consistent, remapping kept locally."""

from __future__ import annotations

import json
import os
import stat

import pydicom
import pytest
from support.export import export, folder_digest, run_session, write_ct
from support.external_tools import dciodvfy_errors

from MedSegReasoning.export.deidentify import DeidentificationMap
from MedSegReasoning.export.sr import read_measurement_report


@pytest.fixture(scope="module")
def deidentified(tmp_path_factory):
    root = tmp_path_factory.mktemp("deid")
    series = write_ct(root / "ct", patient_name="Smith^Alice", patient_id="MRN-0042")
    run_session(root / "session", series)
    before = folder_digest(root / "session")
    out, deid_map = root / "out", root / "private" / "deid-map.json"
    assert (
        export(root / "session", "--format", "seg,sr,nifti", "--to", out, "--deidentify", "--deid-map", deid_map) == 0
    )
    assert folder_digest(root / "session") == before
    source = pydicom.dcmread(next(series.iterdir()))
    return root, out, deid_map, source


def _all_values(ds) -> list[str]:
    values = []
    for elem in ds.iterall():
        if elem.VR not in ("SQ", "OB", "OW", "OF", "OD", "UN"):
            values.append(str(elem.value))
    values.extend(str(v) for v in ds.file_meta.values())
    return values


def test_no_identifying_values_remain(deidentified):
    _, out, _, source = deidentified
    originals = {
        str(source.PatientName),
        source.PatientID,
        source.StudyInstanceUID,
        source.SeriesInstanceUID,
        source.FrameOfReferenceUID,
        source.SOPInstanceUID,
        source.StudyDate,
        source.StudyDescription,
    }
    for name in ("seg.dcm", "sr.dcm"):
        ds = pydicom.dcmread(out / name)
        raw = (out / name).read_bytes()
        for value in originals:
            assert value.encode() not in raw, f"{value!r} is still in {name}"
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID.startswith("ANON-") and str(ds.PatientName).startswith("ANONYMOUS^")
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert not any(v.startswith(source.StudyDate) for v in _all_values(ds))
        assert dciodvfy_errors(out / name) == []
    sidecar = json.loads((out / "labels.json").read_text())
    assert sidecar["source"] is None, "folder names can carry a patient's name"


def test_references_stay_consistent_through_the_map(deidentified):
    _, out, deid_map, source = deidentified
    mapping = DeidentificationMap.load(deid_map)
    seg = pydicom.dcmread(out / "seg.dcm")
    sr = pydicom.dcmread(out / "sr.dcm")
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == mapping.uids[source.StudyInstanceUID]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == mapping.uids[source.SeriesInstanceUID]
    assert seg.FrameOfReferenceUID == mapping.uids[source.FrameOfReferenceUID]
    content = read_measurement_report(out / "sr.dcm")
    assert {f.seg_sop_instance_uid for f in content.findings} == {seg.SOPInstanceUID}
    assert [f.tracking_uid for f in content.findings] == [s.TrackingUID for s in seg.SegmentSequence]
    assert content.questions == {} and content.reasoning == {}, "free text is left out"
    assert [f.tracking_id for f in content.findings] == ["E1", "E2"]


def test_map_is_private_and_reused(deidentified, tmp_path):
    root, _, deid_map, source = deidentified
    assert stat.S_IMODE(os.stat(deid_map).st_mode) == 0o600
    mapping = DeidentificationMap.load(deid_map)
    assert mapping.patients["MRN-0042"]["original_name"] == "Smith^Alice"
    out2 = tmp_path / "again"
    assert export(root / "session", "--format", "seg", "--to", out2, "--deidentify", "--deid-map", deid_map) == 0
    again = pydicom.dcmread(out2 / "seg.dcm")
    assert again.StudyInstanceUID == mapping.uids[source.StudyInstanceUID], "the same study keeps its pseudonym"
    assert again.PatientID == mapping.patients["MRN-0042"]["id"]
