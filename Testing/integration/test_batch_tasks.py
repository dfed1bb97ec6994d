"""``batch`` on a real local Ray with a real Orthanc: each study is read by a Ray task and its SEG and SR are stored
back by a Ray task, neither in the driver nor in the segmenter actor (each study's row file records the process,
``pid@host``, that read it, ran its round and stored it); a study that cannot be read in its task is still that
study's failed row with the reason, the same as in-process; a PACS that cannot be reached still stops the run.

The cohort mixes a study of the PACS (read through DICOMweb in the task: its headers travel with the volume, so the
actor's SEG references the series), a DICOM folder and a damaged NIfTI file.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from support.batch import BOX, ThresholdSource, write_dicom_study
from support.export import free_port, push_series, running_orthanc

pytest.importorskip("ray", reason="the Ray path needs ray: pip install 'medseg-reasoning[batch]'")

ROOT = Path(__file__).resolve().parents[2]
STUDY_A = "1.2.826.0.1.3680043.8.498.301"  # on the PACS only
STUDY_B = "1.2.826.0.1.3680043.8.498.302"  # a local DICOM folder


@pytest.fixture
def worker_path(monkeypatch):
    """The actors and tasks import the package and ``support.*`` from this checkout."""
    paths = [str(ROOT), str(ROOT / "Testing"), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


@pytest.fixture
def orthanc(tmp_path, monkeypatch):
    with running_orthanc(tmp_path / "orthanc") as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)  # before Ray starts: its workers inherit them
        yield server


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / ".batch" / "rows").glob("*.json")}


def _pid(process: str) -> int:
    return int(process.split("@")[0].removeprefix("worker-"))


def _studies(root: Path, dicomweb: str, orthanc):
    from MedSegReasoning.batch.cohort import Study

    on_pacs = write_dicom_study(root / "pacs", 1, STUDY_A)
    push_series(orthanc, on_pacs)
    local = write_dicom_study(root / "local", 4, STUDY_B)
    broken = root / "broken.nii.gz"
    broken.write_bytes(b"damaged")
    return [
        Study("A", f"{dicomweb}/studies/{STUDY_A}", box=BOX, label="liver"),
        Study("B", str(local), box=BOX, label="liver"),
        Study("broken", str(broken), box=BOX),
    ]


def test_reads_and_stores_run_as_ray_tasks_with_the_in_process_rows(tmp_path, worker_path, orthanc):
    from MedSegReasoning.batch.command import run_batch
    from MedSegReasoning.batch.study import JobOptions
    from MedSegReasoning.export.pacs import find_instances

    studies = _studies(tmp_path, orthanc.dicomweb, orthanc)
    options = JobOptions()
    # first in this process (no PACS to store on: then study A's series on the PACS is still its only one)
    local = run_batch(studies, options, tmp_path / "out-local", in_process=True, source=ThresholdSource())
    assert (local.engine, local.ok, local.failed) == ("in-process", 2, 1)
    in_process = _records(tmp_path / "out-local")
    assert {_pid(r["read_by"]) for r in in_process.values()} == {os.getpid()}, "in-process: read in this process"

    on_ray = run_batch(
        studies, options, tmp_path / "out-ray", workers=2, source=ThresholdSource(), dicomweb=orthanc.dicomweb
    )
    assert (on_ray.engine, on_ray.ok, on_ray.failed) == ("ray", 2, 1)
    driver = os.getpid()
    records = _records(tmp_path / "out-ray")
    for key in ("A", "B"):
        record = records[key]
        actor, reader, storer = (_pid(record[k]) for k in ("worker", "read_by", "stored_by"))
        assert reader not in (driver, actor), f"{key} must be read by a task, not by the driver or its actor: {record}"
        assert storer not in (driver, actor), f"{key} must be stored by a task, not by the driver or an actor: {record}"
    rows = {r["study"]: r for r in _rows(tmp_path / "out-ray")}
    for uid in (STUDY_A, STUDY_B):
        assert rows[uid]["status"] == "ok" and len(rows[uid]["stored"].split()) == 2
        assert {i["modality"] for i in find_instances(orthanc.dicomweb, uid)} >= {"SEG", "SR"}
    import pydicom

    seg = pydicom.dcmread(tmp_path / "out-ray" / STUDY_A / "seg.dcm")  # the actor's, from the headers the read sent
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == rows[STUDY_A]["series_uid"]
    broken = records["broken"]
    assert broken["status"] == "failed" and _pid(broken["read_by"]) != driver, "read (and failed) in a task"
    assert broken["stored_by"] == "" and rows["broken"]["error"], "a failed study is not stored; its reason is"

    def comparable(out):  # (only the Ray run stored its SEG and SR)
        return [{k: v for k, v in r.items() if k not in ("stored", "versions")} for r in _rows(out)]

    assert comparable(tmp_path / "out-ray") == comparable(tmp_path / "out-local"), "Ray gives the in-process rows"
    assert (tmp_path / "out-ray" / STUDY_A / "mask.nii.gz").read_bytes() == (
        tmp_path / "out-local" / STUDY_A / "mask.nii.gz"
    ).read_bytes()


def test_a_pacs_that_cannot_be_reached_stops_the_run_on_ray_too(tmp_path, worker_path):
    from MedSegReasoning.batch.cohort import Study
    from MedSegReasoning.batch.command import run_batch
    from MedSegReasoning.batch.study import JobOptions
    from MedSegReasoning.wire.errors import ServiceError

    uids = [f"1.2.826.0.1.3680043.8.498.31{i}" for i in range(3)]
    studies = [
        Study(f"s{i}", str(write_dicom_study(tmp_path / f"s{i}", i, uid)), box=BOX) for i, uid in enumerate(uids)
    ]
    gone = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(ServiceError, match="not reachable"):
        run_batch(studies, JobOptions(), tmp_path / "out", workers=2, source=ThresholdSource(), dicomweb=gone)
    rows = _rows(tmp_path / "out")
    assert len(rows) == 1, "the run stopped at the first study the PACS could not take"
    assert all(r["status"] == "failed" and "not reachable" in r["error"] for r in rows)
    assert all((tmp_path / "out" / r["study"] / "mask.nii.gz").is_file() for r in rows), "its outputs are kept"
