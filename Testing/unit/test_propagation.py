"""Propagation: follows the structure, stops where it ends or the mask goes wrong, encodes only visited slices."""

from __future__ import annotations

import numpy as np
import pytest
from support.fakes import oracle

from MedSegReasoning.pipeline import VoxelPrompt, segment_target
from MedSegReasoning.propagation import PropagationConfig, largest_component, propagate
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.volume.windowing import Window

WINDOW = Window(name="test", level=50.0, width=100.0)
FULL = PropagationConfig(skip=1)  # these tests pin slice-by-slice propagation; the skip default: test_skip_default.py


def _volume(truth: np.ndarray) -> Volume:
    """The structure at 80 HU; the background k HU on slice k, so that no two slices render alike (the cones are
    symmetric) and the fake segmenter can tell them apart."""
    array = np.where(truth, 80, np.arange(truth.shape[0])[:, None, None]).astype(np.int16)
    return Volume(array, Geometry.from_arrays((0, 0, 0), (1, 1, 2), np.eye(3)), modality="CT")


def _cone(nk: int = 30, first: int = 8, last: int = 21) -> np.ndarray:
    """A structure spanning slices first..last whose radius changes smoothly, in a 64x64 field."""
    truth = np.zeros((nk, 64, 64), dtype=bool)
    yy, xx = np.mgrid[:64, :64]
    for k in range(first, last + 1):
        radius = 6 + 8 * np.sin(np.pi * (k - first + 0.5) / (last - first + 1))
        truth[k] = (yy - 30) ** 2 + (xx - 34) ** 2 <= radius**2
    return truth


def test_follows_the_structure_and_stops_where_it_ends():
    truth = _cone()
    seg = oracle(_volume(truth).array, truth, window=WINDOW)
    result = propagate(_volume(truth), seg, WINDOW, 14, truth[14], FULL)
    np.testing.assert_array_equal(result.mask, truth)
    assert result.slice_range == (8, 21)
    assert "ended" in result.stop_reasons["up"] and "ended" in result.stop_reasons["down"]
    # each visited slice encoded once: the structure's slices plus the one empty slice past each end,
    # except the key slice, whose mask was given
    assert sorted(seg.encoded) == [k for k in range(7, 23) if k != 14]


def test_stops_on_low_confidence_and_reports_why():
    truth = _cone()
    seg = oracle(_volume(truth).array, truth, scores={18: 0.1}, window=WINDOW)
    result = propagate(_volume(truth), seg, WINDOW, 14, truth[14], FULL)
    assert result.slice_range == (8, 17)
    assert "slice 18" in result.stop_reasons["up"] and "confidence" in result.stop_reasons["up"]


def test_stops_when_the_mask_leaks():
    truth = _cone()
    leaked = truth.copy()
    leaked[17, 5:60, 5:60] = True  # slice 17 suddenly covers most of the field
    seg = oracle(_volume(truth).array, leaked, window=WINDOW)
    result = propagate(
        _volume(truth), seg, WINDOW, 14, truth[14], PropagationConfig(skip=1, margin_fraction=3.0, tissue_quantile=None)
    )
    assert result.slice_range == (8, 16)
    assert "leak" in result.stop_reasons["up"]


def test_stops_when_the_box_slides_onto_another_structure():
    truth = _cone()
    moved = truth.copy()
    moved[17] = False
    moved[17, 40:50, 12:22] = True  # inside the grown box, but not where the structure was
    seg = oracle(_volume(truth).array, moved, window=WINDOW)
    result = propagate(
        _volume(truth), seg, WINDOW, 14, truth[14], PropagationConfig(skip=1, margin_fraction=1.0, tissue_quantile=None)
    )
    assert result.slice_range == (8, 16)
    assert "moved away" in result.stop_reasons["up"]


def test_a_leak_into_another_tissue_is_cut_away_and_propagation_goes_on():
    truth = _cone()
    leaked = truth.copy()
    leaked[17, 5:60, 5:60] = True  # the model fills its box with the (darker) neighbourhood on slice 17
    seg = oracle(_volume(truth).array, leaked, window=WINDOW)
    result = propagate(_volume(truth), seg, WINDOW, 14, truth[14], PropagationConfig(skip=1, margin_fraction=3.0))
    np.testing.assert_array_equal(result.mask, truth)


def test_a_leak_into_the_same_tissue_still_stops_on_the_growth_rule():
    truth = _cone()
    leaked = truth.copy()
    leaked[17, 5:60, 5:60] = True
    volume = _volume(leaked)  # the neighbourhood has the structure's own value: nothing to cut by
    result = propagate(
        volume,
        oracle(volume.array, leaked, window=WINDOW),
        WINDOW,
        14,
        truth[14],
        PropagationConfig(skip=1, margin_fraction=3.0),
    )
    assert result.slice_range == (8, 16)
    assert "leak" in result.stop_reasons["up"]


def test_a_tissue_cut_keeps_only_the_parts_touching_the_previous_slice():
    truth = _cone()
    volume_truth = truth.copy()
    volume_truth[16, 2:6, 2:6] = True  # same tissue, inside the grown box, not connected to the structure
    seg = oracle(_volume(volume_truth).array, volume_truth, window=WINDOW)
    result = propagate(
        _volume(volume_truth), seg, WINDOW, 14, truth[14], PropagationConfig(skip=1, margin_fraction=3.0)
    )
    assert not result.mask[16, 2:6, 2:6].any()
    assert result.mask[16].sum() == truth[16].sum()


def test_a_small_structure_is_not_ended_by_an_absolute_pixel_count():
    truth = np.zeros((12, 32, 32), dtype=bool)
    truth[2:10, 14:17, 14:17] = True  # 9 pixels a slice: a small structure at low resolution
    result = propagate(_volume(truth), oracle(_volume(truth).array, truth, window=WINDOW), WINDOW, 5, truth[5], FULL)
    assert result.slice_range == (2, 9)


def test_reaches_the_volume_ends_and_honours_the_slice_limit():
    truth = _cone(nk=12, first=0, last=11)
    result = propagate(_volume(truth), oracle(_volume(truth).array, truth, window=WINDOW), WINDOW, 5, truth[5], FULL)
    assert result.slice_range == (0, 11)
    assert result.stop_reasons == {"up": "reached the end of the volume", "down": "reached the end of the volume"}
    limited = propagate(
        _volume(truth),
        oracle(_volume(truth).array, truth, window=WINDOW),
        WINDOW,
        5,
        truth[5],
        PropagationConfig(skip=1, max_slices=4),
    )
    assert int(limited.mask.any(axis=(1, 2)).sum()) == 4


def test_largest_component_drops_islands():
    mask = np.zeros((5, 10, 10), dtype=bool)
    mask[1:4, 2:6, 2:6] = True
    mask[0, 9, 9] = True
    kept = largest_component(mask)
    assert kept.sum() == 48 and not kept[0, 9, 9]
    diagonal = np.zeros((2, 3, 3), dtype=bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = True  # 26-connected: one component
    assert largest_component(diagonal).sum() == 2


def test_segment_target_without_propagation_touches_one_slice():
    truth = _cone()
    seg = oracle(_volume(truth).array, truth, window=WINDOW)
    result = segment_target(_volume(truth), seg, WINDOW, VoxelPrompt(k=14, box=(10, 10, 60, 50)), propagate_3d=False)
    assert seg.encoded == [14]
    np.testing.assert_array_equal(result.mask[14], truth[14])
    assert result.mask.sum() == truth[14].sum() and result.propagation is None


def test_second_prompt_on_a_slice_reuses_the_embedding():
    truth = _cone()
    seg = oracle(_volume(truth).array, truth, window=WINDOW)
    volume = _volume(truth)
    segment_target(volume, seg, WINDOW, VoxelPrompt(k=14, box=(10, 10, 60, 50)), propagate_3d=False)
    segment_target(volume, seg, WINDOW, VoxelPrompt(k=14, box=(20, 15, 50, 45)), propagate_3d=False)
    assert seg.stats.encoder_calls == 1 and seg.stats.cache_hits == 1


@pytest.mark.slow
def test_real_litemedsam_propagation_on_real_ct(shared_ct, litemedsam):
    """Spleen from a reference box on its largest slice, propagated with LiteMedSAM over 7 slices (to keep CI
    fast; benchmarks/propagation.py runs the whole volume): Dice against the reference on those slices."""
    from support.ct_reference import reference_on_ct_grid

    from MedSegReasoning.volume import default_window, load_volume

    volume = load_volume(shared_ct / "dicom")
    spleen = reference_on_ct_grid(shared_ct, volume, "spleen")
    k = int(np.argmax(spleen.sum(axis=(1, 2))))
    rows, cols = np.nonzero(spleen[k])
    prompt = VoxelPrompt(k=k, box=(int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())))
    before = litemedsam.stats.encoder_calls
    result = segment_target(
        volume, litemedsam, default_window(volume), prompt, config=PropagationConfig(skip=1, max_slices=7)
    )
    visited = result.propagation.visited_slices
    assert len(visited) == 7 and k in visited
    assert litemedsam.stats.encoder_calls - before <= len(visited), "a visited slice was encoded twice"
    assert result.propagation.slice_range == (min(visited), max(visited))
    truth = spleen[min(visited) : max(visited) + 1]
    got = result.mask[min(visited) : max(visited) + 1]
    dice = 2 * np.logical_and(got, truth).sum() / (got.sum() + truth.sum())
    assert dice > 0.9, f"3D Dice {dice:.3f} for the spleen on slices {visited}"


def test_largest_component_matches_labelling_the_whole_grid():
    """Labelling only the mask's bounding box gives exactly what labelling the whole volume gives."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    for _ in range(5):
        mask = np.zeros((12, 40, 48), dtype=bool)
        mask[2:10, 5:30, 8:40] = rng.random((8, 25, 32)) > 0.55
        mask[0, 0, 0] = mask[11, 39, 47] = True  # islands at the grid's corners stretch the box to the whole grid
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        np.testing.assert_array_equal(largest_component(mask), labels == np.argmax(sizes))
        inner = mask.copy()
        inner[0, 0, 0] = inner[11, 39, 47] = False
        labels, _ = ndimage.label(inner, structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        np.testing.assert_array_equal(largest_component(inner), labels == np.argmax(sizes))
