"""``batch --reasoner-timeout SECONDS``: ``ask``'s total deadline per answer, for every study of a cohort. A study
whose reasoner runs past it is that study's failed row, with a sentence naming the timeout; the run goes on with
the next study and ends with exit 5; on Ray too, where each actor creates its own reasoner.

The reasoner is an ``openai:`` server written here that keeps its stream alive with SSE comments and never answers
(``support.hostile_server``'s ``keepalive``); the segmenter is the tests' ``ThresholdSegmenter``.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
from support.batch import BOX, ThresholdSource, write_nifti_study
from support.hostile_server import HostileServer

from MedSegReasoning.cli import main


@pytest.fixture
def slow_reasoner():
    server = HostileServer("keepalive")
    yield server
    server.close()


@pytest.fixture
def threshold(monkeypatch):
    from MedSegReasoning.segmentation import factory

    monkeypatch.setattr(factory, "create_segmenter", lambda spec, **kw: ThresholdSource()())


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return {r["study"]: r for r in csv.DictReader(f)}


def _manifest(tmp_path: Path) -> Path:
    """Three studies: the first and last ask a question (the reasoner), the middle one has its own box."""
    for i in range(3):
        write_nifti_study(tmp_path / "cohort" / f"s{i}.nii.gz", i)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f'input,box\ncohort/s0.nii.gz,\ncohort/s1.nii.gz,"{BOX}"\ncohort/s2.nii.gz,\n')
    return manifest


def test_a_reasoner_past_the_timeout_fails_its_study_and_the_run_goes_on(tmp_path, threshold, slow_reasoner, capsys):
    manifest = _manifest(tmp_path)
    out = tmp_path / "out"
    argv = ["batch", str(manifest), "--question", "where is the liver?", "--out", str(out), "--in-process"]
    reasoner = ["--reasoner", f"openai:{slow_reasoner.base_url}#m", "--reasoner-timeout", "0.5"]
    started = time.monotonic()
    assert main([*argv, *reasoner]) == 5
    assert time.monotonic() - started < 120, "each answer was cut off at its deadline, not the default 300 s"
    rows = _rows(out)
    assert [rows[k]["status"] for k in ("s0", "s1", "s2")] == ["failed", "ok", "failed"], "the run went on"
    for key in ("s0", "s2"):
        assert "within 0.5 s" in rows[key]["error"] and "--reasoner-timeout" in rows[key]["error"], rows[key]
    assert slow_reasoner.requests >= 2, "each study asked the reasoner itself"
    assert "1 ok, 2 failed" in capsys.readouterr().out


def test_the_timeout_is_checked_before_anything_runs(tmp_path, threshold, capsys):
    manifest = _manifest(tmp_path)
    out = tmp_path / "out"
    argv = ["batch", str(manifest), "--question", "q", "--out", str(out), "--in-process"]
    assert main([*argv, "--reasoner", f"replay:{tmp_path / 'a.jsonl'}", "--reasoner-timeout", "5"]) == 2
    assert "--reasoner-timeout applies to openai: reasoners" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--reasoner", "openai:http://127.0.0.1:9/v1#m", "--reasoner-timeout", "0"])
    assert exit_info.value.code == 2
    assert "not a positive number of seconds" in capsys.readouterr().err
    assert not out.exists(), "a usage error writes nothing"


def test_the_timeout_reaches_the_ray_actors(tmp_path, slow_reasoner, monkeypatch):
    """On Ray the reasoner is created in each actor: the deadline travels with the run's options."""
    pytest.importorskip("ray", reason="the Ray path needs ray: pip install 'medseg-reasoning[batch]'")
    import os

    from MedSegReasoning.batch.cohort import Study
    from MedSegReasoning.batch.command import run_batch
    from MedSegReasoning.batch.study import JobOptions
    from MedSegReasoning.reasoning.spec import ReasonerOptions

    root = Path(__file__).resolve().parents[2]
    paths = [str(root), str(root / "Testing"), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))  # the actors import support.*
    studies = [
        Study("asks", str(write_nifti_study(tmp_path / "c" / "a.nii.gz", 0)), question="where is the liver?"),
        Study("boxed", str(write_nifti_study(tmp_path / "c" / "b.nii.gz", 2)), box=BOX),
    ]
    reasoner = ReasonerOptions(spec=f"openai:{slow_reasoner.base_url}#m", stream=False, timeout_s=0.5)
    summary = run_batch(studies, JobOptions(reasoner=reasoner), tmp_path / "out", workers=1, source=ThresholdSource())
    assert (summary.engine, summary.ok, summary.failed) == ("ray", 1, 1)
    rows = _rows(tmp_path / "out")
    assert rows["asks"]["status"] == "failed" and "within 0.5 s" in rows["asks"]["error"]
    assert rows["boxed"]["status"] == "ok"
