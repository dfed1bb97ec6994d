"""The synthetic grounding set of the training tests (``support.grounding``): honest truth, a real baseline."""

from __future__ import annotations

import numpy as np
from support.grounding import answer_text, best_constant_box, box_iou, make_grounding_set

from MedSegReasoning.reasoning.parser import parse_answer


def test_same_seed_same_images_and_each_box_is_its_masks_tight_box():
    a, b = make_grounding_set(20, seed=3), make_grounding_set(20, seed=3)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.images, make_grounding_set(20, seed=4).images)
    for image, mask, (x0, y0, x1, y1) in zip(a.images, a.masks, a.boxes, strict=True):
        rows, cols = np.nonzero(mask)
        assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (x0, y0, x1, y1)
        assert 0 < x0 and 0 < y0 and x1 < 112 and y1 < 112  # the whole ellipse inside the image
        assert image[mask].mean() > image[~mask].mean() + 40  # bright lesion on darker noise
        assert np.array_equal(image[..., 0], image[..., 2])  # grey


def test_sizes_and_places_vary():
    boxes = make_grounding_set(200, seed=1).boxes
    widths, centres = boxes[:, 2] - boxes[:, 0], (boxes[:, 0] + boxes[:, 2]) / 2
    assert widths.min() < 20 and widths.max() > 40
    assert centres.min() < 30 and centres.max() > 82


def test_best_constant_box_beats_the_mean_box_and_scores_low():
    boxes = make_grounding_set(200, seed=12345).boxes
    box, score = best_constant_box(boxes, 112)
    assert np.isclose(box_iou(box[None, :], boxes).mean(), score)
    assert score >= box_iou(boxes.mean(axis=0)[None, :], boxes).mean()
    assert 0.1 < score < 0.25  # a box that ignores the image cannot come close to the learning goal of 0.5


def test_box_iou_and_the_answer_the_parser_reads():
    assert box_iou(np.array([0, 0, 10, 10]), np.array([5, 0, 15, 10])) == 50 / 150
    assert box_iou(np.array([0, 0, 0, 10]), np.array([0, 0, 0, 10])) == 0.0
    assert parse_answer(answer_text([3, 4, 50, 61])).targets[0].bbox == (3, 4, 50, 61)
