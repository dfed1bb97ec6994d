"""Judgment and correction: bad masks are caught before they become entities, and re-prompting runs."""

from __future__ import annotations

import numpy as np
import pytest
from support.dialogue import DUODENUM, KIDNEY, WINDOW, abdomen_labels, abdomen_volume, prompt_on
from support.fakes import label_oracle, oracle

from MedSegReasoning.dialogue import RoundPlan, Session, TargetSpec, run_round
from MedSegReasoning.dialogue.correction_loop import judge_and_correct
from MedSegReasoning.dialogue.judgment import Candidate, Expectation, judge
from MedSegReasoning.dialogue.rounds import segment_candidate
from MedSegReasoning.pipeline import VoxelPrompt
from MedSegReasoning.propagation import PropagationConfig
from MedSegReasoning.segmentation.base import ModelIdentity, Prediction, SegmenterStats
from MedSegReasoning.terminology import default_terminology
from MedSegReasoning.wire.masks import CompactMask

TERM = default_terminology()


def _run(volume, segmenter, prompt, label="left kidney", config=None, **expect):
    coded = TERM.match(label, use_embedding=False)
    expectation = Expectation(TERM.type_of(coded), coded.modifier.value if coded.modifier else None, **expect)

    def segment(p, prop, strategy):
        if config is None:
            return segment_candidate(volume, segmenter, WINDOW, p, prop, strategy)
        return segment_candidate(volume, segmenter, WINDOW, p, prop, strategy, config)

    def judge_fn(candidate, attempt):
        return judge(candidate, volume.geometry, volume.shape, expectation, attempt=attempt)

    return judge_and_correct(prompt, segment, judge_fn, volume.shape)


def test_a_leaked_propagation_is_caught_and_a_negative_click_fixes_it():
    labels = abdomen_labels()
    volume = abdomen_volume(labels)
    seg = label_oracle(
        volume.array, labels, runaway_from=14, window=WINDOW
    )  # from slice 14 up, a leaking mask spills far beyond its box
    # judgment's own leak check, without propagation's tissue cut (which already trims this fake's leak)
    no_cut = PropagationConfig(tissue_quantile=None)
    outcome = _run(volume, seg, prompt_on(labels, KIDNEY, 12), config=no_cut)
    first, second = outcome.judgments
    propagation = next(c for c in first.checks if c.name == "propagation")
    assert first.verdict == "rejected" and propagation.failed and "leak" in propagation.detail
    assert second.strategy == "tighter box, negative points outside" and second.accepted
    assert outcome.accepted and outcome.best.strategy == second.strategy
    assert any(0 in p.labels for _, p in seg.prompts)  # background points were really sent


class _Flood:
    """A segmenter that answers every prompt with the whole slice: the runaway that never recovers."""

    identity = ModelIdentity(name="flood", weights="none", sha256="0" * 64)

    def __init__(self) -> None:
        self.stats = SegmenterStats()
        self.shape = None

    def set_image(self, image, cache_key=None) -> None:
        self.shape = image.shape[:2]

    def predict(self, prompt) -> Prediction:
        return Prediction(np.ones(self.shape, dtype=bool), 0.9)


def test_a_mask_that_fills_the_volume_is_kept_only_as_uncertain_and_says_so(tmp_path):
    labels = abdomen_labels()
    volume = abdomen_volume(labels)
    session = Session.for_volume(volume, folder=tmp_path / "s")
    plan = RoundPlan(targets=(TargetSpec("left kidney", prompt_on(labels, KIDNEY, 12)),))
    rnd = run_round(session, volume, _Flood(), WINDOW, "Segment the left kidney.", plan)
    (target,) = rnd.targets
    assert target.status == "uncertain"
    assert [j.strategy for j in rnd.judgments] == [
        "initial",
        "tighter box, negative points outside",
        "tighter box, key slice only",
    ]
    assert all(j.verdict == "rejected" for j in rnd.judgments)
    first = {c.name: c for c in rnd.judgments[0].checks}
    assert first["size"].failed and first["extent"].failed
    entity = session.entity(target.entity_id)
    assert entity.uncertain and entity.findings.startswith("UNCERTAIN: no attempt passed judgment (3 tried)")
    assert "extent: the mask fills 100%" in entity.findings


def test_an_empty_mask_is_caught_and_a_larger_box_is_tried():
    labels = abdomen_labels()
    volume = abdomen_volume(labels)
    seg = oracle(volume.array, labels == KIDNEY, window=WINDOW)
    beside = VoxelPrompt(12, (2, 30, 13, 50))  # on the vein, left of the kidney: the kidney is not in the box
    outcome = _run(volume, seg, beside)
    first = outcome.judgments[0]
    assert [c.name for c in first.failures] == ["empty"]
    assert outcome.judgments[1].strategy == "larger box and a foreground point"
    assert outcome.best.mask.voxel_count > 0
    assert outcome.best_judgment.attempt > 1


def test_a_leak_into_a_big_neighbour_fails_the_size_check_and_is_corrected():
    labels = abdomen_labels()
    labels[:, :, 47:][labels[:, :, 47:] == 0] = DUODENUM  # a huge neighbour of kidney intensity
    volume = abdomen_volume(labels)
    seg = label_oracle(volume.array, labels, leaks_into={KIDNEY: {DUODENUM}}, window=WINDOW)
    outcome = _run(volume, seg, prompt_on(labels, KIDNEY, 12, pad=8))
    size = next(c for c in outcome.judgments[0].checks if c.name == "size")
    assert size.failed and size.expected == "80-300 mL"
    assert outcome.accepted and outcome.best.strategy == "tighter box, negative points outside"


# -- single checks on crafted candidates -----------------------------------------------------------------------------
GEOMETRY = abdomen_volume().geometry
SHAPE = (24, 80, 80)


def _candidate(mask: np.ndarray, propagated=True, score=0.9, stops=None) -> Candidate:
    return Candidate(
        CompactMask.from_dense(mask), score, VoxelPrompt(12, (0, 0, 5, 5)), propagated, "initial", stops or {}
    )


def _checks(candidate, label="lesion", **expect):
    coded = TERM.match(label, use_embedding=False)
    e = Expectation(TERM.type_of(coded), coded.modifier.value if coded.modifier else None, **expect)
    return {c.name: c for c in judge(candidate, GEOMETRY, SHAPE, e).checks}


def _blob(k0, k1, j0, j1, i0, i1) -> np.ndarray:
    m = np.zeros(SHAPE, dtype=bool)
    m[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1] = True
    return m


def test_one_slice_only_is_suspicious_when_propagated_but_not_when_asked_for():
    flat = _blob(12, 12, 20, 40, 20, 40)  # 42 mm across, slices 4 mm apart
    assert _checks(_candidate(flat))["propagation"].failed
    assert _checks(_candidate(flat, propagated=False))["propagation"].status == "skip"
    assert _checks(_candidate(_blob(12, 12, 20, 21, 20, 21)))["propagation"].status == "pass"  # tiny: plausible


def test_low_score_and_pieces():
    two = _blob(5, 8, 10, 15, 10, 15) | _blob(5, 8, 10, 15, 40, 45)
    checks = _checks(_candidate(two, score=0.2))
    assert checks["score"].failed and checks["connected"].failed and checks["connected"].value == 2
    assert _checks(_candidate(two), label="both kidneys")["connected"].status == "pass"


def test_size_lower_bound_is_waived_where_the_mask_meets_the_edge_of_the_scan():
    small = _blob(3, 8, 20, 40, 20, 40)  # ~41 mL, less than a kidney
    assert _checks(_candidate(small), label="right kidney")["size"].failed
    cut = _blob(0, 5, 20, 40, 20, 40)
    size = _checks(_candidate(cut), label="right kidney")["size"]
    assert size.status == "pass" and "edge of the scanned volume" in size.detail
    assert _checks(_candidate(small), label="flux capacitor")["size"].status == "skip"


@pytest.mark.parametrize(
    ("relation", "mask", "passes"),
    [
        ("inside", _blob(8, 10, 22, 26, 22, 26), True),
        ("inside", _blob(8, 10, 50, 56, 50, 56), False),
        ("adjacent", _blob(5, 15, 20, 30, 31, 35), True),
        ("adjacent", _blob(5, 15, 20, 30, 50, 60), False),
        ("disjoint", _blob(5, 15, 20, 30, 50, 60), True),
        ("disjoint", _blob(8, 10, 22, 26, 22, 26), False),
        ("contains", _blob(2, 20, 10, 50, 10, 50), True),
        (None, _blob(5, 15, 20, 30, 20, 30), False),  # the referenced entity again
    ],
)
def test_consistency_with_the_referenced_entity(relation, mask, passes):
    reference = CompactMask.from_dense(_blob(5, 15, 20, 30, 20, 30))
    check = _checks(_candidate(mask), reference=reference, reference_id="E1", relation=relation)["relation"]
    assert check.status == ("pass" if passes else "fail"), check.detail


def test_a_key_slice_only_mask_is_not_judged_as_a_whole_organ():
    """Regression (#16): ``--no-propagate`` on a liver gave "UNCERTAIN … mL is less than a liver can plausibly hold"."""
    one_slice = _blob(12, 12, 20, 40, 20, 40)  # ~7 mL: a cross-section, far below a liver's volume
    asked_whole = judge(_candidate(one_slice, propagated=False), GEOMETRY, SHAPE, _expect("liver"))
    size = {c.name: c for c in asked_whole.checks}["size"]
    assert size.failed  # a correction's key-slice fallback when the whole liver was asked for: still implausible
    asked_slice = judge(_candidate(one_slice, propagated=False), GEOMETRY, SHAPE, _expect("liver", whole=False))
    size = {c.name: c for c in asked_slice.checks}["size"]
    assert size.status == "skip" and "key slice only" in size.detail
    assert asked_slice.accepted, asked_slice.reasons()


def test_a_no_propagate_round_is_judged_as_one_slice():
    """The round knows what was asked: a ``propagate=False`` target's first attempt (one kidney slice, a few mL) is
    accepted, its size check skipped; before #16 it failed "less than a kidney can plausibly hold"."""
    volume, labels = abdomen_volume(), abdomen_labels()
    k = int(np.argmax((labels == KIDNEY).sum(axis=(1, 2))))
    jj, ii = np.nonzero(labels[k] == KIDNEY)
    prompt = VoxelPrompt(
        k, (int(ii.min()), int(jj.min()), int(ii.max()), int(jj.max())), ((int(ii.mean()), int(jj.mean())),), (1,)
    )
    plan = RoundPlan(targets=(TargetSpec("left kidney", prompt, propagate=False),))
    rnd = run_round(
        Session.for_volume(volume),
        volume,
        label_oracle(volume.array, labels, window=WINDOW),
        WINDOW,
        "the left kidney",
        plan,
    )
    first = rnd.targets[0].judgments[0]
    assert not first.propagated and first.accepted, first.reasons()
    assert {c.name: c for c in first.checks}["size"].status == "skip"


def _expect(label, whole=True):
    coded = TERM.match(label, use_embedding=False)
    return Expectation(TERM.type_of(coded), coded.modifier.value if coded.modifier else None, whole_structure=whole)
