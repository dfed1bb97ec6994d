"""The mask reward and the key-slice reward as TRL calls them, with the fake segmenter (``support.fakes``): answers
read and converted as ``ask`` reads them, one encoder call per sample's plane, 0 for what the runtime refuses.

The fake answers "the true mask cut to the prompt's box", so a box's Dice is known exactly: the tight box of the
truth scores 1.0, a box over half of it 2/3.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.fakes import FakeSegmenter, truth_in_box

from MedSegReasoning.reasoning.coords import get_convention
from MedSegReasoning.reasoning.views import DEFAULT_STRATEGY, key_slice_views
from MedSegReasoning.training.mask_reward import MaskReward, RewardSample, completion_text
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.volume.windowing import Window
from MedSegReasoning.wire.errors import InputError

WINDOW = Window("test", 100.0, 400.0)
PIXELS = get_convention("pixels")
SHAPE = (5, 60, 80)  # k, j, i


def _scan(seed: int = 0) -> tuple[Volume, np.ndarray]:
    """Structured noise with a bright rectangle whose size changes per slice (largest on slice 2)."""
    rng = np.random.default_rng(seed)
    voxels = rng.integers(-100, 60, size=SHAPE).astype(np.int16)
    truth = np.zeros(SHAPE, dtype=bool)
    for k, half in enumerate((4, 8, 12, 8, 4)):
        truth[k, 30 - half : 30 + half, 40 - half : 40 + half + 6] = True
    voxels[truth] += 200
    volume = Volume(voxels, Geometry.from_arrays((0, 0, 0), (1.0, 1.0, 1.0), np.eye(3)), modality="CT")
    return volume, truth


def _answer(box, points=((40, 30), (44, 28))) -> str:
    payload = {"bbox": list(box), "points_1": list(points[0]), "points_2": list(points[1])}
    return f"<think>the bright block</think><answer>{json.dumps(payload)}</answer>"


@pytest.fixture
def scan():
    volume, truth = _scan()
    segmenter = FakeSegmenter(volume.array, truth_in_box(truth), window=WINDOW)
    sample = RewardSample.on_slice(volume, truth, WINDOW, PIXELS)  # slice 2, the largest
    return volume, truth, segmenter, sample


TIGHT = (28, 18, 57, 41)  # the truth's box on slice 2 (i0, j0, i1, j1)


def test_the_tight_box_scores_one_and_half_a_box_two_thirds(scan):
    _, truth, segmenter, sample = scan
    assert sample.views.views[0].tiles[0].slice == 2
    reward = MaskReward(segmenter, {"s": sample})
    half = (28, 18, 42, 41)  # 15 of the 30 columns
    assert reward(None, [_answer(TIGHT), _answer(half)], sample_id=["s", "s"]) == pytest.approx([1.0, 2.0 / 3.0])


def test_what_the_runtime_refuses_scores_zero(scan):
    _, _, segmenter, sample = scan
    reward = MaskReward(segmenter, {"s": sample})
    refused = [
        "I cannot tell.",  # no JSON at all
        "<think>cut off",  # stopped inside <think>
        '<answer>{"bbox": [28, 18, 57]}</answer>',  # three numbers
        _answer((28, 18, 90, 41)),  # x beyond the view (80 pixels padded to 84)
        _answer((0, 0, 5, 5)),  # a box outside the structure: an empty mask
        '<answer>{"bbox": [57, 18, 28, 41]}</answer>',  # inverted
    ]
    assert reward(None, refused, sample_id=["s"] * len(refused)) == [0.0] * len(refused)


def test_the_encoder_runs_once_per_sample_whatever_the_completions_and_steps(scan):
    volume, truth, segmenter, sample = scan
    other_volume, other_truth = _scan(seed=1)
    segmenter = FakeSegmenter([volume.array, other_volume.array], truth_in_box(truth), window=WINDOW)
    other = RewardSample.on_slice(other_volume, other_truth, WINDOW, PIXELS)
    reward = MaskReward(segmenter, {"a": sample, "b": other})
    completions = [_answer(TIGHT), _answer((30, 20, 50, 40)), _answer((29, 19, 56, 40)), _answer((20, 10, 60, 50))]
    for _ in range(3):  # three training steps, each a batch of two groups interleaved
        ids = ["a", "b"] * len(completions)
        rewards = reward(None, [c for c in completions for _ in (0, 1)], sample_id=ids)
        assert len(rewards) == 2 * len(completions) and all(0.0 < r <= 1.0 for r in rewards)
    assert segmenter.stats.encoder_calls == 2
    assert segmenter.stats.decoder_calls == 3 * 2 * len(completions)  # one decoder call per completion


def test_encode_all_encodes_each_plane_once_up_front(scan):
    _, _, segmenter, sample = scan
    reward = MaskReward(segmenter, {"s": sample})
    assert reward.encode_all() == 1
    assert reward.encode_all() == 0
    reward(None, [_answer(TIGHT)], sample_id=["s"])
    assert segmenter.stats.encoder_calls == 1


@pytest.mark.parametrize(
    "wrap",
    [
        lambda text: text,
        lambda text: [{"role": "assistant", "content": text}],
        lambda text: [{"role": "assistant", "content": [{"type": "text", "text": text}]}],
    ],
    ids=["string", "messages", "message-parts"],
)
def test_string_and_chat_message_completions_score_alike(scan, wrap):
    _, _, segmenter, sample = scan
    reward = MaskReward(segmenter, {"s": sample})
    prompt = [{"role": "user", "content": "Where is the lesion?"}]
    assert reward([prompt], [wrap(_answer(TIGHT))], sample_id=["s"]) == [pytest.approx(1.0)]


def test_coordinates_go_through_the_models_convention(scan):
    """A 0-1000 grid model (qwen2-vl) writes the tight box in grid units: converted as ``ask`` converts it."""
    volume, truth, segmenter, _ = scan
    sample = RewardSample.on_slice(volume, truth, WINDOW, get_convention("qwen2-vl"))
    view = sample.views.views[0]
    grid = (28 * 1000 / view.width, 18 * 1000 / view.height, 57.5 * 1000 / view.width, 41.5 * 1000 / view.height)
    reward = MaskReward(segmenter, {"s": sample})
    assert reward(None, [_answer(grid), _answer(TIGHT)], sample_id=["s", "s"])[0] == pytest.approx(1.0)


def test_a_montage_answer_is_segmented_on_the_tile_it_points_into():
    """MedReasoner-style answers on the key-slice montage: the box lies on one tile, whose slice is segmented."""
    volume, truth = _scan()
    segmenter = FakeSegmenter(volume.array, truth_in_box(truth), window=WINDOW)
    views = key_slice_views(volume, WINDOW, DEFAULT_STRATEGY)
    sample = RewardSample(volume, WINDOW, views, PIXELS, truth)
    tile = views.views[0].tile_showing(2)
    assert tile is not None
    x0, y0 = tile.from_plane(28, 18)
    x1, y1 = tile.from_plane(58, 42)
    reward = MaskReward(segmenter, {"s": sample})
    points = (tile.from_plane(40, 30), tile.from_plane(44, 28))
    (score,) = reward(None, [_answer((x0, y0, x1 - 0.01, y1 - 0.01), points)], sample_id=["s"])
    assert score > 0.9
    assert segmenter.prompts[-1][0] == 2


def test_bad_samples_and_calls_are_refused_with_a_sentence(scan):
    volume, truth, segmenter, sample = scan
    with pytest.raises(InputError, match="empty"):
        RewardSample(volume, WINDOW, sample.views, PIXELS, np.zeros_like(truth))
    with pytest.raises(InputError, match="shape"):
        RewardSample(volume, WINDOW, sample.views, PIXELS, truth[:2])
    with pytest.raises(InputError, match="nothing on axial slice 4"):
        RewardSample.on_slice(volume, truth & (np.arange(5) != 4)[:, None, None], WINDOW, PIXELS, index=4)
    reward = MaskReward(segmenter, {"s": sample})
    with pytest.raises(InputError, match="sample_id"):
        reward(None, [_answer(TIGHT)], sample_id=["unknown"])
    with pytest.raises(InputError, match="sample ids"):
        reward(None, [_answer(TIGHT)] * 2, sample_id=["s"])
    with pytest.raises(InputError, match="chat messages"):
        completion_text(42)


def test_zoom_follows_the_runtime_on_small_boxes_at_the_cost_of_an_encoder_call():
    """Slice 0's structure is 14 x 8 pixels (under 48 px of LiteMedSAM's 256 input): ``ask`` segments it on a zoomed
    crop too; the reward does so only with ``zoom=True``, where the crop is one more embedding."""
    volume, truth = _scan()
    small = (36, 26, 49, 33)  # the truth's box on slice 0
    for zoom, encodings in ((False, 1), (True, 2)):
        segmenter = FakeSegmenter(volume.array, truth_in_box(truth), window=WINDOW)
        sample = RewardSample.on_slice(volume, truth, WINDOW, PIXELS, index=0)
        reward = MaskReward(segmenter, {"s": sample}, zoom=zoom)
        assert reward(None, [_answer(small, ((40, 30), (44, 29)))] * 3, sample_id=["s"] * 3) == [pytest.approx(1.0)] * 3
        assert segmenter.stats.encoder_calls == encodings
