"""``eval --mode interactive``: the simulated user of the CVPR 2025 interactive 3D challenge on two small real cases
(a crop of the shared CT through the spleen, the MNI152 left caudate nucleus at 4 mm) with the real LiteMedSAM, run
once through the CLI; and the usage errors of the mode, which need no model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedSegReasoning.cli import main

CORRECTIONS = 3
SPLEEN = "ct-spleen-crop/spleen"
CAUDATE = "mni-caudate-crop/left caudate nucleus"


@pytest.fixture(scope="module")
def interactive_run(small_volume_cases, litemedsam, tmp_path_factory):
    """``eval DATASET --mode interactive --corrections 3`` over both cases, with the session's LiteMedSAM: its
    records, summary, run.json, summary.md and what it printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("interactive") / "out"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        from MedSegReasoning.segmentation.cache import EmbeddingCache

        mp.setattr("MedSegReasoning.segmentation.factory.create_segmenter", lambda spec, **kw: litemedsam)
        mp.setattr(litemedsam, "cache", EmbeddingCache())  # encoder calls counted from empty, whatever ran before
        argv = ["eval", str(small_volume_cases), "--mode", "interactive", "--corrections", str(CORRECTIONS)]
        code = main([*argv, "--out", str(out), "--no-progress"])
    assert code == 0, printed.getvalue()
    records = {r["sample"]: r for r in map(json.loads, (out / "samples.jsonl").read_text().splitlines())}
    return {
        "records": records,
        "summary": json.loads((out / "summary.json").read_text()),
        "run": json.loads((out / "run.json").read_text()),
        "markdown": (out / "summary.md").read_text(),
        "printed": printed.getvalue(),
    }


def _trapezoid(values: list[float]) -> float:
    return sum((a + b) / 2.0 for a, b in zip(values, values[1:], strict=False))


@pytest.mark.slow
def test_each_structure_is_scored_after_every_interaction(interactive_run):
    records = interactive_run["records"]
    assert set(records) == {SPLEEN, CAUDATE}
    for r in records.values():
        assert (r["mode"], r["dimension"], r["error"], r["feed"]) == ("interactive", 3, None, None), r["error"]
        kinds = [i["kind"] for i in r["interactions"]]
        assert kinds[0] == "box" and set(kinds[1:]) <= {"add", "erase"}
        assert r["corrections_made"] == len(kinds) - 1 <= CORRECTIONS
        # the record scores the final mask like every mode; the curve's ends are the same numbers
        assert r["dice"] == pytest.approx(r["final_dice"]) and r["nsd"] == pytest.approx(r["final_nsd"])
        assert r["dice_curve"][0] == pytest.approx(r["initial_dice"]) and r["dice_curve"][-1] == r["final_dice"]
        assert len(r["dice_curve"]) == len(r["nsd_curve"]) == CORRECTIONS + 1
        assert r["dsc_auc"] == pytest.approx(_trapezoid(r["dice_curve"]))
        assert r["nsd_auc"] == pytest.approx(_trapezoid(r["nsd_curve"]))
        assert r["encoder_calls"] == sum(i["encoder_calls"] for i in r["interactions"]) > 0
        assert r["intersection"] <= r["union"] and r["latency_s"] > 0
        assert 0.0 < r["key_slice_dice"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("sample", [SPLEEN, CAUDATE])
def test_corrections_raise_dice(interactive_run, sample):
    r = interactive_run["records"][sample]
    assert r["corrections_made"] >= 1, "the first box left nothing to correct: the case cannot test corrections"
    assert r["final_dice"] > r["initial_dice"], r["dice_curve"]
    # a user whose corrections changed nothing keeps the first Dice: an area of CORRECTIONS x initial Dice
    assert r["dsc_auc"] > CORRECTIONS * r["initial_dice"], r["dice_curve"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "sample",
    [
        SPLEEN,
        CAUDATE,
    ],
)
def test_no_correction_lowers_dice(interactive_run, sample):
    curve = interactive_run["records"][sample]["dice_curve"]
    assert all(after >= before for before, after in zip(curve, curve[1:], strict=False)), curve


@pytest.mark.slow
def test_the_report_gives_means_and_one_row_per_structure(interactive_run):
    records, summary = interactive_run["records"], interactive_run["summary"]
    block = summary["interactive"]
    for key in ("initial_dice", "final_dice", "dsc_auc", "nsd_auc", "encoder_calls", "latency_s"):
        assert block["overall"][key] == pytest.approx(np.mean([r[key] for r in records.values()])), key
    assert block["overall"]["n"] == 2 and [s["sample"] for s in block["structures"]] == list(records)
    curves = {s: r["dice_curve"] for s, r in records.items()}
    lowered = [s for s, c in curves.items() if any(b < a - 1e-9 for a, b in zip(c, c[1:], strict=False))]
    assert block["lowered_by_a_correction"] == lowered
    assert summary["overall"]["dice"]["mean"] == pytest.approx(block["overall"]["final_dice"])
    markdown = interactive_run["markdown"]
    assert "## Interactive" in markdown and "DSC_AUC" in markdown
    assert all(sample in markdown for sample in records)
    assert interactive_run["run"]["mode"] == "interactive" and interactive_run["run"]["corrections"] == CORRECTIONS
    assert interactive_run["run"]["reasoner"] is None
    assert "interactive: Dice" in interactive_run["printed"]


# --- usage errors (no model loads) -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mode", "interactive", "--no-propagate"], "drop --no-propagate"),
        (["--mode", "interactive", "--corrections", "-1"], "--corrections must be 0 or more"),
        (["--mode", "oracle", "--corrections", "2"], "--corrections is for --mode interactive"),
    ],
)
def test_interactive_usage_errors_exit_2_with_a_sentence(tmp_path, extra, message, capsys):
    from support.eval_data import write_folder

    dataset = write_folder(tmp_path / "ds", dialogue=False)
    assert main(["eval", str(dataset), *extra, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_resume_refuses_another_correction_budget(tmp_path, capsys):
    """A resumed interactive run must place as many corrections as the run it continues (checked before any model)."""
    from support.eval_data import write_folder

    dataset = write_folder(tmp_path / "ds", dialogue=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "samples.jsonl").write_text("")
    run = {"dataset": str(dataset.resolve()), "layout": "folder", "mode": "interactive", "segmenter": "litemedsam"}
    (out / "run.json").write_text(json.dumps({**run, "reasoner": None, "corrections": 3}))
    argv = ["eval", str(dataset), "--mode", "interactive", "--corrections", "2", "--out", str(out), "--resume"]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "continues another evaluation (corrections 3 -> 2)" in err and "Traceback" not in err
