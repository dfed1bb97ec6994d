"""What the CLI says, word for word where the wording was wrong: help epilogs as lists, why propagation stopped,
and the demo's closing lines (what to look at, what to try next)."""

from __future__ import annotations

from pathlib import Path

import pytest

from MedSegReasoning.cli import main
from MedSegReasoning.console import demo_next_steps
from MedSegReasoning.output import print_summary


@pytest.mark.parametrize("command", ["sample", "ask", "demo", "eval"])
def test_help_lists_the_exit_codes_one_per_line(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    after = text[text.index("exit codes:") :].splitlines()
    assert after[1].split()[0] == "0" and after[2].split()[0] == "2" and after[3].split()[0] == "3"


def _result(stopped: dict) -> dict:
    target = {
        "label": "liver",
        "voxels": 10,
        "volume_ml": 1.0,
        "slice_range": [3, 9],
        "key_slice": 5,
        "score": 0.9,
        "propagation": {"stopped": stopped},
    }
    return {"targets": [target], "outputs": {"mask": "mask.nii.gz", "seg": None}, "warnings": []}


def test_why_propagation_stopped_reads_as_a_sentence(capsys):
    print_summary(
        _result({"up": "reached the end of the volume", "down": "slice 2: the structure ended (0 pixels)"}), Path("o")
    )
    out = capsys.readouterr().out
    assert "propagation up stopped: reached the end of the volume" in out
    assert "propagation down stopped at slice 2: the structure ended (0 pixels)" in out
    assert "stopped at reached" not in out


def test_the_demo_ends_with_what_to_look_at_and_what_to_try():
    text = demo_next_steps(
        "medseg-reasoning", Path("medseg-sample/dicom"), Path("medseg-out/demo"), _result({}), "1,2,3,4,5"
    )
    assert "what to look at:" in text and str(Path("medseg-out/demo/mask.nii.gz")) in text
    assert "what to try next" in text and "docs/walkthrough.md" in text
    assert "ask medseg-sample/dicom --box 1,2,3,4,5 --no-propagate" in text and "--session" in text
    assert "export medseg-session --format" in text
