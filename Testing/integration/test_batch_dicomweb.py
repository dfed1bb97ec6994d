"""``batch`` with a PACS: a DICOMweb QIDO-RS studies query as the cohort (each study's series picked by
``--series-filter`` and read as ``ask`` reads a series URL) and ``--dicomweb URL`` (each study's SEG and SR stored
back by ``export --dicomweb``'s code), against a real Orthanc on loopback; a PACS that refuses (the study's row
says why, exit 5) and one that cannot be reached (the run stops, exit 4; ``--resume`` finishes).

In-process with the tests' ``ThresholdSegmenter`` (the round and the export are the real ones). Without Orthanc
the test skips, and fails under MEDSEG_REQUIRE_TOOLS=1 (``support.export``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from support.batch import BOX, ThresholdSource, write_dicom_study
from support.export import RefusingDicomweb, free_port, push_series, running_orthanc

from MedSegReasoning.cli import main

STUDY_A = "1.2.826.0.1.3680043.8.498.201"  # two CT series: 8 slices (abdomen) and 3 (scout)
STUDY_B = "1.2.826.0.1.3680043.8.498.202"  # one CT series


@pytest.fixture
def threshold(monkeypatch):
    from MedSegReasoning.segmentation import factory

    monkeypatch.setattr(factory, "create_segmenter", lambda spec, **kw: ThresholdSource()())


@pytest.fixture
def orthanc(tmp_path, monkeypatch):
    with running_orthanc(tmp_path / "orthanc") as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        yield server


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _studies(root: Path) -> dict[str, Path]:
    """Study A (two series: 8 and 3 slices) and study B (one series), as folders."""
    write_dicom_study(root / "A", 1, STUDY_A, description="abdomen")
    write_dicom_study(root / "A", 1, STUDY_A, description="scout", slices=3)
    write_dicom_study(root / "B", 5, STUDY_B, description="abdomen")
    return {"A": root / "A", "B": root / "B"}


def _replay(path: Path, studies: int) -> str:
    """A replay reasoner answering "the bright block on slice 3" for each of ``studies`` studies, in turn (a
    label with no size prior, so judgment asks for no second try)."""
    pick = {"step": "pick_slice", "raw": '{"targets": [{"slice": 3, "label": "block"}]}'}
    locate = {
        "step": "locate",
        "raw": '{"reasoning": "bright block", "targets": [{"slice": 3, "bbox": [14, 12, 46, 44], '
        '"label": "block", "ref": null}], "clarification": null}',
    }
    path.write_text("".join(json.dumps(a) + "\n" for _ in range(studies) for a in (pick, locate)))
    return f"replay:{path}"


def test_qido_cohort_with_series_filter_and_seg_sr_stored_back(tmp_path, threshold, orthanc, capsys):
    from MedSegReasoning.export.pacs import find_instances, retrieve_instance

    folders = _studies(tmp_path / "local")
    for series in (*folders["A"].iterdir(), *folders["B"].iterdir()):
        push_series(orthanc, series)
    query = f"{orthanc.dicomweb}/studies?ModalitiesInStudy=CT"
    argv = ["batch", query, "--question", "segment the liver", "--in-process", "--dicomweb", orthanc.dicomweb]

    # without a filter, study A's two series are ambiguous: its row says so; B goes through and is stored back
    out = tmp_path / "unfiltered"
    assert main([*argv, "--reasoner", _replay(tmp_path / "r1.jsonl", 1), "--out", str(out)]) == 5
    rows = {r["study"]: r for r in _rows(out)}
    assert set(rows) == {STUDY_A, STUDY_B}, "one folder and row per study, named by its Study Instance UID"
    assert rows[STUDY_A]["status"] == "failed" and "2 series" in rows[STUDY_A]["error"]
    assert rows[STUDY_B]["status"] == "ok" and rows[STUDY_B]["input"] == f"{orthanc.dicomweb}/studies/{STUDY_B}"
    capsys.readouterr()

    out = tmp_path / "filtered"
    replay = _replay(tmp_path / "r2.jsonl", 2)
    assert main([*argv, "--reasoner", replay, "--series-filter", "modality=CT,most-slices", "--out", str(out)]) == 0
    rows = {r["study"]: r for r in _rows(out)}
    assert [rows[s]["status"] for s in (STUDY_A, STUDY_B)] == ["ok", "ok"]
    assert "(8 files) of 2 series" in rows[STUDY_A]["series_picked"], "the 8-slice series, not the scout"
    assert float(rows[STUDY_B]["volume_ml"]) > float(rows[STUDY_A]["volume_ml"]) > 0
    for study in (STUDY_A, STUDY_B):  # (B's SEG and SR of the first run are on the PACS too)
        row = rows[study]
        on_pacs = {i["sop_instance_uid"]: i for i in find_instances(orthanc.dicomweb, study)}
        stored = {}
        for url in row["stored"].split():
            series, sop = url.split("/series/")[1].split("/instances/")
            assert url.startswith(f"{orthanc.dicomweb}/studies/{study}/") and sop in on_pacs
            stored[on_pacs[sop]["modality"]] = retrieve_instance(orthanc.dicomweb, study, series, sop)
        assert sorted(stored) == ["SEG", "SR"], "the study's SEG and SR, where the PACS has them"
        assert stored["SEG"].ReferencedSeriesSequence[0].SeriesInstanceUID == row["series_uid"], "the picked series"
    assert "2 ok, 0 failed" in capsys.readouterr().out

    nothing = f"{orthanc.dicomweb}/studies?ModalitiesInStudy=MR"
    assert main(["batch", nothing, "--question", "q", "--out", str(tmp_path / "none"), "--in-process"]) == 2
    assert "found no studies" in capsys.readouterr().err
    assert not (tmp_path / "none").exists(), "a usage error writes nothing"


def test_a_query_that_is_not_one_or_a_pacs_not_there_before_anything_runs(tmp_path, capsys):
    argv = ["batch", "--question", "q", "--out", str(tmp_path / "out"), "--in-process"]
    assert main([*argv, "http://127.0.0.1:9/dicom-web/series?Modality=CT"]) == 2
    assert "not a DICOMweb studies query" in capsys.readouterr().err
    assert main([*argv, f"http://127.0.0.1:{free_port()}/dicom-web/studies?ModalitiesInStudy=CT"]) == 4
    said = capsys.readouterr().err
    assert "not reachable" in said and "Traceback" not in said
    assert main([*argv, "--dicomweb", "pacs.example.org/dicom-web", str(tmp_path)]) == 2
    assert "--dicomweb pacs.example.org" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_pacs_that_refuses_or_cannot_be_reached(tmp_path, threshold, orthanc, capsys):
    cohort = tmp_path / "cohort"
    write_dicom_study(cohort / "s1", 1, STUDY_A)
    write_dicom_study(cohort / "s2", 3, STUDY_B)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f'input,box\ncohort/s1,"{BOX}"\ncohort/s2,"{BOX}"\n')
    argv = ["batch", str(manifest), "--in-process"]

    with RefusingDicomweb(403) as refusing:
        assert main([*argv, "--out", str(tmp_path / "refused"), "--dicomweb", refusing.url]) == 5
    rows = _rows(tmp_path / "refused")
    assert [r["status"] for r in rows] == ["failed", "failed"], "the run went on to the next study"
    assert all("not stored on the PACS" in r["error"] and "HTTP 403" in r["error"] for r in rows)
    assert all(r["stored"] == "" for r in rows)
    assert (tmp_path / "refused" / STUDY_A / "seg.dcm").is_file(), "the study's own outputs are kept"
    capsys.readouterr()

    out = tmp_path / "unreachable"
    gone = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert main([*argv, "--out", str(out), "--dicomweb", gone]) == 4
    said = capsys.readouterr()
    assert "not reachable" in said.err and "Traceback" not in said.err
    rows = _rows(out)
    assert len(rows) == 1, "the run stopped after the first study: every other would fail the same way"
    assert rows[0]["status"] == "failed" and "not reachable" in rows[0]["error"]

    assert main([*argv, "--out", str(out), "--dicomweb", orthanc.dicomweb, "--resume"]) == 0
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(len(r["stored"].split()) == 2 for r in rows)
    assert [r["attempt"] for r in rows] == ["2", "1"]
