"""benchmarks/train.py on CPU: ``--tiny --steps 2`` prints samples/s, peak memory and a reward curve that the real
LiteMedSAM mask reward produced, and ``--plan`` the memory arithmetic of the real 3B and 7B architectures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "train.py"

pytestmark = pytest.mark.slow


def _run(*args: str, timeout: int = 600) -> str:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_tiny_run_prints_speed_memory_and_a_real_reward_curve(tmp_path):
    out = _run("--tiny", "--steps", "2", "--forced", "--device", "cpu", "--json", str(tmp_path / "train.json"))
    samples_per_s = float(re.search(r"^samples/s: ([0-9.]+)", out, re.M).group(1))
    peak = float(re.search(r"^peak memory: ([0-9.]+) MiB", out, re.M).group(1))
    curve = [float(v) for v in re.search(r"^reward curve: (.+)$", out, re.M).group(1).split()]
    assert samples_per_s > 0 and peak > 100
    assert len(curve) == 2 and len(re.findall(r"^step \d+: ", out, re.M)) == 2
    # forced near-true boxes (shifted 0-9 px), scored by the real LiteMedSAM: format 0.8 (think + box, no points)
    # and mask Dice about 0.97 give about 0.88; a broken mask reward would give 0.4
    assert all(0.8 < v <= 1.0 for v in curve), curve
    figures = json.loads((tmp_path / "train.json").read_text())
    assert figures["measured_on_gpu"] is False and figures["reward_curve"] == pytest.approx(curve, abs=6e-4)
    assert figures["encoder_calls"] == 2, "each of the 2 images must be encoded once, whatever the completions"
    assert figures["decoder_calls"] == 2 + 2 * 2 * 4  # 2 up-front warm-ups + one per completion
    assert all(step["mask_dice_mean"] > 0.9 for step in figures["steps"])


def test_plan_prints_the_memory_arithmetic_of_the_published_architectures(tmp_path):
    out = _run("--plan", "--json", str(tmp_path / "plan.json"), timeout=300)
    plan = json.loads((tmp_path / "plan.json").read_text())["plan"]
    # the published sizes: Qwen2.5-VL-3B-Instruct 3.75 B parameters, -7B-Instruct 8.29 B
    assert plan["3b"]["parameters"] / 1e9 == pytest.approx(3.75, abs=0.01)
    assert plan["7b"]["parameters"] / 1e9 == pytest.approx(8.29, abs=0.01)
    assert plan["3b"]["weights_bf16"] == pytest.approx(plan["3b"]["parameters"] * 2 / 2**30)
    assert plan["3b"]["lora_parameters"] == 16 * 36 * (2 * 2048 + 2 * (2048 + 256) + 2 * 2048 + 3 * (2048 + 11008))
    assert "LoRA step total" in out and "Qwen2.5-VL-7B" in out
