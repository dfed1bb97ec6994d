"""The one in-memory image type of the engine, and its geometry convention.

Convention (written once, used everywhere, also on the wire to Slicer):
- ``Volume.array`` is C-ordered and indexed ``[k, j, i]``: slice, row, column, exactly as
  ``SimpleITK.GetArrayFromImage`` returns it and as DICOM stores a sorted series.
- Geometry is in LPS millimetres, like DICOM and ITK: ``origin`` is the centre of voxel ``(i, j, k) = (0, 0, 0)``,
  ``spacing`` is ``(si, sj, sk)`` and ``direction`` is a 3x3 matrix whose *columns* are the unit vectors of the
  i, j and k axes. A voxel's position is ``origin + direction @ (spacing * (i, j, k))``.
- For a DICOM series, k follows the slice normal (row direction x column direction), as ITK sorts it.

RAS (Slicer, NIfTI's own header) is converted at the boundary that reads or writes it and nowhere else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Geometry:
    """Where each voxel of a ``[k, j, i]`` array lies in LPS space."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]  # row-major 3x3, columns = i, j, k axes

    @staticmethod
    def from_arrays(origin, spacing, direction) -> Geometry:
        d = np.asarray(direction, dtype=float).reshape(3, 3)
        return Geometry(
            origin=tuple(float(x) for x in np.asarray(origin, dtype=float).reshape(3)),
            spacing=tuple(float(x) for x in np.asarray(spacing, dtype=float).reshape(3)),
            direction=tuple(tuple(float(x) for x in row) for row in d),
        )

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


@dataclass(frozen=True)
class DicomSeriesInfo:
    """The DICOM identity of a volume, kept so derived objects (SEG, SR) can reference their source.

    ``files[k]`` and ``sop_instance_uids[k]`` belong to slice k of the volume. For a multi-frame object,
    ``files`` has a single entry and ``frame_numbers[k]`` (1-based) names slice k's frame.
    """

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    files: tuple[str, ...]
    modality: str
    frame_numbers: tuple[int, ...] = ()

    @property
    def is_multiframe(self) -> bool:
        return bool(self.frame_numbers)


@dataclass(frozen=True)
class VolumeSource:
    """Where a volume came from: ``kind`` is one of dicom-series, dicom-file, nifti, nrrd, array."""

    kind: str
    path: str
    dicom: DicomSeriesInfo | None = None


@dataclass
class Volume:
    """Voxels (``[k, j, i]``, modality units: HU for CT) plus geometry and provenance."""

    array: np.ndarray
    geometry: Geometry
    modality: str = ""
    source: VolumeSource = field(default_factory=lambda: VolumeSource(kind="array", path=""))
    _hash: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a Volume needs a 3D [k, j, i] array, got shape {self.array.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(nk, nj, ni)``: slices, rows, columns."""
        return tuple(int(x) for x in self.array.shape)  # type: ignore[return-value]

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """``(ni, nj, nk)``: the order ITK and the CLI's indices use."""
        nk, nj, ni = self.shape
        return ni, nj, nk

    def content_hash(self) -> str:
        """SHA-256 of voxels and geometry: identifies the volume in caches and sessions, whatever its path."""
        if self._hash is None:
            h = hashlib.sha256()
            arr = np.ascontiguousarray(self.array)
            h.update(str(arr.dtype).encode())
            h.update(np.asarray(arr.shape, dtype=np.int64).tobytes())
            h.update(np.asarray(self.geometry.affine, dtype=np.float64).round(6).tobytes())
            h.update(memoryview(arr).cast("B"))
            self._hash = h.hexdigest()
        return self._hash

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.geometry.spacing)) / 1000.0

    @property
    def display_name(self) -> str:
        return Path(self.source.path).name or "volume"


# ---------------------------------------------------------------------------------------------------------------
# Re-sliced views: a coronal or sagittal plane as "slice k" of a volume whose axes are permuted


Orientation = Literal["axial", "coronal", "sagittal"]
"""A plane of the volume: the one orientation type of the engine (targets, views, prompts, corrections)."""
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


def plane_volume(volume: Volume, orientation: str, *, superior_up: bool = False) -> Volume:
    """``volume`` re-sliced so that its slices are planes of ``orientation``: a view, never a resampling.

    Why: the segmenter, its embedding cache and the propagation all work on "slice k of a Volume" (image row = j,
    column = i). A coronal plane (fixed j) becomes exactly that once the array axes are permuted to ``[j, k, i]``
    (sagittal: ``[i, k, j]``), so the whole axial machinery runs unchanged on the view and its masks come back by
    the inverse permutation (``from_plane_array``). With ``superior_up`` (only where k points superior, see
    ``flips_to_superior_up``) the rows are reversed as well, so the image shows the head at the top, as the
    reasoner's views do. The array is a numpy view (no copy); origin, spacing and direction columns are permuted
    (and the row axis negated) with the axes, so every voxel keeps its physical LPS position (the view's direction
    may be left-handed: that is fine, it only names axes). The content hash is the volume's own with the
    orientation appended, so embeddings of coronal slices can never be mistaken for axial ones of the same index.
    Axial returns ``volume`` itself.
    """
    axes = plane_array_axes(orientation)
    if orientation == "axial":
        return volume
    # array axis a holds index (i, j, k)[2 - a]; the view's index n (i', j', k') is its array axis 2 - n
    ijk_of = [2 - axes[2 - n] for n in range(3)]
    g = volume.geometry
    direction = g.direction_matrix[:, ijk_of]
    spacing = np.asarray(g.spacing)[ijk_of]
    array = np.transpose(volume.array, axes)
    origin = np.asarray(g.origin, dtype=float)
    flip = superior_up and flips_to_superior_up(volume, orientation)
    if flip:
        array = array[:, ::-1, :]
        origin = origin + direction[:, 1] * spacing[1] * (array.shape[1] - 1)  # the view's row 0 is the last k
        direction[:, 1] = -direction[:, 1]
    view = Volume(array, Geometry.from_arrays(origin, spacing, direction), volume.modality, volume.source)
    tag = f"{orientation}{':superior-up' if flip else ''}"
    view._hash = hashlib.sha256(f"{volume.content_hash()}:{tag}".encode()).hexdigest()
    return view


def flips_to_superior_up(volume: Volume, orientation: str) -> bool:
    """True when a coronal/sagittal plane (rows = k) must be reversed to show superior at the top: k points
    superior (+z in LPS), as for DICOM series sorted along an axial normal. The rule of ``reasoning.views``."""
    return orientation != "axial" and float(volume.geometry.direction_matrix[2, 2]) > 0.0


def from_plane_array(array: np.ndarray, orientation: str, *, flipped: bool = False) -> np.ndarray:
    """An array on a ``plane_volume`` view's grid (e.g. a mask) back on the volume's ``[k, j, i]`` grid.

    ``flipped``: the view was made with its rows reversed (``superior_up`` where ``flips_to_superior_up``)."""
    if flipped:
        array = array[:, ::-1, :]
    return np.transpose(array, np.argsort(plane_array_axes(orientation)))


def plane_shape(shape_kji: tuple[int, int, int], orientation: str) -> tuple[int, int, int]:
    """``(slices along the normal, n_v rows, n_u columns)`` of ``orientation``'s planes for a ``[k, j, i]`` shape."""
    a, b, c = plane_array_axes(orientation)
    return (shape_kji[a], shape_kji[b], shape_kji[c])
