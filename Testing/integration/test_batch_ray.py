"""``batch`` on a real local Ray (``ray.init`` inside the command, 2 worker actors): the same rows as the
in-process run, a worker process killed in the middle of a study (the study is tried again on the next free
worker and finishes, its row is written once), and the shipped path (the real LiteMedSAM loaded once per actor) through the CLI.

The actors build their segmenter from a picklable source (``support.batch``): a monkeypatched factory does not
reach their processes. Testing/ is put on the workers' PYTHONPATH so they can import it.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from support.batch import BOX, KillOnceSource, ThresholdSource, write_nifti_study

ray = pytest.importorskip("ray", reason="the Ray path needs ray: pip install 'medseg-reasoning[batch]'")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker_path(monkeypatch):
    """The actors import the package and ``support.*`` from this checkout."""
    paths = [str(ROOT), str(ROOT / "Testing"), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


def _studies(tmp_path: Path, n: int = 4):
    from MedSegReasoning.batch.cohort import Study

    studies = []
    for i in range(n):
        path = write_nifti_study(tmp_path / "cohort" / f"s{i}.nii.gz", i)
        studies.append(Study(f"s{i}", str(path), box=BOX, label="liver"))
    broken = tmp_path / "cohort" / "broken.nii.gz"
    broken.write_bytes(b"damaged")
    studies.append(Study("broken", str(broken), box=BOX))
    return studies


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _comparable(rows):
    return sorted({k: v for k, v in r.items() if k not in ("seconds",)}.items() for r in rows)


def test_ray_rows_equal_the_in_process_rows_and_a_killed_worker_is_retried(tmp_path, worker_path):
    from MedSegReasoning.batch.command import run_batch
    from MedSegReasoning.batch.study import JobOptions

    studies = _studies(tmp_path)
    options = JobOptions()
    local = run_batch(studies, options, tmp_path / "local", in_process=True, source=ThresholdSource())
    assert (local.engine, local.ok, local.failed) == ("in-process", 4, 1)

    marker = tmp_path / "killed"
    on_ray = run_batch(studies, options, tmp_path / "ray", workers=2, source=KillOnceSource(marker))
    assert marker.is_file(), "a worker process was killed in the middle of a study"
    assert int(marker.read_text()) != os.getpid(), "it was an actor's process, not this one"
    assert (on_ray.engine, on_ray.ok, on_ray.failed) == ("ray", 4, 1), "the killed study finished on a retry"
    local_rows, ray_rows = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert len(ray_rows) == len(studies), "one row per study: the retried one is not written twice"
    for row in (*local_rows, *ray_rows):
        row.pop("versions")  # the segmenter's name differs (threshold vs its killing subclass's identity: same)
    assert _comparable(local_rows) == _comparable(ray_rows), "the in-process fallback gives Ray's rows"
    for study in studies[:4]:
        assert (tmp_path / "ray" / study.key / "mask.nii.gz").read_bytes() == (
            tmp_path / "local" / study.key / "mask.nii.gz"
        ).read_bytes()


def test_cli_on_local_ray_with_the_real_litemedsam(tmp_path, worker_path, capsys):
    from MedSegReasoning.cli import main

    for i in range(2):
        write_nifti_study(tmp_path / "cohort" / f"s{i}.nii.gz", 2 * i)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f'input,box,label\ncohort/s0.nii.gz,"{BOX}",liver\ncohort/s1.nii.gz,"{BOX}",liver\n')
    out = tmp_path / "out"
    assert main(["batch", str(manifest), "--out", str(out), "--workers", "2"]) == 0
    assert "(ray," in capsys.readouterr().out
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all('"LiteMedSAM"' in r["versions"] for r in rows)
    assert float(rows[1]["volume_ml"]) > float(rows[0]["volume_ml"]) > 0


def test_unreachable_ray_cluster_exits_4(tmp_path, capsys, monkeypatch):
    from ray.util.client import worker

    from MedSegReasoning.cli import main

    # Ray's client tries 3 times, waiting 5, 10 and 15 s: the same tries, 0.2 s each
    monkeypatch.setattr(worker, "INITIAL_TIMEOUT_SEC", 0.2)
    monkeypatch.setattr(worker, "backoff", lambda timeout: timeout)
    write_nifti_study(tmp_path / "cohort" / "s0.nii.gz", 0)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f'input,box\ncohort/s0.nii.gz,"{BOX}"\n')
    argv = ["batch", str(manifest), "--out", str(tmp_path / "out"), "--ray-address", "ray://127.0.0.1:9"]
    assert main(argv) == 4
    assert "cannot be reached" in capsys.readouterr().err
