"""benchmarks/run.py: one real (quick) benchmark run in a child process, and the results file it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "benchmarks" / "run.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_dialogue_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """``run.py --quick --only dialogue`` (the cheapest: synthetic masks, no model) into a temp folder."""
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--only", "dialogue", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, out


def test_quick_run_writes_machine_and_figures_with_ratios(quick_dialogue_run):
    proc, out = quick_dialogue_run
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    machine = results["machine"]
    for key in ("cpu", "cores_logical", "ram_gb", "os", "python", "git_commit", "date_utc"):
        assert machine[key], key
    assert {"torch", "onnxruntime", "numpy"} <= set(machine["versions"])
    assert results["quick"] is True and list(results["benchmarks"]) == ["dialogue"]
    assert results["benchmarks"]["dialogue"]["status"] == "ok"

    figures = results["figures"]
    assert figures and all(f["benchmark"] == "dialogue" for f in figures)
    save = next(f for f in figures if f["name"].startswith("save after round 10"))
    assert save["unit"] == "ms" and save["value"] > 0 and save["baseline_value"] > 0
    assert save["ratio"] == pytest.approx(save["value"] / save["baseline_value"])
    assert save["goal"] == "<= 50 ms" and save["passed"] == (save["value"] <= 50)
    # every figure with a baseline has its ratio
    assert all(f["ratio"] is not None for f in figures if f["baseline_value"])


def test_the_table_is_printed_and_written_beside_the_json(quick_dialogue_run):
    proc, out = quick_dialogue_run
    table = out.with_suffix(".md").read_text()
    assert "| benchmark | figure | value | unit | baseline (same run) | ratio | goal | pass |" in table
    assert "save after round 10" in table and "save after round 10" in proc.stdout
    assert not list(out.parent.glob("*.tmp")), "the atomic write left a temp file behind"


def test_unknown_benchmark_is_refused_with_the_list(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(RUN), "--only", "dialogue,segmentor", "--out", str(tmp_path / "r.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "segmentor" in proc.stderr and "segmenter" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r.json").exists()


def test_every_benchmark_script_is_registered_and_takes_json_path():
    """run.py knows all eight scripts, and each accepts the ``--json PATH`` that run.py passes it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import run

    assert set(run.BENCHMARKS) == {
        "segmenter",
        "propagation",
        "reasoner",
        "dialogue",
        "export",
        "server",
        "volumes",
        "cold_start",
    }
    for bench in run.BENCHMARKS.values():
        text = (ROOT / "benchmarks" / bench.script).read_text()
        assert '"--json"' in text, f"{bench.script} takes no --json PATH"


def test_cold_start_figures_keep_the_scripts_goals_and_ratios():
    """``cold_start.py`` writes its figures already against one encoder call; run.py keeps their ratio and judges
    the goal it names (a cold start of 2.1x fails the issue's 1.5x, encoding ahead at 0.14x passes its 0.2x)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import run

    common = {"unit": "s", "baseline": "one encoder call (same run)", "baseline_value": 0.55}
    figures = run.cold_start_figures(
        {
            "figures": [
                {"name": "launch", "value": 1.17, "ratio": 2.1, "goal": ["ratio", "<=", 1.5], **common},
                {"name": "ahead", "value": 0.077, "ratio": 0.14, "goal": ["ratio", "<=", 0.2], **common},
                {"name": "no ahead", "value": 0.59, "ratio": 1.1, "goal": None, **common},
            ]
        }
    )
    assert [(f.name, f.ratio, f.passed) for f in figures] == [
        ("launch", 2.1, False),
        ("ahead", 0.14, True),
        ("no ahead", 1.1, None),
    ]
