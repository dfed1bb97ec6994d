"""The training rewards: MedReasoner's format, box and point rewards with their penalties, and the key-slice reward.

Each assertion is a property the reward must have for GRPO to learn the right thing (monotone in overlap, the
penalties bite, unreadable answers earn no geometry), checked on hand-computed values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from MedSegReasoning.training.rewards import (
    RewardWeights,
    box_reward,
    format_reward,
    key_slice_reward,
    penalized,
    points_reward,
    smooth_log,
)
from MedSegReasoning.wire.errors import InputError

GOOD = '<think>bright oval, upper left</think><answer>{"bbox": [10, 12, 40, 44], "points_1": [20, 25], "points_2": [30, 35]}</answer>'


def test_smooth_log_has_medreasoners_floor_and_ceiling():
    assert smooth_log(0.0) == pytest.approx(0.1)
    assert smooth_log(1.0) == pytest.approx(1.0)
    assert smooth_log(0.5) == pytest.approx(0.1 + 0.9 * math.log(2.5) / math.log(4))
    assert smooth_log(2.0) == pytest.approx(1.0)  # clipped: a score above 1 never earns more than a perfect one


def test_penalized_scales_only_its_share():
    assert penalized(0.8, [1.0, 1.0]) == pytest.approx(0.8)
    assert penalized(0.8, [0.5, 0.5]) == pytest.approx(0.7 * 0.8 + 0.3 * 0.8 * 0.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD, 1.0),
        ('<think></think><answer>{"bbox": [1, 2, 3, 4], "points_1": [2, 3], "points_2": [3, 3]}</answer>', 0.6),
        ('<answer>{"bbox": [1, 2, 3, 4]}</answer>', 0.3),  # no think block; box without points
        ('<think>x</think><answer>{"bbox": [1, 2, 3, 4], "points_1": [2, 3], "points_2": [2, 3]}</answer>', 0.8),
        ("<think>x</think><answer>not json</answer>", 0.6),
        ("<think>x</think>", 0.5),
        ("", 0.0),
    ],
)
def test_format_reward_levels(text, expected):
    assert format_reward(text) == pytest.approx(expected)


def test_box_reward_is_monotone_in_overlap_and_penalised():
    truth = (10.0, 10.0, 29.0, 29.0)
    exact = box_reward(truth, truth, [(15.0, 15.0), (25.0, 25.0)])
    shifted = box_reward((14.0, 14.0, 33.0, 33.0), truth, [(15.0, 15.0), (25.0, 25.0)])
    far = box_reward((60.0, 60.0, 79.0, 79.0), truth, [(15.0, 15.0), (25.0, 25.0)])
    assert exact == pytest.approx(1.0)
    assert exact > shifted > far > 0.0
    # far: IoU 0 -> 0.1 floor, both true points outside (0.25) and the area is right (1.0)
    assert far == pytest.approx(penalized(0.1, [1.0, 0.25]))
    # a box four times too large covering everything: IoU 0.25, area penalty bites
    big = (10.0, 10.0, 49.0, 49.0)
    assert box_reward(big, truth) == pytest.approx(penalized(smooth_log(0.25), [0.5, 1.0]))
    assert box_reward(None, truth) == 0.0


def test_points_reward_uses_the_disc_dice_and_its_penalties():
    truth_box = (0.0, 0.0, 100.0, 100.0)
    truth = [(20.0, 50.0), (80.0, 50.0)]
    assert points_reward(truth, truth, truth_box) == pytest.approx(1.0)
    assert points_reward(list(reversed(truth)), truth, truth_box) == pytest.approx(1.0)  # order-free
    near = points_reward([(50.0, 50.0), (55.0, 50.0)], truth, truth_box)  # 5 px apart: spread penalty
    assert near < points_reward([(30.0, 50.0), (70.0, 50.0)], truth, truth_box)
    outside = points_reward([(120.0, 50.0), (180.0, 50.0)], truth, truth_box)
    assert outside == pytest.approx(penalized(0.1, [0.25, 1.0]))
    assert points_reward([(20.0, 50.0)], truth, truth_box) == 0.0


def test_key_slice_reward_prefers_the_largest_slice():
    truth = np.zeros((6, 10, 10), dtype=bool)
    truth[1, 4:6, 4:6] = True  # area 4
    truth[2, 2:8, 2:8] = True  # area 36, the largest
    truth[3, 3:7, 3:7] = True  # area 16
    assert key_slice_reward(2, truth) == 1.0
    assert key_slice_reward(3, truth) == pytest.approx(16 / 36)
    assert key_slice_reward(5, truth) == 0.0
    assert key_slice_reward(None, truth) == 0.0
    assert key_slice_reward(99, truth) == 0.0
    with pytest.raises(InputError):
        key_slice_reward(0, np.zeros((3, 4, 4), dtype=bool))


def test_reward_weights_validate_and_combine():
    weights = RewardWeights(format=1.0, box=1.0, points=0.0, mask=2.0)
    assert weights.total({"format": 1.0, "box": 0.5, "mask": 0.25}) == pytest.approx((1.0 + 0.5 + 0.5) / 4.0)
    assert weights.total({"format": 1.0, "box": 0.5, "mask": 0.25, "points": 0.9}) == pytest.approx(0.5)
    with pytest.raises(InputError, match="unknown reward component"):
        RewardWeights.from_mapping({"dice": 1.0})
    with pytest.raises(InputError, match=">= 0"):
        RewardWeights(format=-1.0)
    with pytest.raises(InputError, match="above 0"):
        RewardWeights(format=0, box=0, points=0, mask=0, key_slice=0)
