"""``medseg-reasoning batch`` in this process (``--in-process``, what a machine without Ray runs): cohorts from a
folder and a manifest, the row-wins rules, exit codes 0/2/3/5, the results table and report, resume.

The segmenter is the tests' ``ThresholdSegmenter`` (monkeypatched factory: the in-process worker calls it); the
studies are tiny NIfTI files and DICOM series. The same run on Ray is ``test_batch_ray.py``.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.batch import BOX, ThresholdSource, write_dicom_study, write_nifti_study

from MedSegReasoning.cli import main

COLUMNS = {
    "study", "input", "study_uid", "series_uid", "question", "entity", "label", "code", "volume_ml", "key_slice",
    "score", "judgment", "status", "error", "seconds", "versions",
}  # fmt: skip
STUDY_UID = "1.2.826.0.1.3680043.8.498.101"


@pytest.fixture
def threshold(monkeypatch):
    from MedSegReasoning.segmentation import factory

    monkeypatch.setattr(factory, "create_segmenter", lambda spec, **kw: ThresholdSource()())


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _cohort(root: Path) -> Path:
    """Two NIfTI studies, one DICOM study, one corrupt 'NIfTI' file."""
    cohort = root / "cohort"
    write_nifti_study(cohort / "a.nii.gz", 0)
    write_nifti_study(cohort / "b.nii.gz", 4)
    write_dicom_study(cohort / "dicom-study", 2, STUDY_UID)
    (cohort / "broken.nii.gz").write_bytes(b"not a nifti at all")
    return cohort


def _manifest(root: Path, cohort: Path, rows: list[dict[str, str]]) -> Path:
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_manifest_cohort_rows_table_report_and_exit_5(tmp_path, threshold, capsys):
    cohort = _cohort(tmp_path)
    manifest = _manifest(
        tmp_path,
        cohort,
        [
            {"input": "cohort/a.nii.gz", "box": BOX, "label": "liver"},
            {"input": "cohort/b.nii.gz", "box": BOX, "label": "liver"},
            {"input": "cohort/dicom-study", "box": BOX, "label": "spleen"},
            {"input": "cohort/broken.nii.gz", "box": BOX},
        ],
    )
    out = tmp_path / "out"
    assert main(["batch", str(manifest), "--out", str(out), "--in-process"]) == 5
    captured = capsys.readouterr()
    assert "[4/4]" in captured.err and "broken: failed" in captured.err, "progress on stderr, per study"
    assert "3 ok, 1 failed" in captured.out
    rows = _rows(out)
    assert COLUMNS <= set(rows[0]), "the table has every documented column"
    by_input = {Path(r["input"]).name: r for r in rows}
    assert len(rows) == 4, "one row per entity, one for the failed study"
    assert {r["status"] for r in rows} == {"ok", "failed"}
    dicom = by_input["dicom-study"]
    assert dicom["study"] == STUDY_UID and dicom["study_uid"] == STUDY_UID, "a DICOM study's folder is its UID"
    assert dicom["series_uid"] and dicom["label"] == "spleen" and dicom["code"].startswith("SCT:")
    assert by_input["a.nii.gz"]["study"] == "a" and by_input["b.nii.gz"]["study"] == "b"
    a, b = float(by_input["a.nii.gz"]["volume_ml"]), float(by_input["b.nii.gz"]["volume_ml"])
    assert b > a > 0, "each study segmented on its own volume"
    assert by_input["a.nii.gz"]["entity"] == "E1" and by_input["a.nii.gz"]["key_slice"] == "3"
    assert by_input["a.nii.gz"]["judgment"] in ("accepted", "uncertain")
    assert json.loads(by_input["a.nii.gz"]["versions"])["segmenter"]["name"] == "threshold"
    broken = by_input["broken.nii.gz"]
    assert broken["status"] == "failed" and broken["error"] and broken["entity"] == ""
    # ask's outputs per study; nothing for the failed one
    assert {p.name for p in (out / "a").iterdir()} >= {"mask.nii.gz", "result.json", "overview.png"}
    assert (out / STUDY_UID / "seg.dcm").is_file()
    assert not (out / "broken").exists()
    result = json.loads((out / "a" / "result.json").read_text())
    assert result["targets"][0]["label"] == "liver"
    report = (out / "report.html").read_text()
    assert "broken.nii.gz" in report and broken["error"][:40] in report.replace("&#x27;", "'")
    assert report.count("data:image/png;base64,") == 2, "one distribution plot per structure (liver, spleen)"
    pyarrow = pytest.importorskip("pyarrow.parquet")
    table = pyarrow.read_table(out / "results.parquet")
    assert table.num_rows == 4 and COLUMNS <= set(table.column_names)


def test_folder_cohort_question_for_all_and_the_rows_own_win(tmp_path, threshold):
    cohort = tmp_path / "cohort"
    write_nifti_study(cohort / "a.nii.gz", 0)
    write_nifti_study(cohort / "b.nii.gz", 3)
    answers = tmp_path / "answers.jsonl"  # a replay reasoner: one study asks, the other has its own box
    answers.write_text(
        json.dumps({"step": "pick_slice", "raw": '{"targets": [{"slice": 3, "label": "liver"}]}'})
        + "\n"
        + json.dumps(
            {
                "step": "locate",
                "raw": '{"reasoning": "bright block", "targets": [{"slice": 3, "bbox": [14, 12, 46, 44], '
                '"label": "liver", "ref": null}], "clarification": null}',
            }
        )
        + "\n"
    )
    out = tmp_path / "out"
    manifest = _manifest(
        tmp_path, cohort, [{"input": "cohort/a.nii.gz"}, {"input": "cohort/b.nii.gz", "box": BOX, "question": "own"}]
    )
    argv = ["batch", str(manifest), "--question", "segment the liver", "--reasoner", f"replay:{answers}"]
    assert main([*argv, "--out", str(out), "--in-process"]) == 0
    rows = {r["study"]: r for r in _rows(out)}
    assert rows["a"]["question"] == "segment the liver" and rows["a"]["label"] == "liver"
    assert json.loads((out / "a" / "result.json").read_text())["reasoner"]["backend"] == "replay"
    assert rows["b"]["question"] == "own", "the row's own question wins"
    assert "reasoner" not in json.loads((out / "b" / "result.json").read_text()), "the row's box is the plan"
    # a folder cohort: every study takes --question (no boxes there)
    out2 = tmp_path / "out2"
    assert main(["batch", str(cohort), "--out", str(out2), "--in-process"]) == 2, "no question, no box"
    assert not out2.exists(), "a usage error writes nothing"


def test_usage_errors_exit_2_before_anything_runs(tmp_path, threshold, capsys):
    cohort = tmp_path / "cohort"
    write_nifti_study(cohort / "a.nii.gz", 0)
    out = tmp_path / "out"
    bad_box = _manifest(tmp_path, cohort, [{"input": "cohort/a.nii.gz", "box": "1,2,3"}])
    assert main(["batch", str(bad_box), "--out", str(out), "--in-process"]) == 2
    assert "study" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "nope"), "--out", str(out), "--question", "q"]) == 2
    questions = tmp_path / "q.txt"
    questions.write_text("one\ntwo\n")
    assert main(["batch", str(cohort), "--questions", str(questions), "--out", str(out)]) == 2
    assert not out.exists()


def test_model_that_cannot_load_exits_3(tmp_path, monkeypatch):
    from MedSegReasoning.segmentation import factory
    from MedSegReasoning.wire.errors import ModelError

    def broken(spec, **kw):
        raise ModelError("the weights are damaged: reinstall them.")

    monkeypatch.setattr(factory, "create_segmenter", broken)
    cohort = tmp_path / "cohort"
    write_nifti_study(cohort / "a.nii.gz", 0)
    manifest = _manifest(tmp_path, cohort, [{"input": "cohort/a.nii.gz", "box": BOX}])
    assert main(["batch", str(manifest), "--out", str(tmp_path / "out"), "--in-process"]) == 3
    assert not (tmp_path / "out" / "results.csv").exists(), "no table of a run that never started"


def test_resume_skips_done_retries_failed_and_never_writes_a_study_twice(tmp_path, threshold):
    cohort = _cohort(tmp_path)
    manifest = _manifest(
        tmp_path,
        cohort,
        [{"input": f"cohort/{name}", "box": BOX} for name in ("a.nii.gz", "b.nii.gz", "broken.nii.gz")],
    )
    out = tmp_path / "out"
    argv = ["batch", str(manifest), "--out", str(out), "--in-process"]
    assert main(argv) == 5
    done_mask = (out / "a" / "mask.nii.gz").stat().st_mtime_ns
    assert main(argv) == 2, "a second run into the same --out without --resume is refused"
    write_nifti_study(cohort / "broken.nii.gz", 1)  # the user fixes the failed study
    assert main([*argv, "--resume"]) == 0
    rows = _rows(out)
    assert sorted(r["study"] for r in rows) == ["a", "b", "broken"], "one row per study: none twice"
    by_study = {r["study"]: r for r in rows}
    assert by_study["broken"]["status"] == "ok" and by_study["broken"]["attempt"] == "2"
    assert by_study["a"]["attempt"] == "1"
    assert (out / "a" / "mask.nii.gz").stat().st_mtime_ns == done_mask, "a done study is not run again"
    assert main([*argv, "--resume"]) == 0, "all done: nothing to do"
    assert len(_rows(out)) == 3


def test_a_locked_output_folder_is_refused(tmp_path):
    from MedSegReasoning.batch.store import BatchStore
    from MedSegReasoning.wire.errors import InputError

    first = BatchStore(tmp_path / "out", resume=False)
    try:
        with pytest.raises(InputError, match="another batch run"):
            BatchStore(tmp_path / "out", resume=True)
    finally:
        first.close()


def test_help_does_not_import_ray():
    code = (
        "import sys, contextlib, io\n"
        "from MedSegReasoning.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try: main(['batch', '--help'])\n"
        "    except SystemExit: pass\n"
        "assert '--ray-address' in out.getvalue() and ' 5 ' in out.getvalue().replace('\\n', ' ')\n"
        "assert 'ray' not in sys.modules, 'batch --help imported ray'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ctrl_c_keeps_the_studies_done_and_resume_finishes(tmp_path, threshold, monkeypatch, capsys):
    from MedSegReasoning.batch.study import StudyWorker

    cohort = tmp_path / "cohort"
    for i in range(3):
        write_nifti_study(cohort / f"s{i}.nii.gz", i)
    manifest = _manifest(tmp_path, cohort, [{"input": f"cohort/s{i}.nii.gz", "box": BOX} for i in range(3)])
    real_round = StudyWorker._round
    calls = []

    def interrupted_in_the_second_study(self, study, *rest):
        calls.append(study.key)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of s1
        return real_round(self, study, *rest)

    monkeypatch.setattr(StudyWorker, "_round", interrupted_in_the_second_study)
    out = tmp_path / "out"
    argv = ["batch", str(manifest), "--out", str(out), "--in-process"]
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert [r["study"] for r in _rows(out)] == ["s0"], "the done study is kept, the interrupted one not written"
    assert not (out / "s1").exists() and not [p for p in out.iterdir() if p.name.startswith(".staging")]
    monkeypatch.setattr(StudyWorker, "_round", real_round)
    assert main([*argv, "--resume"]) == 0
    rows = _rows(out)
    assert [r["study"] for r in rows] == ["s0", "s1", "s2"] and {r["attempt"] for r in rows} == {"1"}


def test_series_filter_picks_the_series_of_a_study_and_records_it(tmp_path, threshold):
    study = tmp_path / "cohort" / "study1"
    write_dicom_study(study, 0, STUDY_UID, description="abdomen venous", slices=8)
    write_dicom_study(study, 0, STUDY_UID, description="abdomen scout", slices=5)
    write_dicom_study(study, 3, STUDY_UID, description="chest", slices=8)
    manifest = _manifest(tmp_path, study.parent, [{"input": "cohort/study1", "box": BOX}])
    argv = ["batch", str(manifest), "--in-process"]
    assert main([*argv, "--out", str(tmp_path / "none")]) == 5, "several series and no filter: the study fails"
    assert "series" in _rows(tmp_path / "none")[0]["error"]
    ambiguous = tmp_path / "ambiguous"
    assert main([*argv, "--out", str(ambiguous), "--series-filter", "modality=CT,description=*abdomen*"]) == 5
    assert "most-slices" in _rows(ambiguous)[0]["error"]
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--series-filter", "modality=CT,description=*ABDOMEN*,most-slices"]) == 0
    (row,) = _rows(out)
    assert "abdomen venous" in row["series_picked"] and "8 files" in row["series_picked"]
    result = json.loads((out / STUDY_UID / "result.json").read_text())
    assert result["series_picked"] == row["series_picked"] and result["input"]["shape_ijk"][2] == 8
    assert main([*argv, "--out", str(tmp_path / "bad"), "--series-filter", "colour=red"]) == 2


def test_driver_killed_then_resume_finishes_without_duplicates(tmp_path, threshold):
    """The command killed (SIGKILL, no clean-up) after its first study: --resume does the rest, each study once."""
    import os
    import signal
    import time

    cohort = tmp_path / "cohort"
    for i in range(4):
        write_nifti_study(cohort / f"s{i}.nii.gz", i)
    manifest = _manifest(tmp_path, cohort, [{"input": f"cohort/s{i}.nii.gz", "box": BOX} for i in range(4)])
    out = tmp_path / "out"
    argv = ["batch", str(manifest), "--out", str(out), "--limit", "3", "--in-process"]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-m", "MedSegReasoning.cli", *argv], env=env, stderr=subprocess.PIPE)
    rows_dir = out / ".batch" / "rows"
    deadline = time.monotonic() + 120
    while not (rows_dir.is_dir() and any(rows_dir.glob("*.json"))) and child.poll() is None:
        assert time.monotonic() < deadline, "the child never finished a study"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stderr.close()
    done_before = {p.stem for p in rows_dir.glob("*.json")}
    assert done_before and len(done_before) < 3, "killed in the middle of the run"
    assert main([*argv, "--resume"]) == 0
    rows = _rows(out)
    assert sorted(r["study"] for r in rows) == ["s0", "s1", "s2"], "each study once; --limit 3 left s3 out"
    assert all(r["status"] == "ok" for r in rows)
    assert {r["study"] for r in rows if r["attempt"] == "1"} == {"s0", "s1", "s2"}
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["s0", "s1", "s2"]
