"""Correction by asking the reasoner again: a mask that fails judgment sends the reasons back to the reasoner.

The segmenter here leaks (fills the whole slice) for every prompt except one box, so the segmenter's own
re-prompts (tighter box, negative points) cannot fix it: only the reasoner's second answer can.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from support.blob import Recording
from support.fakes import FakeSegmenter
from support.reasoning import blob_volume

from MedSegReasoning.dialogue import Session, run_round
from MedSegReasoning.dialogue.ask import ask_reasoner_again, correction_question, reasoner_planner
from MedSegReasoning.reasoning import create_reasoner
from MedSegReasoning.segmentation.base import Prediction, Prompt2D
from MedSegReasoning.volume.windowing import default_window

K = 7
QUESTION = "Segment the bright blob."


def blob_on(volume, k: int) -> np.ndarray:
    return volume.array[k] >= 200


def box_of(mask: np.ndarray) -> list[int]:
    jj, ii = np.nonzero(mask)
    return [int(ii.min()), int(jj.min()), int(ii.max()), int(jj.max())]


def leaks_unless_good_box(volume, good: list[int]) -> FakeSegmenter:
    """The blob for exactly ``good`` (i0, j0, i1, j1); the whole slice for any other prompt (a runaway leak)."""
    exact = tuple(float(v) for v in good)

    def answer(k: int, prompt: Prompt2D) -> Prediction:
        if prompt.box is not None and tuple(prompt.box) == exact:
            return Prediction(mask=blob_on(volume, k), score=0.95)
        return Prediction(mask=np.ones(volume.shape[1:], dtype=bool), score=0.95)

    return FakeSegmenter(volume.array, answer, name="leaky")


def answer(box: list[int] | None, reasoning: str) -> str:
    target = {"slice": K, "label": "blob", "ref": None}
    if box is not None:
        target["bbox"] = box
    return json.dumps({"reasoning": reasoning, "targets": [target], "clarification": None})


def replay_file(path: Path, *boxes: list[int]) -> Path:
    """Round 1: per reasoner run, a key-slice pick and a box on it (view pixels = voxel i, j on the refine view)."""
    lines = []
    for box in boxes:
        lines.append({"round": 1, "step": "pick_slice", "raw": answer(None, "Largest on slice 7.")})
        lines.append({"round": 1, "step": "locate", "raw": answer(box, "Bright and round.")})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def run(tmp_path: Path, *boxes: list[int]):
    volume = blob_volume()
    window = default_window(volume)
    good = box_of(blob_on(volume, K))
    reasoner = Recording(create_reasoner(f"replay:{replay_file(tmp_path / 'a.jsonl', *boxes)}"))
    session = Session.for_volume(volume)
    answers: list = []
    rnd = run_round(
        session,
        volume,
        leaks_unless_good_box(volume, good),
        window,
        QUESTION,
        reasoner_planner(volume, window, reasoner, session, propagate=False),
        ask_again=ask_reasoner_again(volume, window, reasoner, session, QUESTION, answers=answers),
    )
    return volume, session, rnd, reasoner, answers


def test_a_leaking_first_box_is_corrected_by_the_reasoners_second_answer(tmp_path):
    volume = blob_volume()
    good = box_of(blob_on(volume, K))
    volume, session, rnd, reasoner, answers = run(tmp_path, [10, 10, 280, 200], good)

    record = rnd.targets[0]
    assert record.status == "accepted" and record.entity_id == "E1"
    first, last = record.judgments[0], record.judgments[-1]
    assert not first.accepted and any(c.name == "extent" and c.failed for c in first.checks)
    assert last.accepted and last.strategy == "asked the reasoner again"
    assert last.prompt["box"] == good
    mask = session.dense_mask("E1")
    assert np.array_equal(mask[K], blob_on(volume, K)) and mask.sum() == blob_on(volume, K).sum()
    assert not session.entities["E1"].uncertain
    # the re-ask carried the reasons, and its answer is kept with the round's answers
    assert reasoner.questions[0] == QUESTION
    assert (
        reasoner.questions[-1].startswith(QUESTION)
        and "Your previous box for 'blob' was rejected:" in (reasoner.questions[-1])
    )
    assert len(answers) == 1 and answers[0].targets[0].box == tuple(good)


def test_a_reasoner_with_nothing_more_to_say_keeps_the_best_attempt_as_uncertain(tmp_path):
    _, session, rnd, _, _ = run(tmp_path, [10, 10, 280, 200])  # the replay holds no second answer
    record = rnd.targets[0]
    assert record.status == "uncertain" and session.entities[record.entity_id].uncertain
    assert all(j.strategy != "asked the reasoner again" for j in record.judgments)


def test_the_session_records_the_models_and_a_non_dicom_volume_has_no_uids(tmp_path):
    from MedSegReasoning.dialogue import load_session

    volume = blob_volume()
    window = default_window(volume)
    good = box_of(blob_on(volume, K))
    reasoner = create_reasoner(f"replay:{replay_file(tmp_path / 'a.jsonl', good)}")
    session = Session.for_volume(volume, folder=tmp_path / "s")
    segmenter = leaks_unless_good_box(volume, good)
    run_round(
        session,
        volume,
        segmenter,
        window,
        QUESTION,
        reasoner_planner(volume, window, reasoner, session, propagate=False),
        reasoner_identity=reasoner.identity.to_dict(),
    )
    loaded = load_session(tmp_path / "s")
    assert loaded == session
    assert loaded.models == {"segmenter": {"name": "leaky", "weights": "none", "sha256": "0" * 64, "extra": {}},
                             "reasoner": reasoner.identity.to_dict()}  # fmt: skip
    assert loaded.rounds[0].models == loaded.models
    saved = json.loads((tmp_path / "s" / "session.json").read_text())
    assert saved["volume"]["dicom"] is None and saved["models"] == loaded.models


def test_correction_question_names_the_target_and_the_reasons():
    text = correction_question("Segment the liver.", "liver", ["extent: fills 98% of slice 7", "score 0.2"])
    assert text == (
        "Segment the liver.\nYour previous box for 'liver' was rejected: extent: fills 98% of slice 7; score 0.2. "
        "Give a corrected box."
    )
