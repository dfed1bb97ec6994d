"""Windows and slice rendering: presets, one percentile window per volume, orientation, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from MedSegReasoning.volume import WINDOW_PRESETS, Window, default_window, render_slice
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.volume.windowing import percentile_window, window_by_name
from MedSegReasoning.wire.errors import InputError

GRID = Geometry.from_arrays((0, 0, 0), (1, 1, 1), np.eye(3))


def _volume(array: np.ndarray, modality: str = "") -> Volume:
    return Volume(array=array, geometry=GRID, modality=modality)


def test_ct_presets_have_the_usual_level_and_width():
    expected = {"ct-soft-tissue": (40, 400), "ct-lung": (-600, 1500), "ct-bone": (400, 1800), "ct-brain": (40, 80)}
    assert {name: (w.level, w.width) for name, w in WINDOW_PRESETS.items()} == expected
    assert WINDOW_PRESETS["ct-soft-tissue"].lower == -160 and WINDOW_PRESETS["ct-soft-tissue"].upper == 240


def test_window_keys_are_stable_and_distinct():
    assert Window("x", 40.0, 400.0).key == Window("x", 40.00000000001, 400.0).key
    keys = {w.key for w in WINDOW_PRESETS.values()}
    assert len(keys) == len(WINDOW_PRESETS)
    with pytest.raises(ValueError):
        Window("bad", 0.0, 0.0)


def test_default_window_is_soft_tissue_for_ct_and_percentiles_otherwise():
    rng = np.random.default_rng(0)
    ct = _volume(rng.integers(-1024, 1500, size=(4, 32, 32)).astype(np.int16), "CT")
    assert default_window(ct) == WINDOW_PRESETS["ct-soft-tissue"]
    mr = _volume(rng.integers(0, 4000, size=(4, 32, 32)).astype(np.int16), "MR")
    assert default_window(mr).name == "percentile"


def test_unlabelled_volume_with_air_at_minus_1000_is_treated_as_ct():
    """NIfTI/NRRD carry no modality; Hounsfield air gives a CT away."""
    array = np.full((4, 32, 32), -1000, dtype=np.int16)
    array[:, 8:24, 8:24] = 40
    assert default_window(_volume(array)) == WINDOW_PRESETS["ct-soft-tissue"]
    assert default_window(_volume(np.abs(array))).name == "percentile"


def test_mr_percentiles_come_from_the_whole_volume_not_the_slice():
    array = np.zeros((3, 100, 100), dtype=np.float32)
    array[0] = np.linspace(0, 100, 10_000).reshape(100, 100)  # a dim slice
    array[2] = np.linspace(0, 1000, 10_000).reshape(100, 100)  # a bright slice
    window = percentile_window(_volume(array, "MR"))
    all_values = array.ravel()
    assert window.lower == pytest.approx(np.percentile(all_values, 0.5))
    assert window.upper == pytest.approx(np.percentile(all_values, 99.5))
    dim = render_slice(_volume(array, "MR"), 0, window)
    assert dim.max() < 60  # the dim slice stays dim: one mapping for all slices


def test_percentiles_of_a_large_volume_are_subsampled_but_close():
    rng = np.random.default_rng(1)
    array = rng.normal(500, 100, size=(40, 256, 256)).astype(np.float32)
    start = time.perf_counter()
    window = percentile_window(_volume(array, "MR"))
    assert time.perf_counter() - start < 1.0
    assert window.lower == pytest.approx(np.percentile(array, 0.5), rel=0.02)
    assert window.upper == pytest.approx(np.percentile(array, 99.5), rel=0.02)


def test_constant_volume_gets_a_usable_window():
    window = percentile_window(_volume(np.full((2, 8, 8), 7.0, dtype=np.float32), "MR"))
    assert window.width > 0
    assert render_slice(_volume(np.full((2, 8, 8), 7.0, dtype=np.float32)), 0, window).dtype == np.uint8


def test_window_by_name():
    volume = _volume(np.zeros((2, 8, 8), dtype=np.int16), "CT")
    assert window_by_name("CT-Lung", volume) == WINDOW_PRESETS["ct-lung"]
    assert window_by_name("default", volume) == WINDOW_PRESETS["ct-soft-tissue"]
    assert window_by_name("percentile", volume).name == "percentile"
    assert (window_by_name("50,350", volume).level, window_by_name("50,350", volume).width) == (50, 350)
    with pytest.raises(InputError, match="unknown window 'liver': use one of ct-soft-tissue, ct-lung, ct-bone"):
        window_by_name("liver", volume)
    with pytest.raises(InputError, match="positive width"):
        window_by_name("40,-5", volume)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float32, np.float64, np.uint8])
def test_render_slice_orientation_and_mapping(dtype):
    array = np.zeros((3, 6, 9), dtype=dtype)
    array[1, 2, 5] = 200  # i=5, j=2
    image = render_slice(_volume(array), 1, Window("w", 100.0, 200.0))  # [0, 200] -> [0, 255]
    assert image.shape == (6, 9, 3) and image.dtype == np.uint8
    assert tuple(image[2, 5]) == (255, 255, 255)
    assert image.sum() == 3 * 255  # nothing else lit: no flip, no transpose
    values = [0, 50, 100, 200, 250] if np.issubdtype(dtype, np.unsignedinteger) else [-100, 50, 100, 200, 300]
    ramp = _volume(np.array([[values]], dtype=dtype))
    expected = [0, 64, 128, 255, 255]  # 50 -> 63.75, 100 -> 127.5: round half up
    assert list(render_slice(ramp, 0, Window("w", 100.0, 200.0))[0, :, 0]) == expected


def test_render_slice_out_of_range():
    with pytest.raises(InputError, match="slice 3 is outside the volume, which has slices 0 to 2"):
        render_slice(_volume(np.zeros((3, 4, 4), np.int16)), 3, WINDOW_PRESETS["ct-bone"])


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_render_slice_is_fast(dtype):
    rng = np.random.default_rng(2)
    volume = _volume(rng.integers(-1024, 2000, size=(2, 512, 512)).astype(dtype), "CT")
    window = WINDOW_PRESETS["ct-soft-tissue"]
    render_slice(volume, 0, window)  # warm the lookup table
    start = time.perf_counter()
    for _ in range(10):
        render_slice(volume, 1, window)
    per_slice_ms = (time.perf_counter() - start) * 100
    assert per_slice_ms < 15, f"{per_slice_ms:.1f} ms per 512x512 slice"
