"""The checks of ``slicer/test_slicer_offscreen_view.py``, run in a child process by that test.

Why a child: rendering loads Mesa's llvmpipe (its own LLVM) into the process; torch's later import of triton (its own
LLVM) in the same pytest process then crashes it (segfault). The product never has both: the Slicer side never
imports torch.

The expected pixels are computed without the code under test: each pixel centre goes through the slice node's
XY->RAS matrix and the volume node's RAS->IJK matrix (both Slicer's, the volume read by Slicer's NRRD reader) to the
voxel it shows, and the mask says whether that voxel is in the segment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from MedSegReasoning.wire.masks import CompactMask

from .slicer import flipped_geometry, load_volume_node, new_scene, require_slicer_core, write_nrrd_lps

SHAPE = (6, 20, 24)
K = 3
COLOR = (40, 220, 90)


def _l_shape() -> np.ndarray:
    """An asymmetric L on slices 2-4: a mirror or a swap of axes would not cover the same pixels."""
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2:5, 4:15, 2:6] = True
    mask[2:5, 11:15, 6:12] = True
    return mask


def _scene(tmp_path: Path, mask: np.ndarray, markups: bool, segments: bool):
    require_slicer_core()
    import vtk

    from MedSegReasoning.slicer.scene import SceneEntity, SessionScene

    scene = new_scene()
    volume = load_volume_node(scene, write_nrrd_lps(tmp_path / "v.nrrd", np.zeros(SHAPE, np.int32), flipped_geometry()))
    session = SessionScene.create(scene, volume, "S1")
    session.write_entity(SceneEntity("E1", "lesion", CompactMask.from_dense(mask), COLOR, K, "a finding"))
    session.segmentation_node.GetDisplayNode().SetVisibility(segments)
    session.markup_node("E1").GetDisplayNode().SetVisibility(markups)
    m = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(m)
    ras_to_ijk = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    return scene, volume, session, ras_to_ijk


def _voxel_centre_ras(volume, ijk) -> tuple[float, float, float]:
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    point = m.MultiplyPoint((*map(float, ijk), 1.0))
    return (point[0], point[1], point[2])


def _expected_pixels(snapshot, ras_to_ijk: np.ndarray, mask: np.ndarray) -> np.ndarray:
    height, width = snapshot.rgb.shape[:2]
    rows, cols = np.mgrid[0:height, 0:width]
    xy = np.c_[cols.ravel(), (height - 1 - rows).ravel(), np.zeros(rows.size), np.ones(rows.size)]
    ijk = (ras_to_ijk @ snapshot.xy_to_ras @ xy.T).T[:, :3]
    index = np.floor(ijk + 0.5).astype(int)  # the voxel whose centre is nearest
    inside = np.all((index >= 0) & (index < np.array(SHAPE)[::-1]), axis=1)
    hit = np.zeros(rows.size, dtype=bool)
    i, j, k = index[inside].T
    hit[np.flatnonzero(inside)] = mask[k, j, i]
    return hit.reshape(height, width)


def check_segment_on_voxels(tmp_path: Path) -> None:
    from MedSegReasoning.slicer.offscreen_view import render_slice_view

    mask = _l_shape()
    scene, volume, _, ras_to_ijk = _scene(tmp_path, mask, markups=False, segments=True)
    snapshot = render_slice_view(scene, volume, _voxel_centre_ras(volume, (12, 10, K)), size=(400, 360))
    drawn = snapshot.rgb.max(axis=2) > 30  # the volume is 0 (black): every lit pixel is the segment's drawing
    assert drawn.any(), "nothing was drawn"
    green = snapshot.rgb[drawn]
    assert np.all(green[:, 1] > green[:, 0]) and np.all(green[:, 1] > green[:, 2]), "not the segment's colour"
    expected = _expected_pixels(snapshot, ras_to_ijk, mask)
    voxel_px = expected.sum() / mask[K].sum()
    assert voxel_px > 100, "voxels must be many pixels wide for a pixel-level check"
    iou = (drawn & expected).sum() / (drawn | expected).sum()
    boundary = expected ^ ndimage.binary_erosion(expected)
    distance = ndimage.distance_transform_edt(~boundary)
    worst = float(distance[drawn ^ expected].max()) if (drawn ^ expected).any() else 0.0
    assert iou > 0.95 and worst <= 2.0, (iou, worst)
    mirrored = _expected_pixels(snapshot, ras_to_ijk, mask[:, :, ::-1])
    assert (drawn & mirrored).sum() / (drawn | mirrored).sum() < 0.2  # the check tells a flip apart


def check_markup_on_control_point(tmp_path: Path) -> None:
    from MedSegReasoning.slicer.offscreen_view import render_slice_view

    mask = _l_shape()
    scene, volume, session, _ = _scene(tmp_path, mask, markups=True, segments=False)
    markup = session.markup_node("E1")
    point = [0.0, 0.0, 0.0]
    markup.GetNthControlPointPosition(0, point)
    snapshot = render_slice_view(scene, volume, tuple(point), size=(400, 360))
    col, row = snapshot.ras_to_pixel(np.array(point))[0]
    drawn = snapshot.rgb.max(axis=2) > 30
    assert drawn.any(), "the markup was not drawn"
    labels, count = ndimage.label(drawn)
    sizes = ndimage.sum(drawn, labels, range(1, count + 1))
    glyph = labels == 1 + int(np.argmax(sizes))  # the point's glyph; its "E1" label is smaller text beside it
    rows, cols = np.nonzero(glyph)
    assert abs(cols.mean() - col) <= 2.0 and abs(rows.mean() - row) <= 2.0, (cols.mean(), rows.mean(), col, row)
    assert 10 < glyph.sum() < 2000  # a glyph, not the whole view


def check_unknown_orientation(tmp_path: Path) -> None:
    from MedSegReasoning.slicer.offscreen_view import render_slice_view

    scene, volume, _, _ = _scene(tmp_path, _l_shape(), markups=False, segments=True)
    try:
        render_slice_view(scene, volume, (0.0, 0.0, 0.0), orientation="Oblique")
    except ValueError as exc:
        assert "orientation" in str(exc), exc
    else:
        raise AssertionError("an unknown orientation was not refused")
