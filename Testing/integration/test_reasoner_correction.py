"""The reasoner proposes corrections during judgment (issue 13, section 3): it is shown the mask's outline on the
worst slices, its box or erase goes through the user's refine step, and the round records whether it did so and
whether the mask improved. A scripted reasoner (deterministic) and the real LiteMedSAM, on the real 6-slice CT crop
through the spleen."""

from __future__ import annotations

import numpy as np
import pytest

from MedSegReasoning.correction import Correction
from MedSegReasoning.dialogue import RoundPlan, Session, TargetSpec, load_session, run_round
from MedSegReasoning.dialogue.reasoner_correction import STRATEGY, worst_slices
from MedSegReasoning.pipeline import VoxelPrompt
from MedSegReasoning.wire.masks import CompactMask

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spleen(small_volume_cases):
    from MedSegReasoning.evaluation.layouts import read_folder
    from MedSegReasoning.volume import default_window

    unit = next(u for u in read_folder(small_volume_cases) if "spleen" in u.id)
    case = unit.load()
    return case.volume, default_window(case.volume), case.turns[0].truth


class ScriptedReasoner:
    """``run_round``'s ``ask_again`` hook with ``propose_correction``: never re-prompts; proposes what ``script``
    returns for the views it is shown (and remembers them)."""

    def __init__(self, script):
        self.script = script
        self.shown: list = []

    def __call__(self, target, reasons):
        return None

    def propose_correction(self, target, views, reasons):
        self.shown.append(views)
        return self.script(views)


def _round(spleen, tmp_path, reasoner, prompt=None):
    from MedSegReasoning.evaluation.runner import truth_prompt

    volume, window, truth = spleen
    session = Session.for_volume(volume, folder=tmp_path / "s")
    prompt = prompt or truth_prompt(truth)
    return session, run_round(
        session,
        volume,
        _litemedsam(),
        window,
        "segment the spleen",
        RoundPlan(targets=(TargetSpec("spleen", prompt),)),
        ask_again=reasoner,
    )


_MODEL = []


def _litemedsam():
    return _MODEL[0]


@pytest.fixture(autouse=True)
def _model(litemedsam):
    _MODEL[:] = [litemedsam]


def _dice(a, b):
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_the_worst_slices_are_where_the_area_jumps():
    mask = np.zeros((10, 20, 20), dtype=bool)
    mask[2:8, 5:15, 5:15] = True
    mask[5, 0:20, 0:20] = True  # a leak on slice 5
    assert worst_slices(CompactMask.from_dense(mask), 1) == [5]
    assert worst_slices(CompactMask.from_dense(mask), 3) == [4, 5, 6]  # the leak and the slices around it
    mask[5] = mask[4]
    assert worst_slices(CompactMask.from_dense(mask), 2) == [2, 7]  # no leak: the ends, where the area drops


def test_a_proposal_that_makes_the_mask_worse_is_rejected_and_recorded(spleen, tmp_path):
    volume, _, truth = spleen

    from MedSegReasoning.evaluation.runner import truth_prompt

    def erase_everything(views):  # the whole key slice erased, and what grew from it: judgment says "empty"
        k = truth_prompt(truth).k
        return Correction(VoxelPrompt(k=k, box=(0, 0, volume.shape[2] - 1, volume.shape[1] - 1)), erase=True)

    reasoner = ScriptedReasoner(erase_everything)
    session, rnd = _round(spleen, tmp_path, reasoner)
    (record,) = rnd.targets
    (views,) = reasoner.shown
    assert 1 <= len(views) <= 3 and all(v.view.image.ndim == 3 for v in views)
    painted = [(v.view.image == np.array([255, 255, 0], dtype=np.uint8)).all(axis=2).sum() for v in views]
    assert all(n > 0 for n, v in zip(painted, views, strict=True) if v.pixels), "the outline is drawn"
    last = record.judgments[-1]
    assert last.strategy == STRATEGY and last.proposal is not None
    assert last.proposal["by"] == "reasoner" and last.proposal["kind"] == "erase"
    assert last.proposal["applied"] is False and last.proposal["improved"] is False
    assert last.proposal["decided_by"] == "judgment checks"
    assert not last.accepted  # the erased mask failed its checks
    kept = session.dense_mask(record.entity_id)
    assert kept.any() and _dice(kept, truth) > 0.8, "the mask before the proposal was kept"
    assert load_session(tmp_path / "s").rounds[0].targets[0].judgments[-1].proposal == last.proposal


def test_a_proposal_that_fixes_a_bad_slice_is_applied_and_recorded(spleen, tmp_path):
    volume, _, truth = spleen

    def reference_box_on_the_worst_slice(views):
        # the scripted reasoner knows the answer: the reference box on the shown slice the mask gets most wrong
        def error(v):
            return int((truth[v.k] ^ session_mask[v.k]).sum()) if truth[v.k].any() else -1

        worst = max(views, key=error)
        jj, ii = np.nonzero(truth[worst.k])
        return Correction(VoxelPrompt(k=worst.k, box=(int(ii.min()), int(jj.min()), int(ii.max()), int(jj.max()))))

    # a first box that misses half the spleen on its key slice: a poor mask the reference box improves
    from MedSegReasoning.evaluation.runner import truth_prompt

    good = truth_prompt(truth)
    i0, j0, i1, j1 = good.box
    poor = VoxelPrompt(k=good.k, box=(i0, j0, (i0 + i1) // 2, j1))
    first_session, first = _round(spleen, tmp_path / "without", ScriptedReasoner(lambda views: None))
    assert first.targets[0].judgments[-1].proposal is None, "no proposal, nothing recorded"
    session_mask = _round(spleen, tmp_path / "plain", None, poor)[0].dense_mask("E1")
    reasoner = ScriptedReasoner(reference_box_on_the_worst_slice)
    session, rnd = _round(spleen, tmp_path / "with", reasoner, poor)
    (record,) = rnd.targets
    last = record.judgments[-1]
    assert last.proposal is not None and last.proposal["kind"] == "add"
    assert last.proposal["decided_by"] in ("judgment checks", "segmenter score")
    corrected = session.dense_mask(record.entity_id)
    if last.proposal["applied"]:
        assert last.proposal["improved"] and not np.array_equal(corrected, session_mask)
        assert _dice(corrected, truth) > _dice(session_mask, truth), "the applied proposal raised Dice"
    else:
        np.testing.assert_array_equal(corrected, session_mask)
    assert last.proposal["applied"], last.proposal


def test_a_proposal_the_refine_step_refuses_is_recorded_and_not_applied(tmp_path):
    """A box outside the volume (synthetic block, a segmenter that answers from the truth): the refine step's sentence
    is recorded, nothing changes."""
    from support.fakes import oracle

    from MedSegReasoning.volume.core import Geometry, Volume
    from MedSegReasoning.volume.windowing import Window

    truth = np.zeros((8, 32, 32), dtype=bool)
    truth[2:6, 8:20, 10:24] = True
    volume = Volume(np.where(truth, 80, 0).astype(np.int16), Geometry.from_arrays((0, 0, 0), (1, 1, 2), np.eye(3)))
    reasoner = ScriptedReasoner(lambda views: Correction(VoxelPrompt(k=3, box=(20, 20, 40, 40))))
    session = Session.for_volume(volume, folder=tmp_path / "s")
    plan = RoundPlan(targets=(TargetSpec("block", VoxelPrompt(k=3, box=(8, 6, 25, 21))),))
    window = Window(name="test", level=50.0, width=100.0)
    rnd = run_round(
        session, volume, oracle(volume.array, truth, window=window), window, "the block", plan, ask_again=reasoner
    )
    last = rnd.targets[0].judgments[-1]
    assert last.strategy == STRATEGY and last.proposal["applied"] is False
    assert "outside" in last.proposal["refused"]
    np.testing.assert_array_equal(session.dense_mask("E1"), truth)
