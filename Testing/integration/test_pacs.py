"""A real PACS: Orthanc with its DICOMweb plugin, on loopback, with its own storage and a password.

The whole trip of the issue: push a CT series, pull it with the project (WADO-RS), run a replayed reasoning round on
it, store SEG + SR back (STOW-RS), find them (QIDO-RS), read them back; and the PACS refusing (4xx/5xx) or down.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from support.dialogue import KIDNEY, WINDOW, abdomen_labels, prompt_on
from support.export import (
    DUODENUM,
    RefusingDicomweb,
    export,
    folder_digest,
    free_port,
    index_set,
    mask_points,
    push_series,
    run_session,
    running_orthanc,
    write_ct,
)
from support.external_tools import dciodvfy_errors, dcmqi_segment_points
from support.fakes import label_oracle

from MedSegReasoning.export.pacs import find_instances, retrieve_instance
from MedSegReasoning.export.sr import read_measurement_report
from MedSegReasoning.volume import load_volume
from MedSegReasoning.volume.dicomweb import load_dicomweb_series
from MedSegReasoning.wire.errors import EXIT_SERVICE, InputError, ServiceError


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc holding the synthetic abdomen CT; a session made on the local copy of the series."""
    root = tmp_path_factory.mktemp("pacs")
    series = write_ct(root / "ct")
    with running_orthanc(root / "orthanc") as orthanc:
        push_series(orthanc, series)
        info = load_volume(series).source.dicom
        url = f"{orthanc.dicomweb}/studies/{info.study_instance_uid}/series/{info.series_instance_uid}"
        run_session(root / "local-session", series)
        yield orthanc, series, url, root / "local-session"


@pytest.fixture(autouse=True)
def credentials(pacs, monkeypatch):
    for name, value in pacs[0].env().items():
        monkeypatch.setenv(name, value)


def test_orthanc_listens_on_loopback_only_and_wants_a_password(pacs):
    import requests

    orthanc = pacs[0]
    assert orthanc.listening_addresses() == {"127.0.0.1"}
    assert requests.get(f"{orthanc.base}/system", timeout=5).status_code == 401


def test_series_pulled_over_dicomweb_is_the_series_on_disk(pacs, tmp_path):
    _, series, url, _ = pacs
    local = load_volume(series)
    pulled = load_dicomweb_series(url, dest=tmp_path / "download")
    np.testing.assert_array_equal(pulled.array, local.array)
    assert pulled.geometry.is_close(local.geometry) and pulled.content_hash() == local.content_hash()
    assert (pulled.source.kind, pulled.source.path) == ("dicomweb", url)
    assert pulled.source.dicom.sop_instance_uids == local.source.dicom.sop_instance_uids
    assert all((tmp_path / "download" / f"{uid}.dcm").is_file() for uid in pulled.source.dicom.sop_instance_uids)


def test_replay_round_on_a_pacs_series_then_seg_and_sr_back_to_the_pacs(pacs, tmp_path):
    from MedSegReasoning.dialogue import Session, plan_from_answer, run_round
    from MedSegReasoning.reasoning import create_reasoner, run_reasoning

    orthanc, _, url, _ = pacs
    volume = load_dicomweb_series(url)
    labels = abdomen_labels()
    replay = tmp_path / "answers.jsonl"
    replay.write_text(_replayed_answers(labels), encoding="utf-8")
    reasoner = create_reasoner(f"replay:{replay}")

    def planner(question, context):
        answer = run_reasoning(volume, reasoner, question, window=WINDOW, context=context)
        return plan_from_answer(answer, question)

    session = Session.for_volume(volume, folder=tmp_path / "session")
    rnd = run_round(
        session, volume, label_oracle(volume.array, labels, window=WINDOW), WINDOW, "Segment the left kidney.", planner
    )
    assert [t.status for t in rnd.targets] == ["accepted"], session.entity("E1").uncertainty
    assert rnd.reasoning.startswith("The left kidney")
    kidney = session.dense_mask("E1")
    truth = labels == KIDNEY
    assert not (kidney & (labels == DUODENUM)).any(), "the negative click kept the duodenum out"
    assert 2 * (kidney & truth).sum() / (kidney.sum() + truth.sum()) > 0.9
    before = folder_digest(tmp_path / "session")

    study = volume.source.dicom.study_instance_uid
    assert (
        export(tmp_path / "session", "--format", "seg,sr", "--dicomweb", orthanc.dicomweb, "--reasoner", "replay") == 0
    )
    assert folder_digest(tmp_path / "session") == before

    found = {
        item["modality"]: item for item in find_instances(orthanc.dicomweb, study) if item["modality"] in ("SEG", "SR")
    }
    assert set(found) == {"SEG", "SR"}
    seg = retrieve_instance(
        orthanc.dicomweb, study, found["SEG"]["series_instance_uid"], found["SEG"]["sop_instance_uid"]
    )
    sr = retrieve_instance(orthanc.dicomweb, study, found["SR"]["series_instance_uid"], found["SR"]["sop_instance_uid"])
    for name, ds in (("seg.dcm", seg), ("sr.dcm", sr)):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        assert pydicom.dcmread(tmp_path / name).preamble == b"\x00" * 128
        assert dciodvfy_errors(tmp_path / name) == []
    points = dcmqi_segment_points(tmp_path / "seg.dcm", tmp_path / "dcmqi")[1]
    assert index_set(points, volume.geometry) == index_set(mask_points(kidney, volume.geometry), volume.geometry)
    content = read_measurement_report(tmp_path / "sr.dcm")
    (finding,) = content.findings
    assert (finding.tracking_id, finding.seg_sop_instance_uid) == ("E1", seg.SOPInstanceUID)
    assert finding.volume_ml == pytest.approx(session.entity("E1").measurements.volume_ml, rel=1e-4)
    assert content.questions == {1: "Segment the left kidney."} and content.observer == "replay"


@pytest.mark.parametrize("status, words", [(409, "rejected"), (500, "failed")])
def test_a_refusing_pacs_is_reported_and_nothing_is_left(pacs, tmp_path, status, words):
    _, _, _, session_dir = pacs
    before = folder_digest(session_dir)
    with RefusingDicomweb(status) as server:
        with pytest.raises(ServiceError, match=f"{words} .*HTTP {status}: storage refused by policy") as info:
            export(session_dir, "--format", "seg,sr", "--dicomweb", server.url)
        assert [r[0] for r in server.requests] == ["POST"], "the SR is not sent after the SEG was refused"
    assert info.value.exit_code == EXIT_SERVICE
    assert folder_digest(session_dir) == before
    assert not list(tmp_path.iterdir()), "nothing written locally"


def test_a_store_the_pacs_answers_as_failed_is_an_error(pacs):
    """HTTP 202 with a Failed SOP Sequence: the request went through, the object was not stored."""
    _, _, _, session_dir = pacs
    failed = {
        "00081198": {
            "vr": "SQ",
            "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}, "00081197": {"vr": "US", "Value": [272]}}],
        }
    }
    with RefusingDicomweb(202, json.dumps(failed), "application/dicom+json") as server:
        with pytest.raises(ServiceError, match="did not store the SEG \\(failure reason 272\\)"):
            export(session_dir, "--format", "seg,sr", "--dicomweb", server.url)


def test_wrong_credentials_and_a_pacs_that_is_down(pacs, monkeypatch):
    orthanc, _, url, session_dir = pacs
    count = orthanc.instance_count()
    monkeypatch.setenv("MEDSEG_DICOMWEB_PASSWORD", "not-the-password")
    with pytest.raises(ServiceError, match="HTTP 401.*MEDSEG_DICOMWEB_USER"):
        export(session_dir, "--format", "seg,sr", "--dicomweb", orthanc.dicomweb)
    with pytest.raises(ServiceError, match="refused to send the series"):
        load_dicomweb_series(url)
    assert orthanc.instance_count() == count, "nothing was stored"
    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(ServiceError, match="not reachable"):
        export(session_dir, "--format", "seg", "--dicomweb", down)
    with pytest.raises(ServiceError, match="not reachable"):
        load_dicomweb_series(f"{down}/studies/1.2.3/series/1.2.4")


def test_series_urls_that_name_nothing(pacs):
    orthanc, _, url, _ = pacs
    with pytest.raises(InputError, match="not a DICOMweb series URL"):
        load_dicomweb_series(f"{orthanc.dicomweb}/studies/1.2.3")
    with pytest.raises(InputError, match="HTTP 404"):
        load_dicomweb_series(url.rsplit("/", 1)[0] + "/1.2.3.4")


# ---------------------------------------------------------------------------------------------------------------
def _replayed_answers(labels: np.ndarray) -> str:
    """A recorded reasoner: picks slice 12, then boxes the kidney with a negative click on the duodenum."""
    prompt = prompt_on(labels, KIDNEY, 12, pad=1)
    background = tuple(int(v) for v in np.argwhere(labels[12] == DUODENUM)[0][::-1])
    pick = {
        "reasoning": "The left kidney is largest on slice 12.",
        "targets": [{"slice": 12, "label": "left kidney", "ref": None}],
        "clarification": None,
    }
    locate = {
        "reasoning": "Oval, enhancing, medial to the bowel.",
        "targets": [
            {
                "slice": 12,
                "bbox": list(prompt.box),
                "points": [list(prompt.points[0])],
                "negative_points": [list(background)],
                "label": "left kidney",
                "ref": None,
            }
        ],
        "clarification": None,
    }
    lines = [{"meta": {"identity": {"name": "replay"}}}, {"raw": json.dumps(pick)}, {"raw": json.dumps(locate)}]
    return "".join(json.dumps(line) + "\n" for line in lines)
