"""The reasoner's correction through the one round (``ask_round``), with a real replay reasoner: a mask that still
fails judgment after the re-ask is shown to the reasoner outlined on its worst slices, and its answer (a box
labelled ``erase``, or a box to add) goes through the refine step and is recorded in the round's judgment. An
accepted mask costs no such call."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from support.fakes import FakeSegmenter
from support.reasoning import blob_volume

from MedSegReasoning.dialogue import Session
from MedSegReasoning.dialogue.ask import NO_CORRECTION, ask_round, proposed_correction
from MedSegReasoning.reasoning import create_reasoner
from MedSegReasoning.reasoning.answer import Answer, Target
from MedSegReasoning.segmentation.base import Prediction, Prompt2D
from MedSegReasoning.volume.core import Volume
from MedSegReasoning.volume.windowing import default_window

K = 7  # the blob's largest slice
QUESTION = "Segment the bright blob."
LEAKING_BOX = [10, 10, 280, 200]
PROPOSAL = "The mask of 'blob' failed these checks"


def _blob(volume: Volume, k: int) -> np.ndarray:
    return volume.array[k] >= 200


def _good_box(volume: Volume) -> list[int]:
    jj, ii = np.nonzero(_blob(volume, K))
    return [int(ii.min()), int(jj.min()), int(ii.max()), int(jj.max())]


def _leaky(volume: Volume) -> FakeSegmenter:
    """The blob for exactly the good box; the whole slice for any other prompt (a runaway leak)."""
    good = tuple(float(v) for v in _good_box(volume))

    def answer(k: int, prompt: Prompt2D) -> Prediction:
        if prompt.box is not None and tuple(float(v) for v in prompt.box) == good:
            return Prediction(mask=_blob(volume, k), score=0.95)
        return Prediction(mask=np.ones(volume.shape[1:], dtype=bool), score=0.95)

    return FakeSegmenter(volume.array, answer, name="leaky")


class Recording:
    """Passes calls through to a reasoner and keeps each question with the slices its views showed."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.identity = inner.identity
        self.calls: list[tuple[str, str, list[int]]] = []

    def reason(self, views, question, context, on_text=None, cancel=None):
        self.calls.append((views.task, question, [t.slice for v in views.views for t in v.tiles]))
        return self.inner.reason(views, question, context, on_text, cancel)


def _line(step: str, targets: list[dict] | None, clarification: str | None = None) -> dict:
    raw = json.dumps({"reasoning": "r", "targets": targets or [], "clarification": clarification})
    return {"round": 1, "step": step, "raw": raw}


def _replay(path: Path, lines: list[dict]) -> Recording:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return Recording(create_reasoner(f"replay:{path}"))


def _located(box: list[int]) -> list[dict]:
    return [
        _line("pick_slice", [{"slice": K, "label": "blob"}]),
        _line("locate", [{"slice": K, "label": "blob", "bbox": box}]),
    ]


def test_a_refused_mask_is_shown_to_the_reasoner_and_its_erase_is_judged_and_recorded(tmp_path):
    volume = blob_volume()
    erase = [{"slice": K, "label": "erase", "bbox": [10, 10, 60, 60]}]
    lines = [*_located(LEAKING_BOX), *_located(LEAKING_BOX), _line("locate", erase)]
    reasoner = _replay(tmp_path / "answers.jsonl", lines)
    session = Session.for_volume(volume)
    asked = ask_round(
        session, volume, _leaky(volume), default_window(volume), QUESTION, reasoner=reasoner, propagate=False
    )
    proposals = [c for c in reasoner.calls if c[1].startswith(PROPOSAL)]
    assert len(proposals) == 1, [c[1][:60] for c in reasoner.calls]
    task, question, shown = proposals[0]
    assert task == "locate" and shown and "labelled 'erase'" in question
    last = asked.round.targets[0].judgments[-1]
    assert last.strategy == "reasoner correction"
    assert last.proposal["by"] == "reasoner" and last.proposal["kind"] == "erase"
    assert last.proposal["slices_shown"] == shown
    assert "applied" in last.proposal and "decided_by" in last.proposal
    assert len(asked.answers) == 3  # the plan, the re-ask, the proposal


def test_an_accepted_mask_asks_no_correction(tmp_path):
    volume = blob_volume()
    reasoner = _replay(tmp_path / "answers.jsonl", _located(_good_box(volume)))
    session = Session.for_volume(volume)
    asked = ask_round(
        session, volume, _leaky(volume), default_window(volume), QUESTION, reasoner=reasoner, propagate=False
    )
    assert asked.round.targets[0].status == "accepted"
    assert not [c for c in reasoner.calls if c[1].startswith(PROPOSAL)]
    assert all(j.proposal is None for j in asked.round.targets[0].judgments)


def _target(label: str, k: int, box=(1, 2, 3, 4)) -> Target:
    return Target(slice=k, box=box, label=label)


def test_the_answer_reads_as_add_erase_or_nothing():
    def answer(*targets: Target, clarification: str | None = None) -> Answer:
        return Answer(reasoning="", targets=targets, clarification=clarification, raw="")

    assert proposed_correction(answer(clarification=NO_CORRECTION), [3]) is None
    erase = proposed_correction(answer(_target("Erase", 3)), [3, 5])
    assert erase is not None and erase.erase and erase.prompt.k == 3
    add = proposed_correction(answer(_target("blob", 5)), [3, 5])
    assert add is not None and not add.erase and add.prompt.box == (1, 2, 3, 4)
    assert proposed_correction(answer(_target("blob", 9)), [3, 5]) is None  # not a slice it was shown
