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
