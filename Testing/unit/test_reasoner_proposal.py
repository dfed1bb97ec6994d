"""The reasoner's correction through the one round (``ask_round``), with a real replay reasoner: a mask that still
fails judgment after the re-ask is shown to the reasoner outlined on its worst slices, and its answer (a box
labelled ``erase``, or a box to add) goes through the refine step and is recorded in the round's judgment. An
accepted mask costs no such call."""

from __future__ import annotations

import json
from pathlib import Path

from support.blob import LEAKING_BOX, QUESTION, K, Recording, good_box, leaks_unless_good_box
from support.reasoning import blob_volume

from MedSegReasoning.dialogue import Session
from MedSegReasoning.dialogue.ask import NO_CORRECTION, ask_round, proposed_correction
from MedSegReasoning.reasoning import create_reasoner
from MedSegReasoning.reasoning.answer import Answer, Target
from MedSegReasoning.volume.windowing import default_window

PROPOSAL = "The mask of 'blob' failed these checks"


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
        session,
        volume,
        leaks_unless_good_box(volume),
        default_window(volume),
        QUESTION,
        reasoner=reasoner,
        propagate=False,
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
    reasoner = _replay(tmp_path / "answers.jsonl", _located(good_box(volume)))
    session = Session.for_volume(volume)
    asked = ask_round(
        session,
        volume,
        leaks_unless_good_box(volume),
        default_window(volume),
        QUESTION,
        reasoner=reasoner,
        propagate=False,
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
