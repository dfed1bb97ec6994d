"""Faults of ``batch`` on a Ray cluster started on its own (``ray start --head`` on loopback, ``support.batch.RayHead``),
as issue #17 asks: a worker process killed in the middle of a study (the study is tried again and finishes, its
row written once), and the driver killed (SIGKILL, no clean-up) in the middle of a run (``--resume`` against the
same cluster finishes the rest, each study once). The actors build the tests' threshold segmenter (``support.batch``
sources); the cluster's workers import ``support.*`` through the head's PYTHONPATH.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.batch import BOX, KillOnceSource, RayHead, write_nifti_study

pytest.importorskip("ray", reason="the Ray path needs ray: pip install 'medseg-reasoning[batch]'")

ROOT = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "Testing"), os.environ.get("PYTHONPATH", "")) if p)

DRIVER = """
import sys
from pathlib import Path
from MedSegReasoning.batch.cohort import Study
from MedSegReasoning.batch.command import run_batch
from MedSegReasoning.batch.study import JobOptions
from support.batch import BOX, SlowSource
cohort, out, address = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
studies = [Study(p.name.split(".")[0], str(p), box=BOX) for p in sorted(cohort.glob("*.nii.gz"))]
summary = run_batch(studies, JobOptions(), out, workers=2, ray_address=address, resume="--resume" in sys.argv,
                    source=SlowSource(float(sys.argv[4])))
print("DONE", summary.ok, summary.failed)
"""


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    cluster = RayHead(tmp_path_factory.mktemp("head"), env={"PYTHONPATH": PYTHONPATH}).start()
    yield cluster
    cluster.stop()


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _cohort(folder: Path, n: int) -> Path:
    for i in range(n):
        write_nifti_study(folder / f"s{i}.nii.gz", i)
    return folder


def test_a_worker_killed_on_the_cluster_mid_study_is_retried_and_its_row_written_once(head, tmp_path, monkeypatch):
    import ray

    from MedSegReasoning.batch.cohort import Study
    from MedSegReasoning.batch.command import run_batch
    from MedSegReasoning.batch.study import JobOptions

    monkeypatch.setenv("PYTHONPATH", PYTHONPATH)
    cohort = _cohort(tmp_path / "cohort", 4)
    studies = [Study(f"s{i}", str(cohort / f"s{i}.nii.gz"), box=BOX, label="liver") for i in range(4)]
    marker = tmp_path / "killed"
    try:
        summary = run_batch(
            studies, JobOptions(), tmp_path / "out", workers=2, ray_address=head.address, source=KillOnceSource(marker)
        )
    finally:
        ray.shutdown()
    assert marker.is_file(), "a worker process of the cluster was killed in the middle of a study"
    assert int(marker.read_text()) != os.getpid()
    assert (summary.engine, summary.ok, summary.failed) == ("ray", 4, 0), "the killed study finished on a retry"
    rows = _rows(tmp_path / "out")
    assert sorted(r["study"] for r in rows) == ["s0", "s1", "s2", "s3"], "one row per study"
    assert all(r["status"] == "ok" and float(r["volume_ml"]) > 0 for r in rows)


def test_the_driver_killed_mid_run_then_resume_on_the_cluster_finishes_each_study_once(head, tmp_path):
    cohort = _cohort(tmp_path / "cohort", 6)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    argv = [sys.executable, "-c", DRIVER, str(cohort), str(out), head.address, "0.4"]
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    rows_dir = out / ".batch" / "rows"
    deadline = time.monotonic() + 180
    while not (rows_dir.is_dir() and any(rows_dir.glob("*.json"))) and child.poll() is None:
        assert time.monotonic() < deadline, "the driver never finished a study"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)  # the driver alone: the cluster goes on running
    child.communicate()
    done_before = {p.stem for p in rows_dir.glob("*.json")}
    assert done_before and len(done_before) < 6, "killed in the middle of the run"

    resumed = subprocess.run([*argv[:-1], "0", "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"DONE {6 - len(done_before)} 0" in resumed.stdout, "the resumed run did only what was left"
    rows = _rows(out)
    assert sorted(r["study"] for r in rows) == [f"s{i}" for i in range(6)], "each study once"
    assert all(r["status"] == "ok" for r in rows)
    assert {r["study"] for r in rows if r["attempt"] == "1"} == {f"s{i}" for i in range(6)}
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        f"s{i}" for i in range(6)
    ]
