"""The mask reward with the real LiteMedSAM on slice 12 of the real abdominal CT, the spleen: a right box scores
high, a wrong one low, an unusable answer 0, and the encoder runs once for every completion of every call."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

SPLEEN_BOX = (291, 245, 392, 377)  # the reference spleen's tight box on axial slice 12 (i0, j0, i1, j1)
FLIPPED_BOX = (289, 132, 394, 268)  # about the same box with the rows mirrored: what reading the labels'
# NIfTI without its flipped row axis gives; it lies on the liver side of the image, not on the spleen


def _answer(box, points=((340, 300), (330, 330))) -> str:
    payload = {"bbox": list(box), "points_1": list(points[0]), "points_2": list(points[1])}
    return f"<think>The spleen: left upper quadrant, behind the stomach.</think><answer>{json.dumps(payload)}</answer>"


@pytest.fixture(scope="module")
def spleen_sample(shared_ct):
    from support.ct_reference import reference_on_ct_grid

    from MedSegReasoning.reasoning.coords import get_convention
    from MedSegReasoning.training.mask_reward import RewardSample
    from MedSegReasoning.volume import default_window, load_volume

    volume = load_volume(shared_ct / "dicom")
    truth = reference_on_ct_grid(shared_ct, volume, "spleen")
    return RewardSample.on_slice(volume, truth, default_window(volume), get_convention("qwen2.5-vl"), index=12)


@pytest.fixture
def segmenter(litemedsam, monkeypatch):
    """The session's LiteMedSAM with an empty embedding cache, so its encoder calls here are counted from zero."""
    from MedSegReasoning.segmentation.cache import EmbeddingCache

    monkeypatch.setattr(litemedsam, "cache", EmbeddingCache())
    return litemedsam


def test_real_litemedsam_rewards_the_right_box_and_not_the_wrong_one(spleen_sample, segmenter):
    from MedSegReasoning.training.mask_reward import MaskReward

    view = spleen_sample.views.views[0]
    assert (view.width, view.height) == (532, 532)  # 512 padded to a multiple of 28: Qwen2.5-VL sees it 1:1
    reward = MaskReward(segmenter, {"ct-spleen-12": spleen_sample})
    encoder_before = segmenter.stats.encoder_calls
    completions = [
        _answer(SPLEEN_BOX),
        [{"role": "assistant", "content": _answer(SPLEEN_BOX)}],
        _answer(FLIPPED_BOX, ((340, 200), (330, 230))),
        "The spleen is in the left upper quadrant.",
        _answer((291, 245, 600, 377)),  # beyond the 532-pixel image
    ]
    first = reward(None, completions, sample_id=["ct-spleen-12"] * len(completions))
    right, as_messages, flipped, prose, outside = first
    assert right > 0.9, f"the reference box gave mask Dice {right:.3f}"
    assert as_messages == right
    assert flipped < 0.2, f"the mirrored box gave mask Dice {flipped:.3f}"
    assert prose == 0.0 and outside == 0.0
    again = reward(None, [_answer((295, 250, 388, 372)), _answer(SPLEEN_BOX)], sample_id=["ct-spleen-12"] * 2)
    assert again[1] == right and 0.8 < again[0] <= 1.0
    assert segmenter.stats.encoder_calls - encoder_before == 1, "the slice was encoded more than once"
