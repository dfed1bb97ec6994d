"""Skip-and-interpolate, on by default: every ``skip``-th slice is segmented where consecutive segmented masks agree,
the slices between are interpolated by shape, and result.json counts both (``segmented_slices``,
``interpolated_slices``). Full slice-by-slice propagation stays available as ``skip=1``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from support.fakes import oracle

from MedSegReasoning.pipeline import VoxelPrompt, segment_target
from MedSegReasoning.propagation import DEFAULT_PROPAGATION, PropagationConfig, propagate
from MedSegReasoning.result import target_record
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.volume.windowing import Window

WINDOW = Window(name="test", level=50.0, width=100.0)
FULL = replace(DEFAULT_PROPAGATION, skip=1)


def _volume(truth: np.ndarray) -> Volume:
    background = np.arange(truth.shape[0], dtype=np.int16)[:, None, None]  # every slice renders differently
    array = np.where(truth, 80, background).astype(np.int16)
    return Volume(array, Geometry.from_arrays((0, 0, 0), (1, 1, 2), np.eye(3)), modality="CT")


def _oracle(truth: np.ndarray):
    return oracle(_volume(truth).array, truth, window=WINDOW)


def _cone(nk: int = 40, first: int = 5, last: int = 34) -> np.ndarray:
    """A 30-slice structure whose radius changes smoothly, in a 64x64 field."""
    truth = np.zeros((nk, 64, 64), dtype=bool)
    yy, xx = np.mgrid[:64, :64]
    for k in range(first, last + 1):
        radius = 6 + 8 * np.sin(np.pi * (k - first + 0.5) / (last - first + 1))
        truth[k] = (yy - 30) ** 2 + (xx - 34) ** 2 <= radius**2
    return truth


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_the_default_skips_and_interpolates_with_fewer_encoder_calls():
    assert DEFAULT_PROPAGATION.skip == 3 and DEFAULT_PROPAGATION.skip_agreement == 0.5
    truth = _cone()
    full_seg, skip_seg = _oracle(truth), _oracle(truth)
    full = propagate(_volume(truth), full_seg, WINDOW, 20, truth[20], FULL)
    skip = propagate(_volume(truth), skip_seg, WINDOW, 20, truth[20])
    assert not full.interpolated_slices and full.slice_range == skip.slice_range == (5, 34)
    assert skip.interpolated_slices, "nothing was interpolated"
    assert not set(skip.interpolated_slices) & set(skip_seg.encoded), "an interpolated slice was encoded"
    assert len(set(skip_seg.encoded)) <= 0.6 * len(set(full_seg.encoded)), (skip_seg.encoded, full_seg.encoded)
    assert _dice(skip.mask, truth) >= 0.97 and _dice(full.mask, truth) == 1.0
    # every slice of the structure is either segmented or interpolated
    covered = set(skip.visited_slices) | set(skip.interpolated_slices)
    assert set(range(5, 35)) <= covered


def test_slices_that_disagree_are_segmented_one_by_one():
    """A structure that jumps sideways every slice: no far slice agrees with the previous one, so no slice is
    interpolated (the refused far slices are counted as segmented, never as interpolated)."""
    truth = np.zeros((20, 64, 64), dtype=bool)
    for k in range(4, 16):
        x = 10 + 3 * (k - 4)
        truth[k, 20:30, x : x + 6] = True  # 6 px wide, moving 3 px a slice: 3 slices apart no overlap
    seg = _oracle(truth)
    result = propagate(_volume(truth), seg, WINDOW, 10, truth[10], PropagationConfig(margin_fraction=1.0))
    assert not result.interpolated_slices
    assert result.slice_range == (4, 15)
    np.testing.assert_array_equal(result.mask, truth)


def test_result_json_counts_segmented_and_interpolated_slices():
    truth = _cone()
    seg = _oracle(truth)
    result = segment_target(_volume(truth), seg, WINDOW, VoxelPrompt(k=20, box=(14, 10, 54, 50)))
    record = target_record(_volume(truth), result)
    assert record["interpolated_slices"] == len(result.propagation.interpolated_slices) > 0
    assert record["segmented_slices"] >= len(result.propagation.visited_slices)
    assert record["segmented_slices"] + record["interpolated_slices"] >= 30
    assert record["encoder_calls"] + record["embedding_cache_hits"] >= record["segmented_slices"]
    assert record["encoder_calls"] == len(set(seg.encoded))
