"""Dataset layouts for ``eval``: each reader on a tiny dataset written in the real format, and its clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.eval_data import (
    MR_FIRST,
    MR_SECOND,
    UMRG_SHAPES,
    blob_volume_and_labels,
    umrg_rows,
    write_folder,
    write_mrmedseg,
    write_umrg,
)

from MedSegReasoning.evaluation.layouts import detect_layout, open_dataset
from MedSegReasoning.wire.errors import InputError


def test_layouts_are_detected_from_what_the_path_holds(tmp_path):
    parquet = write_umrg(tmp_path / "umrg" / "data")
    mr = write_mrmedseg(tmp_path / "mr")
    folder = write_folder(tmp_path / "folder")
    assert detect_layout(parquet) == "umrg"
    assert detect_layout(tmp_path / "umrg") == "umrg"  # a folder of parquet files (the Hugging Face layout)
    assert detect_layout(mr) == "mrmedseg"
    assert detect_layout(tmp_path / "mr") == "mrmedseg"
    assert detect_layout(folder) == "folder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="cannot tell the layout"):
        detect_layout(tmp_path / "empty")


def test_umrg_rows_become_one_slice_cases(tmp_path):
    dataset = open_dataset(write_umrg(tmp_path))
    assert dataset.layout == "umrg"
    assert [u.id for u in dataset] == list(UMRG_SHAPES)
    assert [u.category for u in dataset] == ["disc", "square", "disc"]
    case = dataset.units[1].load()  # the second row group's neighbour: rows are read per row group
    assert case.volume.shape == (1, 64, 64) and case.dimension == 2
    turn = case.turns[0]
    assert turn.question == "Which region looks abnormal in image 1?"  # <image> token removed
    assert np.array_equal(turn.truth[0], UMRG_SHAPES["u2"])
    assert turn.truth_box == (12.0, 14.0, 40.0, 36.0)
    assert turn.truth_points is not None and len(turn.truth_points) == 2
    # the image is the bright square on the dark background, as stored
    assert case.volume.array[0][UMRG_SHAPES["u2"]].min() > 150
    assert case.volume.array[0][~UMRG_SHAPES["u2"]].max() < 100


def test_umrg_missing_columns_are_named(tmp_path):
    rows = [{k: v for k, v in row.items() if k not in ("masks", "reward_model")} for row in umrg_rows()]
    path = write_umrg(tmp_path, rows)
    with pytest.raises(InputError, match="lacks the U-MRG column\\(s\\) masks, reward_model") as info:
        open_dataset(path)
    assert info.value.exit_code == 2


def test_umrg_bad_ground_truth_fails_when_that_row_is_loaded(tmp_path):
    rows = umrg_rows()
    rows[0]["reward_model"] = {"style": "rule", "ground_truth": json.dumps({"bbox_2d": [1, 2, 3]})}
    dataset = open_dataset(write_umrg(tmp_path, rows))
    with pytest.raises(InputError, match="bbox_2d must be \\[x1, y1, x2, y2\\]"):
        dataset.units[0].load()
    assert dataset.units[1].load().turns[0].truth.any()  # the other rows are unaffected


def test_mrmedseg_dialogue_rounds_and_references(tmp_path):
    dataset = open_dataset(write_mrmedseg(tmp_path))
    assert dataset.layout == "mrmedseg" and len(dataset) == 1
    unit = dataset.units[0]
    assert unit.dialogue and unit.case == "images/case_0001.png"
    case = unit.load()
    assert case.dialogue and case.dimension == 2
    first, second = case.turns
    assert (first.round, second.round) == (1, 2)
    assert first.question == "Segment the target region in the image."
    assert second.question == "Segment the region below and right of the previous output."
    assert first.references == () and second.references == (1,)
    assert np.array_equal(first.truth[0], MR_FIRST) and np.array_equal(second.truth[0], MR_SECOND)


def test_mrmedseg_malformed_dialogue(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"task": "segmentation", "conversations": [{"from": "human", "value": "hi"}]}]))
    with pytest.raises(InputError, match="alternate human and gpt"):
        open_dataset(path)
    path.write_text(
        json.dumps(
            [
                {
                    "task": "segmentation",
                    "conversations": [
                        {"from": "human", "value": "[IMAGE256:a.png] Segment it."},
                        {"from": "gpt", "value": "Sure."},
                    ],
                }
            ]
        )
    )
    with pytest.raises(InputError, match="exactly one \\[MASK-DECODE:path\\]"):
        open_dataset(path)


def test_folder_questions_single_and_dialogue(tmp_path):
    dataset = open_dataset(write_folder(tmp_path))
    assert dataset.layout == "folder"
    single, dialogue = dataset.units
    assert (single.id, single.dialogue, dialogue.id, dialogue.dialogue) == ("single-blob", False, "d1", True)
    _, labels = blob_volume_and_labels()
    case = dialogue.load()
    assert case.dimension == 3 and case.volume.shape == (8, 64, 64)
    assert case.volume.geometry.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert [t.round for t in case.turns] == [1, 2] and case.turns[1].references == (1,)
    assert np.array_equal(case.turns[0].truth, labels == 1) and np.array_equal(case.turns[1].truth, labels == 2)
    assert case.turns[1].label == "square"


@pytest.mark.parametrize(
    ("line", "detail"),
    [
        ({"volume": "vol1.nrrd", "question": "q", "label": 1}, "lacks labels"),
        ({"volume": "vol1.nrrd", "labels": "vol1_labels.nrrd", "question": "q", "label": "liver"}, "whole-number"),
        (
            {
                "volume": "vol1.nrrd",
                "labels": "vol1_labels.nrrd",
                "question": "q",
                "label": 1,
                "round": 1,
                "reference": 1,
            },
            "earlier rounds",
        ),
    ],
)
def test_folder_bad_question_lines(tmp_path, line, detail):
    write_folder(tmp_path)
    (tmp_path / "questions.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(InputError, match=detail):
        open_dataset(tmp_path)


def test_folder_label_map_off_the_volume_grid_is_refused(tmp_path):
    from MedSegReasoning.volume.core import Geometry
    from MedSegReasoning.volume.itk_io import write_label_image

    write_folder(tmp_path, dialogue=False)
    _, labels = blob_volume_and_labels()
    write_label_image(tmp_path / "vol1_labels.nrrd", labels, Geometry.from_arrays((0, 0, 0), (1, 1, 1), np.eye(3)))
    unit = open_dataset(tmp_path).units[0]
    with pytest.raises(InputError, match="not on the grid"):
        unit.load()


def test_empty_dataset_and_unknown_layout(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "questions.jsonl").write_text("\n")
    with pytest.raises(InputError, match="holds no questions"):
        open_dataset(tmp_path)
    with pytest.raises(InputError, match="unknown layout 'coco'"):
        open_dataset(tmp_path, "coco")
    with pytest.raises(InputError, match="does not exist"):
        open_dataset(tmp_path / "nothing-here")
