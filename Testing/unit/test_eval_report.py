"""The evaluation summary on hand-made records (numbers worked out in the comments) and the files it writes."""

from __future__ import annotations

import json
import sys

import pytest
from PIL import Image

from MedSegReasoning.evaluation.report import PLOT_FILES, RECORD_FIELDS, read_records, summarize, write_report
from MedSegReasoning.wire.errors import InputError


def _record(sample, **fields):
    base = {key: None for key in RECORD_FIELDS}
    base.update(sample=sample, case="case-1", mode="full", dimension=2, latency_s=1.0)
    base.update(fields)
    return base


def _single_questions():
    return [
        # exact one-voxel hit: I = 1, U = 1
        _record(
            "s1",
            category="liver",
            dice=1.0,
            iou=1.0,
            intersection=1,
            union=1,
            box_iou=0.5,
            pdice=0.4,
            latency_s=1.0,
            peak_rss_mb=100.0,
        ),
        # one voxel of nine: I = 1, U = 9, Dice = 2/10, IoU = 1/9
        _record("s2", category="liver", dice=0.2, iou=1 / 9, intersection=1, union=9, latency_s=2.0, peak_rss_mb=150.0),
        # failed: Dice = IoU = 0, I = 0, U = the truth's 10 voxels
        _record(
            "s3",
            category="spleen",
            dice=0.0,
            iou=0.0,
            intersection=0,
            union=10,
            latency_s=3.0,
            peak_rss_mb=120.0,
            error="the reasoner's answer had no bbox",
        ),
        # no category, 3D with NSD: I = 8, U = 12, Dice = 16/20, IoU = 8/12
        _record(
            "s4",
            dimension=3,
            dice=0.8,
            iou=8 / 12,
            intersection=8,
            union=12,
            nsd=0.75,
            nsd_tolerance_mm=2.0,
            latency_s=4.0,
        ),
    ]


def _dialogue_rounds():
    def rnd(sample, feed, number, i, u):
        return _record(
            sample, dialogue="d", round=number, feed=feed, dice=2 * i / (i + u), iou=i / u, intersection=i, union=u
        )

    return [
        rnd("t1", "true", 1, 9, 11),  # Dice 0.9
        rnd("t2", "true", 2, 3, 7),  # Dice 0.6, IoU 3/7
        rnd("p1", "predicted", 1, 9, 11),
        rnd("p2a", "predicted", 2, 1, 9),  # Dice 0.2, IoU 1/9
        rnd("p2b", "predicted", 2, 3, 7),  # Dice 0.6, IoU 3/7
    ]


def test_summary_numbers_by_hand():
    s = summarize(_single_questions())
    assert s["counts"] == {"n": 4, "n_errors": 1}
    o = s["overall"]
    assert o["dice"] == {"mean": pytest.approx((1 + 0.2 + 0 + 0.8) / 4), "n": 4}  # 0.5
    assert o["giou"]["mean"] == pytest.approx((1 + 1 / 9 + 0 + 2 / 3) / 4)  # 4/9 = 0.4444
    # cIoU = (1 + 1 + 0 + 8) / (1 + 9 + 10 + 12) = 10 / 32; not the gIoU above
    assert o["ciou"] == {"value": pytest.approx(0.3125), "intersection": 10, "union": 32, "n": 4}
    assert o["box_iou"] == {"mean": 0.5, "n": 1} and o["pdice"] == {"mean": 0.4, "n": 1}
    assert o["nsd"] == {"mean": 0.75, "n": 1, "tolerance_mm": 2.0}
    # latencies 1, 2, 3, 4 s: median 2.5; p90 at position 0.9 * 3 = 2.7 -> 3 + 0.7 * (4 - 3) = 3.7
    assert o["latency_s"] == {"median": pytest.approx(2.5), "p90": pytest.approx(3.7), "n": 4}
    assert o["peak_rss_mb"] == {"max": 150.0, "n": 3}
    liver, spleen = s["by_category"]["liver"], s["by_category"]["spleen"]
    assert set(s["by_category"]) == {"liver", "spleen"}  # s4 has no category
    assert liver["n"] == 2 and liver["dice"]["mean"] == pytest.approx(0.6)
    assert liver["giou"]["mean"] == pytest.approx(5 / 9) and liver["ciou"]["value"] == pytest.approx(0.2)
    assert spleen["n_errors"] == 1 and spleen["dice"]["mean"] == 0.0 and spleen["ciou"]["value"] == 0.0
    assert s["by_round"] == {} and "by_mode" not in s


def test_summary_by_round_and_mode():
    records = _dialogue_rounds()
    records[0]["mode"] = "oracle"
    s = summarize(records)
    assert set(s["by_round"]) == {"true", "predicted"}
    assert s["by_round"]["true"]["2"] == {
        "dice": pytest.approx(0.6),
        "giou": pytest.approx(3 / 7),
        "ciou": pytest.approx(3 / 7),
        "n": 1,
    }
    predicted_2 = s["by_round"]["predicted"]["2"]
    assert predicted_2["n"] == 2
    assert predicted_2["dice"] == pytest.approx((0.2 + 0.6) / 2)
    assert predicted_2["giou"] == pytest.approx((1 / 9 + 3 / 7) / 2)
    assert predicted_2["ciou"] == pytest.approx((1 + 3) / (9 + 7))  # 0.25
    assert list(s["by_round"]["predicted"]) == ["1", "2"]
    assert set(s["by_mode"]) == {"full", "oracle"} and s["by_mode"]["oracle"]["n"] == 1


def test_missing_optional_metrics_do_not_crash():
    # reasoner mode: no masks, only the box and the points
    records = [{"sample": "r1", "mode": "reasoner", "box_iou": 0.25, "pdice": 0.5, "latency_s": 0.5}, {"sample": "r2"}]
    s = summarize(records)
    assert s["overall"]["dice"] == {"mean": None, "n": 0}
    assert s["overall"]["ciou"]["value"] is None
    assert s["overall"]["box_iou"] == {"mean": 0.25, "n": 1}
    assert s["overall"]["latency_s"]["n"] == 1


def test_garbage_records_are_input_errors(tmp_path):
    with pytest.raises(InputError, match=r"'bad'.*dice must be a finite number"):
        summarize([{"sample": "bad", "dice": "high"}])
    with pytest.raises(InputError, match="record 1 must be a JSON object"):
        summarize([["not", "a", "dict"]])
    with pytest.raises(InputError, match="intersection 5 exceeds union 3"):
        summarize([{"sample": "x", "intersection": 5, "union": 3}])
    with pytest.raises(InputError, match="round numbers start at 1"):
        summarize([{"sample": "x", "round": 0}])
    bad = tmp_path / "results.jsonl"
    bad.write_text('{"sample": "a"}\n\n{oops\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 3"):
        read_records(bad)
    with pytest.raises(InputError, match="No evaluation records"):
        read_records(tmp_path / "missing.jsonl")


def _assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert image.width > 200 and image.height > 200
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 10  # drawn on, not a blank canvas


def test_write_report_files(tmp_path):
    records = _single_questions() + _dialogue_rounds()
    jsonl = tmp_path / "results.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    summary = write_report(read_records(jsonl), tmp_path / "report", title="Hand records")

    out = tmp_path / "report"
    on_disk = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(summary))  # the returned dict is what the file holds
    assert on_disk["title"] == "Hand records" and on_disk["counts"] == {"n": 9, "n_errors": 1}
    assert summary["plots"] == PLOT_FILES
    for relative in PLOT_FILES.values():
        _assert_png(out / relative)
    assert not list(out.rglob("*.partial*"))  # atomic writes left no temporary files

    md = (out / "summary.md").read_text(encoding="utf-8")
    assert md.startswith("# Hand records\n")
    assert "9 samples, 1 failed." in md
    dice_mean = (1 + 0.2 + 0 + 0.8 + 0.9 + 0.6 + 0.9 + 0.2 + 0.6) / 9
    assert f"| Dice (mean per sample) | {dice_mean:.4f} | 9 |" in md
    ciou_all = (10 + 9 + 3 + 9 + 1 + 3) / (32 + 11 + 7 + 11 + 9 + 7)
    assert f"| cIoU (Σ intersection / Σ union) | {ciou_all:.4f} | 9 |" in md
    assert "| NSD @ 2 mm (mean) | 0.7500 | 1 |" in md
    assert "| liver | 2 | 0.6000 | 0.5556 | 0.2000 | 0.5000 | 0.4000 | – |" in md
    assert "## By round (true earlier masks fed)" in md and "## By round (own earlier masks fed)" in md
    assert "| 2 | 2 | 0.4000 | 0.2698 | 0.2500 |" in md  # predicted feed, round 2: gIoU (1/9 + 3/7) / 2
    assert "![dice_by_round](plots/dice_by_round.png)" in md


def test_plots_without_data_are_not_written(tmp_path):
    out = tmp_path / "report"
    write_report(_dialogue_rounds(), out)
    assert (out / PLOT_FILES["dice_by_round"]).is_file()
    # same folder, no rounds and no categories this time: those plots go (no stale files), the histogram stays
    summary = write_report([_record("a", dice=0.5, iou=1 / 3, intersection=1, union=3)], out)
    assert set(summary["plots"]) == {"score_distribution"}
    assert not (out / PLOT_FILES["dice_by_round"]).exists()
    assert not (out / PLOT_FILES["dice_by_category"]).exists()
    # reasoner-only records: nothing to plot at all, tables still written
    summary = write_report([{"sample": "r", "mode": "reasoner", "box_iou": 0.3, "latency_s": 0.1}], out)
    assert summary["plots"] == {} and not list((out / "plots").glob("*.png"))
    assert "| Box IoU (mean) | 0.3000 | 1 |" in (out / "summary.md").read_text(encoding="utf-8")


def test_report_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    summary = write_report(_single_questions(), tmp_path)
    assert summary["plots"] == {} and "medseg-reasoning[eval]" in summary["plots_skipped"]
    assert "matplotlib is not installed" in (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert not (tmp_path / "plots").exists()
