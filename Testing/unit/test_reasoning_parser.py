"""The one answer parser: every published format in, precise errors for everything else."""

from __future__ import annotations

import pytest

from MedSegReasoning.reasoning import ReasonerOutputError, parse_answer
from MedSegReasoning.wire.errors import ModelError

MEDREASONER = (
    "<think>The patient is jaundiced, so the biliary tree or pancreatic head is implied. A hypodense mass sits in "
    "the pancreatic head.</think>"
    '<answer>{"bbox": [412, 301, 498, 377], "points_1": [450, 340], "points_2": [470, 350]}</answer>'
)
SEG_ZERO_LIST = (
    "<think>Two kidneys are visible.</think><answer>"
    '[{"bbox_2d": [120, 200, 210, 300], "point_2d": [165, 250]}, '
    '{"bbox_2d": [600, 210, 690, 310], "point_2d": [645, 260]}]</answer>'
)
CONTRACT = (
    '{"reasoning": "The liver is largest here.", "targets": [{"slice": 12, "bbox": [10, 20, 110, 220], '
    '"points": [[60, 120], [70, 130]], "negative_points": [[5, 5]], "label": "liver", "ref": null}], '
    '"clarification": null}'
)


def test_medreasoner_think_answer():
    parsed = parse_answer(MEDREASONER)
    assert parsed.format == "medreasoner"
    assert parsed.reasoning.startswith("The patient is jaundiced")
    (target,) = parsed.targets
    assert target.bbox == (412, 301, 498, 377)
    assert target.points == ((450, 340), (470, 350))  # both MedReasoner points are positive
    assert target.negative_points == ()
    assert parsed.clarification is None


def test_medreasoner_single_quoted_answer_as_its_prompt_shows_it():
    raw = "<think>x</think><answer>{'bbox': [1, 2, 30, 40], 'points_1': [5, 6], 'points_2': [7, 8]}</answer>"
    assert parse_answer(raw).targets[0].bbox == (1, 2, 30, 40)


def test_seg_zero_visionreasoner_list():
    parsed = parse_answer(SEG_ZERO_LIST)
    assert parsed.format == "grounding-list"
    assert [t.bbox for t in parsed.targets] == [(120, 200, 210, 300), (600, 210, 690, 310)]
    assert [t.points for t in parsed.targets] == [((165, 250),), ((645, 260),)]
    assert parsed.reasoning == "Two kidneys are visible."


def test_qwen_grounding_list_in_json_fence_with_labels():
    raw = 'Here it is:\n```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "spleen"}]\n```\nDone.'
    parsed = parse_answer(raw)
    assert parsed.targets[0].label == "spleen"
    assert "Here it is:" in parsed.reasoning


def test_contract_plain_json():
    parsed = parse_answer(CONTRACT)
    assert parsed.format == "contract"
    (target,) = parsed.targets
    assert (target.slice, target.label, target.ref) == (12, "liver", None)
    assert target.points == ((60, 120), (70, 130))
    assert target.negative_points == ((5, 5),)
    assert parsed.reasoning == "The liver is largest here."


@pytest.mark.parametrize(
    "wrapped",
    [
        "```json\n" + CONTRACT + "\n```",
        "```\n" + CONTRACT + "\n```",
        "Reasoning first: segment [VII] is involved.\n" + CONTRACT,
        "<think>thinking</think>" + CONTRACT,
        "<answer>```json\n" + CONTRACT + "\n```</answer>",
    ],
)
def test_contract_with_fences_tags_and_prose(wrapped):
    parsed = parse_answer(wrapped)
    assert parsed.targets[0].bbox == (10, 20, 110, 220)


def test_key_slice_answer_has_only_a_slice():
    parsed = parse_answer('{"targets": [{"slice": 7, "label": "pancreas", "ref": "e2"}], "clarification": null}')
    assert parsed.targets[0].slice == 7
    assert parsed.targets[0].ref == "e2"
    assert not parsed.targets[0].has_geometry


def test_clarification_answer_has_no_target():
    parsed = parse_answer('{"reasoning": "", "targets": [], "clarification": "Left or right kidney?"}')
    assert parsed.targets == ()
    assert parsed.clarification == "Left or right kidney?"


def test_point_forms_single_flat_pair_and_box_as_corners():
    parsed = parse_answer('{"targets": [{"bbox": [[1, 2], [3, 4]], "points": [5, 6]}]}')
    assert parsed.targets[0].bbox == (1, 2, 3, 4)
    assert parsed.targets[0].points == ((5, 6),)


def test_reasoner_output_error_is_a_model_error_with_exit_3():
    with pytest.raises(ModelError) as info:
        parse_answer("I cannot see anything.")
    assert info.value.exit_code == 3


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ("", "returned no text"),
        ("   \n", "returned no text"),
        ("The liver is on the left side of the image.", "contains no JSON object or list"),
        ('{"targets": [{"slice": 3, "bbox": [1, 2, 3', "ends early"),
        ("<think>the liver is large and", "stops inside <think>"),
        ('<think>x</think><answer>{"bbox": [1, 2, 3, 4]', "<answer> block is not closed"),
        ('```json\n{"targets": []', "```json block is not closed"),
        ('{"targets": [{"slice": 3, "bbox": [1, 2, 3, 4]}} trailing', "invalid"),
        ("[1, 2, 3]", "no JSON object or list of objects"),
        ('"just a string"', "contains no JSON object or list"),
        ('{"answer": "liver"}', "none of the expected keys (it has: answer)"),
        ('{"targets": "liver"}', '"targets" must be a list, got text "liver"'),
        ('{"targets": [], "clarification": null}', "no target and no clarification"),
        ("[]", "no target and no clarification"),
        ('{"targets": [{"slice": 2, "label": "x"}], "clarification": "which?"}', "both targets and a clarification"),
        ('{"targets": [{"bbox": [1, 2, 3]}]}', "must be 4 numbers"),
        (
            '{"targets": [{"bbox": ["1", 2, 3, 4]}]}',
            'coordinate 1 of the bbox of target 1 must be a number, got text "1"',
        ),
        ('{"targets": [{"bbox": [true, 2, 3, 4]}]}', "must be a number, got a boolean"),
        ('{"targets": [{"bbox": [30, 2, 10, 4]}]}', "[30, 2, 10, 4] is inverted"),
        ('{"targets": [{"bbox": [1, 40, 10, 4]}]}', "is inverted"),
        ('{"targets": [{"bbox": [-1, 2, 10, 4]}]}', "is negative (-1)"),
        ('{"targets": [{"points": [[1, -2]]}]}', "is negative (-2)"),
        ('{"targets": [{"points": [[1, 2, 3]]}]}', "must be a point [x, y]"),
        ('{"targets": [{"points": "center"}]}', "must be a list of points"),
        ('{"targets": [{"bbox": [1, 2, 3, NaN]}]}', "non-finite number NaN"),
        ('{"targets": [{"bbox": [1, 2, 3, Infinity]}]}', "non-finite number Infinity"),
        ('{"targets": [{"slice": 2.5}]}', '"slice" of target 1 must be a whole number'),
        ('{"targets": [{"slice": -1}]}', '"slice" of target 1 is negative'),
        ('{"targets": [{"label": "liver"}]}', "target 1 has no bbox, no points and no slice"),
        ('{"targets": [{"slice": 1, "label": 5}]}', '"label" of target 1 must be text'),
        ('{"targets": [{"slice": 1, "ref": [1]}]}', '"ref" of target 1 must be an entity id or null'),
        ('{"targets": ["liver"]}', "target 1 is text"),
        ('{"targets": [{"slice": 1}], "clarification": 3}', '"clarification" must be a string or null'),
    ],
)
def test_garbage_fails_precisely(raw, detail):
    with pytest.raises(ReasonerOutputError) as info:
        parse_answer(raw)
    message = str(info.value)
    assert detail in info.value.detail, info.value.detail
    assert "Expected" in message and "It answered:" in message


def test_error_quotes_long_answers_truncated_in_the_middle():
    raw = "x" * 5000 + " the end"
    with pytest.raises(ReasonerOutputError) as info:
        parse_answer(raw)
    message = str(info.value)
    assert "characters ..." in message and "the end" in message
    assert len(message) < 1000


def test_truncated_list_never_yields_its_first_items():
    raw = '{"targets": [{"slice": 3, "bbox": [1, 2, 3, 4], "label": "a"}, {"slice": 4, "bbox": [1, 2'
    with pytest.raises(ReasonerOutputError, match="ends early"):
        parse_answer(raw)
