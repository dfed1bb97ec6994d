"""``correction.correct_mask`` with a segmenter that answers from the truth (``support.fakes.oracle``), so what a
correction replaces, keeps and removes can be checked voxel by voxel: an add rejoins the mask and replaces only the
slices it corrected, an erase removes its box's voxels and what grew from them, and locked slices never change."""

from __future__ import annotations

import numpy as np
import pytest
from support.fakes import FakeSegmenter, oracle, truth_in_box

from MedSegReasoning.correction import Correction, correct_mask
from MedSegReasoning.pipeline import VoxelPrompt
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.volume.windowing import Window
from MedSegReasoning.wire.errors import InputError

WINDOW = Window(name="test", level=50.0, width=100.0)
NK, SIZE, FIRST, LAST = 20, 64, 4, 15
KEY = 8


def _disc(radius: float, centre: tuple[int, int] = (30, 32)) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - centre[1]) ** 2 + (xx - centre[0]) ** 2 <= radius**2


@pytest.fixture
def truth() -> np.ndarray:
    """A structure on slices FIRST..LAST whose radius changes by at most one pixel a slice."""
    mask = np.zeros((NK, SIZE, SIZE), dtype=bool)
    for k in range(FIRST, LAST + 1):
        mask[k] = _disc(8 + 3 * np.sin(np.pi * (k - FIRST) / (LAST - FIRST)))
    return mask


def _volume(truth: np.ndarray) -> Volume:
    """The structure at 80 HU; the background k HU on slice k, so that no two slices render alike (the structure is
    symmetric) and the fake segmenter can tell them apart."""
    array = np.where(truth, 80, np.arange(truth.shape[0])[:, None, None]).astype(np.int16)
    return Volume(array, Geometry.from_arrays((0, 0, 0), (1, 1, 2), np.eye(3)), modality="CT")


def _box(mask2d: np.ndarray) -> tuple[int, int, int, int]:
    jj, ii = np.nonzero(mask2d)
    return int(ii.min()), int(jj.min()), int(ii.max()), int(jj.max())


def _shrunk(truth: np.ndarray, slices: range) -> np.ndarray:
    """The truth with ``slices`` replaced by a small off-centre disc: a mask that went wrong there."""
    mask = truth.copy()
    for k in slices:
        mask[k] = _disc(3, centre=(24, 26))
    return mask


def test_add_rejoins_the_mask_and_replaces_only_the_corrected_slices(truth):
    mask = _shrunk(truth, range(10, 13))
    before = mask.copy()
    seg = oracle(_volume(truth).array, truth, window=WINDOW)
    correction = Correction(VoxelPrompt(k=11, box=_box(truth[11])))
    result = correct_mask(_volume(truth), seg, WINDOW, mask, correction, key_slice=KEY)
    assert result.changed_slices == [10, 11, 12]
    np.testing.assert_array_equal(result.mask[10:13], truth[10:13])
    untouched = [k for k in range(NK) if k not in (10, 11, 12)]
    np.testing.assert_array_equal(result.mask[untouched], before[untouched])
    np.testing.assert_array_equal(mask, before)  # the caller's mask is not changed
    assert "rejoined" in result.stop_reasons["up"] and "rejoined" in result.stop_reasons["down"]
    # the segmenter ran on the corrected slice and each slice it propagated to, the two that rejoined included
    assert result.segmented_slices == [9, 10, 11, 12, 13] and sorted(set(seg.encoded)) == [9, 10, 11, 12, 13]


def _self_aware_oracle(truth: np.ndarray) -> FakeSegmenter:
    """The oracle, scoring each mask by how well it matches the truth: a model whose quality estimate is right."""
    in_box = truth_in_box(truth)

    def answer(k, prompt):
        prediction = in_box(k, prompt)
        seen = truth[k]
        overlap = 2.0 * (prediction.mask & seen).sum() / max(int(prediction.mask.sum() + seen.sum()), 1)
        return type(prediction)(mask=prediction.mask, score=0.95 * float(overlap))

    return FakeSegmenter(_volume(truth).array, answer, name="oracle", window=WINDOW)


def test_add_keeps_neighbours_the_model_scores_higher(truth):
    """A box over half the structure re-segments its slice, but the half mask it would grow on the neighbours scores
    lower than the good mask already there, so the correction changes its own slice only."""
    correction = Correction(VoxelPrompt(k=11, box=(22, 20, 30, 44)))
    result = correct_mask(_volume(truth), _self_aware_oracle(truth), WINDOW, truth.copy(), correction, key_slice=KEY)
    assert result.changed_slices == [11]
    assert "scores the mask there higher" in result.stop_reasons["up"]
    assert "scores the mask there higher" in result.stop_reasons["down"]
    untouched = [k for k in range(NK) if k != 11]
    np.testing.assert_array_equal(result.mask[untouched], truth[untouched])


def test_add_never_overwrites_a_locked_slice(truth):
    mask = _shrunk(truth, range(10, 13))
    correction = Correction(VoxelPrompt(k=11, box=_box(truth[11])))
    result = correct_mask(
        _volume(truth), oracle(_volume(truth).array, truth, window=WINDOW), WINDOW, mask, correction, locked={12}
    )
    assert result.changed_slices == [10, 11]
    np.testing.assert_array_equal(result.mask[12], mask[12])
    assert result.stop_reasons["up"] == "slice 12: an earlier correction"


def test_add_past_the_end_extends_the_structure(truth):
    """A mask whose propagation stopped early: a box on a missing slice brings it back and the slices beyond it."""
    mask = truth.copy()
    mask[13:] = False
    correction = Correction(VoxelPrompt(k=14, box=_box(truth[14])))
    result = correct_mask(
        _volume(truth), oracle(_volume(truth).array, truth, window=WINDOW), WINDOW, mask, correction, key_slice=KEY
    )
    np.testing.assert_array_equal(result.mask, truth)
    assert result.changed_slices == [13, 14, 15]
    assert "ended" in result.stop_reasons["up"]


def _with_leak(truth: np.ndarray, slices: range) -> np.ndarray:
    """The truth plus a small blob beside it on ``slices``, as a propagation leak grows one."""
    mask = truth.copy()
    for k in slices:
        mask[k] |= _disc(3, centre=(54, 54))
    return mask


LEAK_BOX = (49, 49, 59, 59)


def test_erase_removes_the_box_and_what_grew_from_it_away_from_the_key_slice(truth):
    mask = _with_leak(truth, range(11, 18))
    before = mask.copy()
    seg = oracle(_volume(truth).array, truth, window=WINDOW)
    result = correct_mask(
        _volume(truth), seg, WINDOW, mask, Correction(VoxelPrompt(k=13, box=LEAK_BOX), erase=True), key_slice=KEY
    )
    assert result.changed_slices == [13, 14, 15, 16, 17]
    np.testing.assert_array_equal(result.mask[13:], truth[13:])  # the leak is gone from its slice on, away from KEY
    np.testing.assert_array_equal(result.mask[:13], before[:13])  # towards the key slice nothing changes
    assert result.mask[11:13, 54, 54].all(), "the leak's part towards the key slice stays: it did not grow from here"
    np.testing.assert_array_equal(mask, before)
    assert seg.stats.encoder_calls == 0 and result.segmented_slices == []  # an erase runs no segmenter


def test_erase_stops_at_a_locked_slice(truth):
    mask = _with_leak(truth, range(11, 18))
    correction = Correction(VoxelPrompt(k=13, box=LEAK_BOX), erase=True)
    result = correct_mask(
        _volume(truth),
        oracle(_volume(truth).array, truth, window=WINDOW),
        WINDOW,
        mask,
        correction,
        key_slice=KEY,
        locked={15},
    )
    assert result.changed_slices == [13, 14]
    np.testing.assert_array_equal(result.mask[15:], mask[15:])
    assert result.stop_reasons["up"] == "slice 15: an earlier correction"


@pytest.mark.parametrize(
    ("correction", "message"),
    [
        (Correction(VoxelPrompt(k=13, box=(0, 0, 5, 5)), erase=True), "holds none of the mask"),
        (Correction(VoxelPrompt(k=18, box=(20, 20, 40, 40))), "found nothing in the correction box"),
        (Correction(VoxelPrompt(k=13, box=(50, 50, 70, 60))), "lies outside"),
        (Correction(VoxelPrompt(k=NK, box=(5, 5, 10, 10))), "does not exist"),
    ],
)
def test_corrections_that_cannot_apply_say_why(truth, correction, message):
    with pytest.raises(InputError, match=message):
        correct_mask(
            _volume(truth),
            oracle(_volume(truth).array, truth, window=WINDOW),
            WINDOW,
            truth.copy(),
            correction,
            key_slice=KEY,
        )
