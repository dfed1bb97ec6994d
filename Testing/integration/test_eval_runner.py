"""``medseg-reasoning eval`` end to end: each layout round-trips through the CLI with the real LiteMedSAM, the three
modes, dialogues fed true vs predicted masks, resuming, and the errors a user can fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.eval_data import (
    MR_FIRST,
    MR_SECOND,
    UMRG_SHAPES,
    box_of,
    locate_answer,
    umrg_rows,
    write_folder,
    write_mrmedseg,
    write_replay,
    write_umrg,
)

from MedSegReasoning.cli import main
from MedSegReasoning.evaluation.metrics import point_pair_dice
from MedSegReasoning.evaluation.report import RECORD_FIELDS

pytestmark = pytest.mark.slow


class CountingSegmenter:
    """The real segmenter, counting the prompts it is asked to segment (to prove what a resumed run skips)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.predictions = 0

    def predict(self, prompt):
        self.predictions += 1
        return self.inner.predict(prompt)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def segmenter(litemedsam, monkeypatch):
    """``eval`` creates its segmenter through the factory: hand it the session's LiteMedSAM (loaded once)."""
    counting = CountingSegmenter(litemedsam)
    monkeypatch.setattr("MedSegReasoning.segmentation.factory.create_segmenter", lambda spec, **kw: counting)
    return counting


def run_cli(*args) -> int:
    return main(["eval", *map(str, args), "--no-progress"])


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_umrg_oracle_round_trip(tmp_path, segmenter, capsys):
    out = tmp_path / "out"
    assert run_cli(write_umrg(tmp_path / "ds"), "--mode", "oracle", "--out", out) == 0
    rows = records(out)
    assert [r["sample"] for r in rows] == list(UMRG_SHAPES)
    for r in rows:
        assert set(RECORD_FIELDS) <= set(r)
        assert (r["mode"], r["dimension"], r["feed"], r["error"]) == ("oracle", 2, None, None)
        assert r["dice"] > 0.85, r  # a bright shape from its own box: LiteMedSAM's ceiling is near 1
        assert r["union"] >= r["intersection"] > 0 and r["box_iou"] is None and r["nsd"] is None
        assert r["latency_s"] > 0 and r["peak_rss_mb"] > 100
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["n"] == 3 and summary["counts"]["n_errors"] == 0
    assert "| " in (out / "summary.md").read_text()
    assert json.loads((out / "run.json").read_text())["layout"] == "umrg"
    assert "3 samples (0 failed), dice 0.9" in capsys.readouterr().out


def test_umrg_full_pipeline_with_replayed_answers(tmp_path, segmenter):
    answers = [locate_answer(mask, "lesion") for mask in UMRG_SHAPES.values()]
    replay = write_replay(tmp_path / "answers.jsonl", answers)
    out = tmp_path / "out"
    assert run_cli(write_umrg(tmp_path / "ds"), "--mode", "full", "--reasoner", f"replay:{replay}", "--out", out) == 0
    rows = records(out)
    truth_points = [json.loads(row["reward_model"]["ground_truth"])["point_2d"] for row in umrg_rows()]
    for r, mask, points in zip(rows, UMRG_SHAPES.values(), truth_points, strict=True):
        assert r["error"] is None and r["dice"] > 0.85
        assert r["box_iou"] == pytest.approx(1.0)  # the replayed box is the truth's box
        jj, ii = np.nonzero(mask)
        cx, cy = int(ii.mean()), int(jj.mean())
        assert r["pdice"] == pytest.approx(point_pair_dice([[cx - 3, cy], [cx + 3, cy]], points))


def test_reasoner_mode_scores_answers_without_segmenting(tmp_path, segmenter):
    masks = list(UMRG_SHAPES.values())
    shifted = json.loads(locate_answer(masks[0], "lesion"))
    x0, y0, x1, y1 = shifted["targets"][0]["bbox"]
    shifted["targets"][0]["bbox"] = [x0 + 10, y0, x1 + 10, y1]
    replay = write_replay(
        tmp_path / "a.jsonl", [json.dumps(shifted), locate_answer(masks[1], "x"), locate_answer(masks[2], "x")]
    )
    out = tmp_path / "out"
    assert (
        run_cli(write_umrg(tmp_path / "ds"), "--mode", "reasoner", "--reasoner", f"replay:{replay}", "--out", out) == 0
    )
    rows = records(out)
    assert segmenter.predictions == 0
    assert all(r["dice"] is None and r["union"] is None and r["error"] is None for r in rows)
    assert [r["box_iou"] for r in rows[1:]] == [pytest.approx(1.0)] * 2
    w, h = x1 - x0 + 1, y1 - y0 + 1
    assert rows[0]["box_iou"] == pytest.approx((w - 10) * h / ((w + 10) * h))


class SpyReasoner:
    """The replay reasoner, recording the entities each question was asked with."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.contexts: list = []

    def reason(self, views, question, context, on_text=None, cancel=None):
        self.contexts.append(context)
        return self.inner.reason(views, question, context, on_text, cancel)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_mrmedseg_dialogue_runs_with_true_and_predicted_masks(tmp_path, litemedsam):
    """Round 1's answer covers only the left half of the disc, so its predicted mask differs from the truth: round
    2 must see the TRUE disc in the true-feed run and the pipeline's own half disc in the predicted-feed run."""
    from MedSegReasoning.conversation import ReasonerOptions
    from MedSegReasoning.evaluation.layouts import open_dataset
    from MedSegReasoning.evaluation.runner import EvalOptions, run_eval
    from MedSegReasoning.reasoning import create_reasoner

    half = MR_FIRST.copy()
    half[:, 22:] = False
    answers = [locate_answer(half, "blob"), locate_answer(MR_SECOND, "square")] * 2
    replay = write_replay(tmp_path / "a.jsonl", answers)
    spy = SpyReasoner(create_reasoner(f"replay:{replay}"))
    out = tmp_path / "out"
    options = EvalOptions(out=out, mode="full", reasoner=ReasonerOptions(spec=f"replay:{replay}"), progress=False)
    summary = run_eval(open_dataset(write_mrmedseg(tmp_path / "ds")), options, segmenter=litemedsam, reasoner=spy)
    rows = records(out)
    assert [(r["round"], r["feed"]) for r in rows] == [(1, "true"), (2, "true"), (1, "predicted"), (2, "predicted")]
    assert all(r["dialogue"] and r["sample"].endswith(f"/r{r['round']}@{r['feed']}") for r in rows)
    assert rows[0]["dice"] < 0.8 and rows[2]["dice"] == pytest.approx(rows[0]["dice"])  # half the disc
    assert rows[1]["dice"] > 0.85 and rows[3]["dice"] > 0.85
    true_round2, predicted_round2 = spy.contexts[1], spy.contexts[3]
    assert [e.id for e in true_round2.entities] == ["E1"] == [e.id for e in predicted_round2.entities]
    assert true_round2.round == 2
    assert list(true_round2.entities[0].box) == box_of(MR_FIRST)  # fed the truth
    assert list(predicted_round2.entities[0].box) != box_of(MR_FIRST)  # fed its own half disc
    assert summary["counts"]["n"] == 4


def test_mrmedseg_oracle_round_trip(tmp_path, segmenter):
    out = tmp_path / "out"
    assert run_cli(write_mrmedseg(tmp_path / "ds"), "--mode", "oracle", "--out", out) == 0
    rows = records(out)
    assert [(r["round"], r["feed"]) for r in rows] == [(1, None), (2, None)]
    assert all(r["dice"] > 0.85 and r["error"] is None for r in rows)


def test_folder_3d_oracle_round_trip(tmp_path, segmenter):
    out = tmp_path / "out"
    assert run_cli(write_folder(tmp_path / "ds"), "--mode", "oracle", "--out", out, "--nsd-tolerance", "1.5") == 0
    rows = records(out)
    assert [r["sample"] for r in rows] == ["single-blob", "d1/r1", "d1/r2"]
    for r in rows:
        assert r["dimension"] == 3 and r["nsd_tolerance_mm"] == 1.5 and r["error"] is None
        # propagated through the shape's slices (measured: blob 0.85 / NSD 0.78; the 4-slice square 0.75 / 0.56,
        # propagation stopping one slice short of its end)
        assert r["dice"] > 0.7 and r["nsd"] > 0.5, r
    assert rows[0]["dice"] == pytest.approx(rows[1]["dice"])  # the same question, the same answer


def test_resume_skips_finished_samples(tmp_path, segmenter, capsys):
    dataset, out = write_umrg(tmp_path / "ds"), tmp_path / "out"
    assert run_cli(dataset, "--mode", "oracle", "--out", out, "--limit", "1") == 0
    first = (out / "samples.jsonl").read_text()
    assert [r["sample"] for r in records(out)] == ["u1"]
    assert run_cli(dataset, "--mode", "oracle", "--out", out) == 2  # not empty: neither --resume nor --force
    before = segmenter.predictions
    assert run_cli(dataset, "--mode", "oracle", "--out", out, "--resume") == 0
    assert segmenter.predictions - before == 2  # u2 and u3 only
    text = (out / "samples.jsonl").read_text()
    assert text.startswith(first)  # u1's record kept byte for byte (its latency was not measured again)
    assert [r["sample"] for r in records(out)] == ["u1", "u2", "u3"]
    assert "computed 2, kept 1 from before" in capsys.readouterr().out
    assert run_cli(dataset, "--mode", "oracle", "--out", out, "--resume") == 0  # nothing left: nothing computed
    assert segmenter.predictions - before == 2 and len(records(out)) == 3


def test_resume_refuses_another_mode(tmp_path, segmenter, capsys):
    dataset, out = write_umrg(tmp_path / "ds"), tmp_path / "out"
    assert run_cli(dataset, "--mode", "oracle", "--out", out, "--limit", "1") == 0
    replay = write_replay(tmp_path / "a.jsonl", [locate_answer(m, "x") for m in UMRG_SHAPES.values()])
    code = run_cli(dataset, "--mode", "reasoner", "--reasoner", f"replay:{replay}", "--out", out, "--resume")
    assert code == 2
    assert "continues another evaluation (mode 'oracle' -> 'reasoner'" in capsys.readouterr().err


def test_a_failing_sample_does_not_stop_the_run(tmp_path, segmenter):
    rows = umrg_rows()
    rows[0]["masks"] = [{"bytes": rows[0]["masks"][0]["bytes"], "path": None}]
    from support.eval_data import mask_png

    rows[0]["masks"][0]["bytes"] = mask_png(np.zeros((64, 64), dtype=bool))  # blank truth
    rows[1]["images"] = [{"bytes": b"not a png", "path": None}]  # undecodable image
    out = tmp_path / "out"
    assert run_cli(write_umrg(tmp_path / "ds", rows), "--mode", "oracle", "--out", out) == 0
    blank, broken, fine = records(out)
    assert (blank["dice"], blank["iou"], blank["intersection"], blank["union"]) == (0.0, 0.0, 0, 0)
    assert "truth mask is empty" in blank["error"]
    assert broken["dice"] == 0.0 and "cannot be decoded" in broken["error"]
    assert fine["error"] is None and fine["dice"] > 0.85
    assert json.loads((out / "summary.json").read_text())["counts"]["n_errors"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layout", "coco"], "unknown layout 'coco'"),
        (["--mode", "best"], "unknown --mode 'best'"),
        (["--resume", "--force"], "give one of them"),
        (["--resume"], "holds no samples.jsonl to continue"),
        (["--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_usage_errors_exit_2_with_a_sentence(tmp_path, extra, message, capsys):
    dataset = write_umrg(tmp_path / "ds")
    assert run_cli(dataset, "--mode", "oracle", "--out", tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_parquet_without_the_columns_exits_2(tmp_path, capsys):
    rows = [{k: v for k, v in row.items() if k != "prompt"} for row in umrg_rows()]
    assert run_cli(write_umrg(tmp_path / "ds", rows), "--mode", "oracle", "--out", tmp_path / "out") == 2
    assert "lacks the U-MRG column(s) prompt" in capsys.readouterr().err


def test_an_unusable_reasoner_answer_fails_only_its_question(tmp_path, segmenter):
    masks = list(UMRG_SHAPES.values())
    replay = write_replay(
        tmp_path / "a.jsonl", ["I think it is the liver.", locate_answer(masks[1], "x"), locate_answer(masks[2], "x")]
    )
    out = tmp_path / "out"
    assert run_cli(write_umrg(tmp_path / "ds"), "--mode", "full", "--reasoner", f"replay:{replay}", "--out", out) == 0
    garbage, *fine = records(out)
    assert garbage["error"] and (garbage["dice"], garbage["intersection"]) == (0.0, 0)
    assert garbage["union"] == int(masks[0].sum())  # the documented failure record: union = the truth's size
    assert all(r["error"] is None and r["dice"] > 0.85 for r in fine)


def test_folder_3d_full_pipeline_dialogue(tmp_path, segmenter):
    """3D questions take the two-look strategy (key-slice montage, then the slice): two replayed answers each."""
    from support.eval_data import blob_volume_and_labels

    _, labels = blob_volume_and_labels()

    def look(label: str, value: int, k: int) -> list[str]:
        pick = json.dumps({"reasoning": "", "targets": [{"slice": k, "label": label}], "clarification": None})
        return [pick, locate_answer(labels[k] == value, label, slice_index=k)]

    single, blob, square = look("blob", 1, 3), look("blob", 1, 3), look("square", 2, 3)
    replay = write_replay(tmp_path / "a.jsonl", single + (blob + square) * 2)
    out = tmp_path / "out"
    assert run_cli(write_folder(tmp_path / "ds"), "--mode", "full", "--reasoner", f"replay:{replay}", "--out", out) == 0
    rows = records(out)
    assert [r["sample"] for r in rows] == [
        "single-blob",
        "d1/r1@true",
        "d1/r2@true",
        "d1/r1@predicted",
        "d1/r2@predicted",
    ]
    for r in rows:
        assert r["error"] is None and r["dimension"] == 3, r
        assert r["dice"] > 0.7 and r["nsd"] is not None and r["box_iou"] == pytest.approx(1.0)
