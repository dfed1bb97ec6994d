"""DICOM → engine → DICOM-SEG → read back: the mask must come back on the same physical points.

The source series is oblique (rotated about two axes), flipped (rows run towards patient right, slices
towards the feet) and its files are shuffled, so any shortcut through array order or axis alignment fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.external_tools import dciodvfy_errors, dcmqi_read_segments

from MedSegReasoning.export.dicom_seg import AlgorithmInfo, SegmentSpec, write_dicom_seg
from MedSegReasoning.volume import load_volume, write_dicom_series
from MedSegReasoning.volume.core import Geometry, Volume
from MedSegReasoning.wire.errors import InputError


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    r = np.eye(3)
    p, q = [x for x in range(3) if x != axis]
    r[p, p], r[p, q], r[q, p], r[q, q] = c, -s, s, c
    return r


def oblique_flipped_geometry() -> Geometry:
    flip = np.diag([-1.0, 1.0, -1.0])  # rows towards patient right, slices towards the feet (det +1, as DICOM)
    direction = _rotation(0, 20.0) @ _rotation(2, -15.0) @ flip
    return Geometry.from_arrays(origin=(31.5, -12.25, 80.0), spacing=(0.8, 1.1, 2.5), direction=direction)


@pytest.fixture(scope="module")
def oblique_series(tmp_path_factory) -> tuple[Path, np.ndarray, Geometry]:
    rng = np.random.default_rng(7)
    nk, nj, ni = 6, 40, 48
    array = (rng.normal(40, 10, size=(nk, nj, ni))).astype(np.int16)
    geometry = oblique_flipped_geometry()
    folder = tmp_path_factory.mktemp("oblique") / "dicom"
    write_dicom_series(array, geometry, folder, modality="CT", shuffle_names=True, rng=rng)
    return folder, array, geometry


def _painted_mask(shape: tuple[int, int, int]) -> np.ndarray:
    """An asymmetric blob (no symmetry hides a flip) across slices 1..4, empty slices 0 and 5."""
    mask = np.zeros(shape, dtype=bool)
    mask[1:5, 5:15, 8:30] = True
    mask[2, 15:25, 8:12] = True
    mask[3, 30, 40] = True
    return mask


def _physical_points(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    return geometry.index_to_physical(np.stack([i, j, k], axis=1))


def _as_index_set(points: np.ndarray, geometry: Geometry) -> set[tuple[int, int, int]]:
    ijk = geometry.physical_to_index(points)
    assert np.allclose(ijk, np.round(ijk), atol=1e-3), "read-back voxels are not on the source grid"
    return {tuple(int(v) for v in row) for row in np.round(ijk).astype(int)}


def test_engine_reads_oblique_flipped_series_back(oblique_series):
    folder, array, geometry = oblique_series
    volume = load_volume(folder)
    assert volume.geometry.is_close(geometry)
    np.testing.assert_array_equal(volume.array, array)


def test_seg_round_trip_lands_on_same_physical_points(oblique_series, tmp_path):
    import highdicom as hd

    folder, _, geometry = oblique_series
    volume = load_volume(folder)
    mask = _painted_mask(volume.shape)
    seg_path = write_dicom_seg(
        volume, [SegmentSpec(number=1, label="blob", mask=mask)], tmp_path / "seg.dcm", AlgorithmInfo("test", "1")
    )
    expected = _as_index_set(_physical_points(mask, volume.geometry), geometry)

    seg = hd.seg.segread(seg_path)
    assert seg.preamble == b"\x00" * 128
    assert int(seg.NumberOfFrames) == 4, "empty slices must be left out"
    assert seg.SeriesDescription.endswith("research use only")
    hd_volume = seg.get_volume(segment_numbers=[1], combine_segments=False)
    hd_mask = np.asarray(hd_volume.array)[..., 0] > 0
    k_idx = np.stack(np.nonzero(hd_mask), axis=1)  # highdicom volume indices follow its own affine
    hd_points = k_idx @ hd_volume.affine[:3, :3].T + hd_volume.affine[:3, 3]
    assert _as_index_set(hd_points, geometry) == expected


def test_seg_is_valid_for_dciodvfy_and_dcmqi(oblique_series, tmp_path):
    import SimpleITK as sitk

    folder, _, geometry = oblique_series
    volume = load_volume(folder)
    mask = _painted_mask(volume.shape)
    seg_path = write_dicom_seg(
        volume, [SegmentSpec(number=1, label="blob", mask=mask)], tmp_path / "seg.dcm", AlgorithmInfo("test", "1")
    )
    assert dciodvfy_errors(seg_path) == []

    (nrrd,) = dcmqi_read_segments(seg_path, tmp_path / "dcmqi")
    image = sitk.ReadImage(str(nrrd))
    arr = sitk.GetArrayFromImage(image) > 0
    k, j, i = np.nonzero(arr)
    points = np.array(
        [image.TransformIndexToPhysicalPoint((int(a), int(b), int(c))) for a, b, c in zip(i, j, k, strict=True)]
    )
    assert _as_index_set(points, geometry) == _as_index_set(_physical_points(mask, volume.geometry), geometry)


def test_two_segments_keep_their_own_voxels(oblique_series, tmp_path):
    import highdicom as hd

    folder, _, _ = oblique_series
    volume = load_volume(folder)
    a = _painted_mask(volume.shape)
    b = np.zeros_like(a)
    b[2:4, 20:30, 30:40] = True
    b[2, 5:8, 8:12] = True  # overlaps segment 1: both must keep it
    write_dicom_seg(
        volume,
        [SegmentSpec(1, "first", a), SegmentSpec(2, "second", b, semiautomatic=False)],
        tmp_path / "seg.dcm",
        AlgorithmInfo("test", "1"),
    )
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["first", "second"]
    assert [d.SegmentAlgorithmType for d in seg.SegmentSequence] == ["SEMIAUTOMATIC", "AUTOMATIC"]
    for number, expected in ((1, a), (2, b)):
        got = seg.get_volume(segment_numbers=[number], combine_segments=False)
        assert int((np.asarray(got.array) > 0).sum()) == int(expected.sum())


def test_seg_refuses_non_dicom_input(tmp_path):
    volume = Volume(np.zeros((2, 4, 4), np.int16), Geometry.from_arrays((0, 0, 0), (1, 1, 1), np.eye(3)))
    with pytest.raises(InputError, match="DICOM-SEG needs a DICOM input"):
        write_dicom_seg(
            volume, [SegmentSpec(1, "x", np.ones((2, 4, 4), bool))], tmp_path / "s.dcm", AlgorithmInfo("t", "1")
        )
    assert not list(tmp_path.iterdir()), "nothing may be left behind"
