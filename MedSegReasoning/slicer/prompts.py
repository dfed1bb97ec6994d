"""What goes with a question from the slice views: the view's plane and slice, and the user's clicks and boxes.

Slicer places markups in RAS (world) coordinates; the backend wants voxel indices of the uploaded ``[k, j, i]``
array. The conversion runs through the input volume's own RAS-to-IJK matrix, so it is right for oblique and
flipped volumes too. A slice view's orientation is named after the *volume* axis its normal is closest to (k:
axial, j: coronal, i: sagittal), because that is the plane the engine renders and segments; for an oblique volume
Slicer's "Axial" view may cut it at an angle, and the nearest voxel plane is what "this slice" means to the engine.

The functions here take plain matrices and coordinates (tested without the application); ``*_of_nodes`` read them
from MRML nodes, which ``slicer-core`` provides in tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..wire.geometry import PLANE_ORIENTATIONS, plane_ijk_axes

# volume axis (position in an (i, j, k) triple) -> the plane whose normal it is
_PLANE_OF_AXIS = {plane_ijk_axes(name)[0]: name for name in PLANE_ORIENTATIONS}


def ras_to_ijk(ras_to_ijk_matrix: np.ndarray, points_ras: np.ndarray) -> np.ndarray:
    """``(n, 3)`` RAS points as continuous ``(i, j, k)`` indices (voxel centres at integers)."""
    points = np.atleast_2d(np.asarray(points_ras, dtype=float))
    homogeneous = np.c_[points, np.ones(len(points))]
    return (np.asarray(ras_to_ijk_matrix, dtype=float) @ homogeneous.T).T[:, :3]


def view_context(
    slice_to_ras: np.ndarray, ras_to_ijk_matrix: np.ndarray, shape_kji: Sequence[int]
) -> dict[str, Any] | None:
    """``{"orientation", "slice"}`` of a slice view for the volume, or None when its centre lies outside it."""
    slice_to_ras = np.asarray(slice_to_ras, dtype=float)
    normal_ijk = np.asarray(ras_to_ijk_matrix, dtype=float)[:3, :3] @ slice_to_ras[:3, 2]
    # voxel indices are not isotropic in mm: compare directions per voxel step, after normalising each axis' step
    axis = int(np.argmax(np.abs(normal_ijk) / np.linalg.norm(np.asarray(ras_to_ijk_matrix)[:3, :3], axis=1)))
    centre = ras_to_ijk(ras_to_ijk_matrix, slice_to_ras[:3, 3])[0]
    index = int(round(float(centre[axis])))
    size = int(shape_kji[2 - axis])
    if not 0 <= index < size:
        return None
    return {"orientation": _PLANE_OF_AXIS[axis], "slice": index}


def roi_corners_ras(object_to_world: np.ndarray, size: Sequence[float]) -> np.ndarray:
    """The 8 corners (RAS) of a markups ROI from its object-to-world matrix and size (a rotated ROI too)."""
    half = np.asarray(size, dtype=float) / 2.0
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    corners = np.c_[signs * half, np.ones(8)]
    return (np.asarray(object_to_world, dtype=float) @ corners.T).T[:, :3]


def prompts_from_markups(
    include_ras: Iterable[Sequence[float]],
    exclude_ras: Iterable[Sequence[float]],
    roi_corners: Iterable[np.ndarray],
    ras_to_ijk_matrix: np.ndarray,
    shape_kji: Sequence[int],
) -> dict[str, list]:
    """The chat's ``prompts`` context (``BackendLink``'s format): points ``[i, j, k, label]`` and boxes
    ``[i0, j0, k0, i1, j1, k1]`` in voxel indices, each ROI as the voxel box around its corners. Markups outside
    the volume are left out (clipped for boxes) rather than sent as indices the server would refuse."""
    limits = np.array([shape_kji[2], shape_kji[1], shape_kji[0]]) - 1
    points: list[list[int]] = []
    for label, positions in ((1, include_ras), (0, exclude_ras)):
        for position in positions:
            ijk = np.rint(ras_to_ijk(ras_to_ijk_matrix, np.asarray(position, dtype=float))[0]).astype(int)
            if np.all(ijk >= 0) and np.all(ijk <= limits):
                points.append([*(int(v) for v in ijk), label])
    boxes: list[list[int]] = []
    for corners in roi_corners:
        ijk = ras_to_ijk(ras_to_ijk_matrix, corners)
        low, high = ijk.min(axis=0), ijk.max(axis=0)
        if np.any(high < -0.5) or np.any(low > limits + 0.5):
            continue  # wholly outside the volume
        # the voxels whose centres lie inside the box; along an axis where the box is thinner than a voxel and
        # holds no centre (a box drawn on one slice), the voxel nearest its middle
        lo, hi = np.ceil(low - 1e-6), np.floor(high + 1e-6)
        thin = lo > hi
        lo[thin] = hi[thin] = np.rint((low[thin] + high[thin]) / 2.0)
        lo, hi = np.clip(lo, 0, limits).astype(int), np.clip(hi, 0, limits).astype(int)
        boxes.append([*(int(v) for v in lo), *(int(v) for v in hi)])
    return {"points": points, "boxes": boxes}


# -- from MRML nodes ----------------------------------------------------------------------------------------------------


def _matrix(vtk_matrix: Any) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def ras_to_ijk_of_volume(volume_node: Any) -> np.ndarray:
    """The volume node's RAS-to-IJK matrix (its parent transforms must be hardened first, as for scene writing)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(m)
    return _matrix(m)


def control_points_ras(node: Any) -> list[list[float]]:
    """World positions of a point list's control points (an absent node: none)."""
    if node is None:
        return []
    out = []
    for n in range(node.GetNumberOfControlPoints()):
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(n, position)
        out.append(position)
    return out


def roi_corners_of_node(roi_node: Any) -> np.ndarray:
    return roi_corners_ras(_matrix(roi_node.GetObjectToWorldMatrix()), list(roi_node.GetSize()))


def view_context_of_slice_node(slice_node: Any, volume_node: Any, shape_kji: Sequence[int]) -> dict | None:
    return view_context(_matrix(slice_node.GetSliceToRAS()), ras_to_ijk_of_volume(volume_node), shape_kji)
