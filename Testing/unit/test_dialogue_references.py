"""Reference resolution: ids, recency and label, ordinals, "the other kidney", and asking back when unsure."""

from __future__ import annotations

import pytest
from support.dialogue import run_script

from MedSegReasoning.dialogue import Clarification, Resolution, infer_relation


@pytest.fixture(scope="module")
def session():
    s, _, _ = run_script(None)
    return s  # E1 lesion (round 1); E2 left kidney, E3 inferior vena cava (round 2); E2 redone in round 3


@pytest.mark.parametrize(
    ("text", "ids", "how"),
    [
        ("E1", ("E1",), "id"),
        ("e3", ("E3",), "id"),
        ("that lesion", ("E1",), "recency"),
        ("the lesion", ("E1",), "label"),
        ("the lesion from round 1", ("E1",), "label"),
        ("the second one", ("E2",), "ordinal"),
        ("the first one", ("E1",), "ordinal"),
        ("the kidney", ("E2",), "label"),
        ("the left kidney", ("E2",), "label"),
        ("that vessel", ("E3",), "recency"),
        ("the IVC", ("E3",), "label"),
        ("it", ("E2",), "recency"),  # round 3 touched E2 last
    ],
)
def test_resolves(session, text, ids, how):
    ref = session.resolve_reference(text)
    assert isinstance(ref, Resolution), ref
    assert (ref.entity_ids, ref.how) == (ids, how)


def test_the_other_kidney_is_the_opposite_side_to_find(session):
    ref = session.resolve_reference("the other kidney")
    assert isinstance(ref, Resolution)
    assert ref.entity_ids == () and ref.label == "right kidney" and ref.related == ("E2",)


@pytest.mark.parametrize(
    ("text", "candidates"),
    [
        ("E7", ("E1", "E2", "E3")),
        ("the fourth one", ("E1", "E2", "E3")),
        ("that nodule", ("E1", "E2", "E3")),
        ("the right kidney", None),  # not segmented yet: a new target, not a reference
        ("the pancreas", None),
    ],
)
def test_unknown_references_ask_back_or_are_not_references(session, text, candidates):
    ref = session.resolve_reference(text)
    if candidates is None:
        assert ref is None
    else:
        assert isinstance(ref, Clarification) and ref.candidates == candidates and ref.question.endswith("?")


def test_references_found_in_questions(session):
    found = session.find_references("Now the vessel next to the lesion from round 1")
    assert [(r.text, r.entity_ids) for r in found] == [("the lesion from round 1", ("E1",))]
    # generic heads describe the new target, not an earlier entity
    assert session.find_references("Segment the organ containing E1") == [session.resolve_reference("E1")]
    assert [r.entity_ids for r in session.find_references("How far is it from the portal vein?")] == [("E2",)]


@pytest.mark.parametrize(
    ("question", "relation"),
    [
        ("the organ containing E1", "contains"),
        ("the vessel next to that lesion", "adjacent"),
        ("the nodule inside E2", "inside"),
        ("a lesion in E2", "inside"),
        ("a structure not touching E1", "disjoint"),
        ("the portal vein", None),
    ],
)
def test_relation_words(question, relation):
    assert infer_relation(question) == relation
