"""The geometry convention both processes speak: ``[k, j, i]`` arrays, LPS millimetres, plane orientations.

Convention (written once, used everywhere, also on the wire to Slicer):
- Arrays are C-ordered and indexed ``[k, j, i]``: slice, row, column, exactly as
  ``SimpleITK.GetArrayFromImage`` returns it and as DICOM stores a sorted series.
- Geometry is in LPS millimetres, like DICOM and ITK: ``origin`` is the centre of voxel ``(i, j, k) = (0, 0, 0)``,
  ``spacing`` is ``(si, sj, sk)`` and ``direction`` is a 3x3 matrix whose *columns* are the unit vectors of the
  i, j and k axes. A voxel's position is ``origin + direction @ (spacing * (i, j, k))``.
- For a DICOM series, k follows the slice normal (row direction x column direction), as ITK sorts it.

RAS (Slicer, NIfTI's own header) is converted at the boundary that reads or writes it and nowhere else
(``LPS_TO_RAS``). A plane of a view (axial, coronal, sagittal) has a normal and two in-plane axes (u, v); the
helpers below name them once, for the engine's re-sliced views (``volume.core.plane_volume``) and for the Slicer
side's boxes and clicks alike. Numpy only: the Slicer side imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _triple(values: Any) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in np.asarray(values, dtype=float).reshape(3))
    return x, y, z


@dataclass(frozen=True)
class Geometry:
    """Where each voxel of a ``[k, j, i]`` array lies in LPS space."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]  # row-major 3x3, columns = i, j, k axes

    @staticmethod
    def from_arrays(origin: Any, spacing: Any, direction: Any) -> Geometry:
        d = np.asarray(direction, dtype=float).reshape(3, 3)
        return Geometry(origin=_triple(origin), spacing=_triple(spacing), direction=tuple(_triple(row) for row in d))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.array(self.direction, dtype=float)

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous ``(i, j, k, 1)`` to LPS millimetres."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous ``(i, j, k)`` indices (N x 3) to LPS points (N x 3)."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def physical_to_index(self, lps: np.ndarray) -> np.ndarray:
        """LPS points (N x 3) to continuous ``(i, j, k)`` indices (N x 3)."""
        lps = np.atleast_2d(np.asarray(lps, dtype=float))
        inv = np.linalg.inv(self.affine)
        return lps @ inv[:3, :3].T + inv[:3, 3]

    @property
    def slice_normal(self) -> np.ndarray:
        return self.direction_matrix[:, 2]

    def is_close(self, other: Geometry, tol_mm: float = 1e-3) -> bool:
        """Same grid within ``tol_mm`` (origin) and a small relative tolerance (axes, spacing)."""
        return (
            np.allclose(self.origin, other.origin, atol=tol_mm)
            and np.allclose(self.spacing, other.spacing, rtol=1e-4, atol=1e-6)
            and np.allclose(self.direction_matrix, other.direction_matrix, atol=1e-4)
        )


# ---------------------------------------------------------------------------------------------------------------
# Plane orientations: a coronal or sagittal plane as "slice k" of a view whose axes are permuted


Orientation = Literal["axial", "coronal", "sagittal"]
"""A plane of the volume: the one orientation type of the wire and the engine (targets, views, prompts,
corrections, the server's requests); ``volume.core`` re-exports it."""
PLANE_ORIENTATIONS: tuple[Orientation, ...] = get_args(Orientation)
# The volume's array axes ([k, j, i] = 0, 1, 2) that become the view's [k', j', i']: axis 0 is the plane's normal,
# the rows are the plane's second axis (v) and the columns its first (u), as in ``reasoning.answer.Target``:
# axial (u, v) = (i, j), coronal (i, k), sagittal (j, k).
_PLANE_ARRAY_AXES: dict[str, tuple[int, int, int]] = {
    "axial": (0, 1, 2),
    "coronal": (1, 0, 2),
    "sagittal": (2, 0, 1),
}


def plane_array_axes(orientation: str) -> tuple[int, int, int]:
    """The array axes of ``[k, j, i]`` that a plane view of ``orientation`` puts first, second and third."""
    try:
        return _PLANE_ARRAY_AXES[orientation]
    except KeyError:
        raise ValueError(f"unknown orientation '{orientation}': use axial, coronal or sagittal") from None


def plane_ijk_axes(orientation: str) -> tuple[int, int, int]:
    """Positions in an ``(i, j, k)`` triple of a plane's normal, its first (u) and its second (v) axis."""
    normal, rows, columns = plane_array_axes(orientation)
    return 2 - normal, 2 - columns, 2 - rows


def plane_to_ijk(orientation: str, index: int, u: int, v: int) -> tuple[int, int, int]:
    """Point ``(u, v)`` of plane ``index`` of ``orientation`` as volume indices ``(i, j, k)``."""
    normal, u_axis, v_axis = plane_ijk_axes(orientation)
    ijk = [0, 0, 0]
    ijk[normal], ijk[u_axis], ijk[v_axis] = index, u, v
    return ijk[0], ijk[1], ijk[2]


def plane_shape(shape_kji: tuple[int, int, int], orientation: str) -> tuple[int, int, int]:
    """``(slices along the normal, n_v rows, n_u columns)`` of ``orientation``'s planes for a ``[k, j, i]`` shape."""
    a, b, c = plane_array_axes(orientation)
    return (shape_kji[a], shape_kji[b], shape_kji[c])
