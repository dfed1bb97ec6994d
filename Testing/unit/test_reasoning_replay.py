"""The replay reasoner and ``run_reasoning`` end to end: recorded answers -> VoxelPrompts (and masks on the real CT)."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from support.reasoning import blob_volume

from MedSegReasoning.pipeline import VoxelPrompt
from MedSegReasoning.reasoning import (
    CurrentView,
    ReasonerOutputError,
    ReasoningCancelled,
    ReasoningContext,
    ReasoningStrategy,
    create_reasoner,
    run_reasoning,
)
from MedSegReasoning.wire.errors import InputError

PICK = '{"reasoning": "The blob is largest on slice 7.", "targets": [{"slice": 7, "label": "blob", "ref": null}], "clarification": null}'
LOCATE = (
    '{"reasoning": "Bright and round.", "targets": [{"slice": 7, "bbox": [75, 54, 150, 108], "points": [[112, 81]], '
    '"negative_points": [[20, 20]], "label": "blob", "ref": null}], "clarification": null}'
)


def write_replay(path: Path, *lines: dict) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_replay_end_to_end_gives_voxel_prompts(tmp_path):
    replay = write_replay(tmp_path / "answers.jsonl", {"raw": PICK}, {"raw": LOCATE})
    reasoner = create_reasoner(f"replay:{replay}")
    assert (reasoner.identity.backend, reasoner.identity.convention) == ("replay", "pixels")
    streamed: list[str] = []
    answer = run_reasoning(blob_volume(), reasoner, "segment the bright blob", on_text=streamed.append)
    assert answer.voxel_prompts() == [
        VoxelPrompt(k=7, box=(75, 54, 150, 108), points=((112, 81), (20, 20)), labels=(1, 0))
    ]
    assert answer.targets[0].label == "blob"
    assert [s.step for s in answer.steps] == ["pick_slice", "locate"]
    assert "".join(streamed) == PICK + "\n\n" + LOCATE
    assert answer.reasoning == "The blob is largest on slice 7.\n\nBright and round."
    assert answer.to_dict()["targets"][0]["box"] == [75, 54, 150, 108]


def test_replay_in_another_convention_goes_through_the_same_conversion(tmp_path):
    grid_answer = LOCATE.replace("[75, 54, 150, 108]", "[250, 250, 500, 500]").replace("[[112, 81]]", "[[375, 375]]")
    replay = write_replay(
        tmp_path / "a.jsonl", {"meta": {"convention": "qwen3-vl"}}, {"raw": PICK}, {"raw": grid_answer}
    )
    strategy = ReasoningStrategy(pad_to_multiple=0)  # the grid spans the 300x217 view exactly
    answer = run_reasoning(blob_volume(), create_reasoner(f"replay:{replay}"), "segment the bright blob", strategy)
    assert answer.targets[0].box == (75, 54, 150, 108)
    assert answer.targets[0].points[0] == (112, 81)


def test_rounds_are_matched_by_number(tmp_path):
    replay = write_replay(
        tmp_path / "rounds.jsonl",
        {"round": 2, "step": "locate", "raw": LOCATE.replace("blob", "second")},
        {"round": 1, "step": "pick_slice", "raw": PICK},
        {"round": 1, "step": "locate", "raw": LOCATE},
    )
    reasoner = create_reasoner(f"replay:{replay}")
    volume = blob_volume()
    first = run_reasoning(volume, reasoner, "segment the blob", context=ReasoningContext(round=1))
    assert first.targets[0].label == "blob"
    second = run_reasoning(
        volume,
        reasoner,
        "and on this slice?",
        context=ReasoningContext(round=2),
        current_view=CurrentView("axial", 7),
    )
    assert second.targets[0].label == "second" and len(second.steps) == 1


def test_too_few_lines_is_a_clear_error(tmp_path):
    replay = write_replay(tmp_path / "short.jsonl", {"raw": PICK})
    with pytest.raises(InputError) as info:
        run_reasoning(blob_volume(), create_reasoner(f"replay:{replay}"), "segment the blob")
    message = str(info.value)
    assert "has no answer left" in message and "holds 1" in message and "call 2" in message
    assert info.value.exit_code == 2


def test_replayed_step_must_match_the_call(tmp_path):
    replay = write_replay(tmp_path / "steps.jsonl", {"step": "locate", "raw": LOCATE})
    with pytest.raises(InputError, match="answers a 'locate' call, but the reasoner was asked for 'pick_slice'"):
        run_reasoning(blob_volume(), create_reasoner(f"replay:{replay}"), "segment the blob")


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("", "holds no answers"),
        ("not json\n", "line 1 of the replay file"),
        ('{"text": "x"}\n', 'has no "raw" answer text'),
        ('{"round": 1, "raw": "a"}\n{"raw": "b"}\n', "on some lines only"),
        ('{"round": "one", "raw": "a"}\n', "must be a whole number"),
    ],
)
def test_broken_replay_files(tmp_path, content, detail):
    path = tmp_path / "broken.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=detail):
        create_reasoner(f"replay:{path}")


def test_missing_replay_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        create_reasoner(f"replay:{tmp_path / 'none.jsonl'}")


def test_replayed_garbage_fails_like_live_garbage(tmp_path):
    replay = write_replay(tmp_path / "g.jsonl", {"raw": "I am not sure."})
    with pytest.raises(ReasonerOutputError, match="contains no JSON"):
        run_reasoning(blob_volume(), create_reasoner(f"replay:{replay}"), "segment the blob")


def test_clarification_ends_the_round_without_targets(tmp_path):
    ask = '{"reasoning": "Two candidates.", "targets": [], "clarification": "The left or the right kidney?"}'
    replay = write_replay(tmp_path / "c.jsonl", {"raw": ask})
    answer = run_reasoning(blob_volume(), create_reasoner(f"replay:{replay}"), "segment the kidney")
    assert answer.clarification == "The left or the right kidney?" and answer.targets == ()
    assert answer.voxel_prompts() == []


def test_without_refinement_the_montage_box_is_used(tmp_path):
    replay_only_slice = write_replay(tmp_path / "s.jsonl", {"raw": PICK})
    strategy = ReasoningStrategy(refine=False, montage_slices=4, tile_size=128)
    with pytest.raises(ReasonerOutputError, match="only a slice number, but refining is off"):
        run_reasoning(blob_volume(), create_reasoner(f"replay:{replay_only_slice}"), "blob", strategy)
    # on the montage (4 tiles of 128x93, 2 per row, 4 px gutters) slice 7 is the third tile: x 0..128, y 97..190
    box_on_tile = '{"targets": [{"bbox": [32, 120, 64, 140], "label": "blob"}]}'
    replay = write_replay(tmp_path / "b.jsonl", {"raw": box_on_tile})
    answer = run_reasoning(blob_volume(), create_reasoner(f"replay:{replay}"), "blob", strategy)
    (target,) = answer.targets
    assert target.slice == 7 and len(answer.steps) == 1
    assert target.box == (75, 53, 152, 102)


def test_more_key_slices_than_allowed_are_noted_not_silently_dropped(tmp_path):
    pick = '{"targets": [{"slice": 7, "label": "a"}, {"slice": 3, "label": "b"}, {"slice": 9, "label": "c"}]}'
    replay = write_replay(tmp_path / "m.jsonl", {"raw": pick}, {"raw": LOCATE})
    answer = run_reasoning(
        blob_volume(), create_reasoner(f"replay:{replay}"), "segment all", ReasoningStrategy(max_key_slices=1)
    )
    assert len(answer.targets) == 1
    assert "slice 3 (b) was not refined" in answer.reasoning and "slice 9 (c) was not refined" in answer.reasoning


def test_cancel_is_honoured_between_steps(tmp_path):
    replay = write_replay(tmp_path / "x.jsonl", {"raw": PICK}, {"raw": LOCATE})
    cancel = threading.Event()

    def on_text(chunk: str) -> None:
        cancel.set()

    with pytest.raises(ReasoningCancelled):
        run_reasoning(blob_volume(), create_reasoner(f"replay:{replay}"), "blob", on_text=on_text, cancel=cancel)


def test_recorded_answers_replay_identically(tmp_path):
    source = write_replay(
        tmp_path / "src.jsonl",
        {"meta": {"convention": "qwen3-vl"}},
        {"raw": PICK},
        {"raw": LOCATE.replace("[75, 54, 150, 108]", "[250, 250, 500, 500]")},
    )
    live = create_reasoner(f"replay:{source}")
    record = tmp_path / "record.jsonl"
    live.record_to(record)
    first = run_reasoning(blob_volume(), live, "segment the blob")
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert lines[0]["meta"]["convention"] == "qwen3-vl"
    assert [line.get("step") for line in lines[1:]] == ["pick_slice", "locate"]
    again = run_reasoning(blob_volume(), create_reasoner(f"replay:{record}"), "segment the blob")
    assert again.targets == first.targets


def test_unknown_spec_lists_the_valid_forms():
    with pytest.raises(InputError) as info:
        create_reasoner("llava:/models/x")
    assert "hf:<model folder or Hugging Face id>" in str(info.value)
    assert "openai:<base-url>#<model>" in str(info.value) and "replay:<answers.jsonl>" in str(info.value)
    with pytest.raises(InputError, match="do not apply to replay"):
        create_reasoner("replay:x.jsonl", temperature=0.5)


def test_importing_reasoning_and_replaying_never_imports_torch(tmp_path):
    import subprocess

    replay = write_replay(tmp_path / "a.jsonl", {"raw": PICK}, {"raw": LOCATE})
    code = (
        "import sys; sys.path.insert(0, 'Testing')\n"
        "import MedSegReasoning.reasoning as r\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import at package import'\n"
        "from support.reasoning import blob_volume\n"
        f"a = r.run_reasoning(blob_volume(), r.create_reasoner('replay:{replay}'), 'blob')\n"
        "assert a.targets[0].box == (75, 54, 150, 108)\n"
        "heavy = [m for m in ('torch', 'transformers', 'httpx', 'huggingface_hub') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_replay_with_real_litemedsam_on_the_real_ct(shared_ct, litemedsam, tmp_path):
    """Issue 3's end-to-end check: recorded answers -> run_reasoning -> VoxelPrompt -> LiteMedSAM on a real series."""
    from support.ct_reference import reference_on_ct_grid

    from MedSegReasoning.pipeline import segment_target
    from MedSegReasoning.volume.loader import load_volume
    from MedSegReasoning.volume.windowing import default_window

    volume = load_volume(shared_ct / "dicom")
    liver = reference_on_ct_grid(shared_ct, volume, "liver")
    k = int(np.argmax(liver.sum(axis=(1, 2))))
    js, is_ = np.nonzero(liver[k])
    box = [int(is_.min()), int(js.min()), int(is_.max()), int(js.max())]
    # Recorded in Qwen2.5-VL's convention, as a live model would answer: pixels of the slice view, which the default
    # strategy pads from 512 to 532 (a multiple of 28), so the model sees it unresized and pixels are voxels
    model_box = box
    replay = write_replay(
        tmp_path / "liver.jsonl",
        {"meta": {"convention": "qwen2.5-vl"}},
        {
            "raw": json.dumps(
                {
                    "reasoning": "Jaundice: look at the liver.",
                    "targets": [{"slice": k, "label": "liver", "ref": None}],
                    "clarification": None,
                }
            )
        },
        {
            "raw": "<think>The liver is the large organ on the left of the image.</think>"
            + json.dumps({"targets": [{"bbox": model_box, "label": "liver"}]})
        },
    )
    window = default_window(volume)
    answer = run_reasoning(
        volume, create_reasoner(f"replay:{replay}"), "which organ is affected in jaundice?", window=window
    )
    (prompt,) = answer.voxel_prompts()
    assert prompt.k == k
    assert prompt.box == tuple(box)
    result = segment_target(volume, litemedsam, window, prompt, label="liver", propagate_3d=False)
    mask = result.mask[k]
    dice = 2 * (mask & liver[k]).sum() / (mask.sum() + liver[k].sum())
    assert dice > 0.9, dice
