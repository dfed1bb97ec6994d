"""``batch --ray-address`` joining a Ray cluster that was started on its own (``ray start --head`` on loopback,
as an operator starts one), with the real LiteMedSAM loaded once per actor: the rows equal those of the
in-process run of the same cohort, and the cluster is found through ``--ray-address ADDR`` and through
``--ray-address auto`` with ``RAY_ADDRESS`` set.

The head is ``support.batch.RayHead``: its own process group, temp folder and free ports; stopped by signalling
that group (``ray stop`` would stop every Ray of this user on the machine). Without the ray CLI the test skips,
and fails under MEDSEG_REQUIRE_TOOLS=1.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from support.batch import BOX, RayHead, write_nifti_study

pytest.importorskip("ray", reason="the Ray path needs ray: pip install 'medseg-reasoning[batch]'")

ROOT = Path(__file__).resolve().parents[2]


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_batch_joins_a_separately_started_cluster_and_gives_the_in_process_rows(tmp_path, capsys, monkeypatch):
    from MedSegReasoning.cli import main

    for i in range(2):
        write_nifti_study(tmp_path / "cohort" / f"s{i}.nii.gz", 3 * i)
    (tmp_path / "cohort" / "broken.nii.gz").write_bytes(b"damaged")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        f'input,box,label\ncohort/s0.nii.gz,"{BOX}",liver\ncohort/s1.nii.gz,"{BOX}",liver\n'
        f'cohort/broken.nii.gz,"{BOX}",liver\n'
    )
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    head = RayHead(tmp_path / "head", env={"PYTHONPATH": pythonpath}).start()
    try:
        argv = ["batch", str(manifest), "--workers", "2"]
        assert main([*argv, "--out", str(tmp_path / "cluster"), "--ray-address", head.address]) == 5
        said = capsys.readouterr().out
        assert "2 ok, 1 failed" in said and "(ray," in said

        monkeypatch.setenv("RAY_ADDRESS", head.address)
        assert main([*argv, "--out", str(tmp_path / "auto"), "--ray-address", "auto"]) == 5
        assert "(ray," in capsys.readouterr().out
    finally:
        head.stop()
    monkeypatch.delenv("RAY_ADDRESS")
    assert main([*argv, "--out", str(tmp_path / "local"), "--in-process"]) == 5
    assert "(in-process," in capsys.readouterr().out

    local = _rows(tmp_path / "local")
    assert [r["status"] for r in local] == ["ok", "ok", "failed"]
    assert float(local[1]["volume_ml"]) > float(local[0]["volume_ml"]) > 0
    assert all('"LiteMedSAM"' in r["versions"] for r in local[:2])
    assert _rows(tmp_path / "cluster") == local, "the cluster's rows are the in-process rows"
    assert _rows(tmp_path / "auto") == local
    for key in ("s0", "s1"):
        assert (tmp_path / "cluster" / key / "mask.nii.gz").read_bytes() == (
            tmp_path / "local" / key / "mask.nii.gz"
        ).read_bytes()
