"""The one in-memory image type of the engine.

``Volume.array`` is C-ordered and indexed ``[k, j, i]`` (slice, row, column) with its ``Geometry`` in LPS
millimetres: the convention is the wire's (``wire.geometry``, written once and spoken by the Slicer side too), and
so is ``Volume.content_hash`` (``wire.hashing``). The geometry names are re-exported here because the engine's
readers and writers think of them as the volume's own; there is one definition of each.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..wire.geometry import (
    LPS_TO_RAS,
    PLANE_ORIENTATIONS,
    Geometry,
    Orientation,
    plane_array_axes,
    plane_ijk_axes,
    plane_shape,
    plane_to_ijk,
)
from ..wire.hashing import content_sha256


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
    # how many voxels were NaN/inf when read, now the finite minimum (``volume.finite``): front ends say so
    non_finite_voxels: int = field(default=0, compare=False)
    _hash: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a Volume needs a 3D [k, j, i] array, got shape {self.array.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(nk, nj, ni)``: slices, rows, columns."""
        nk, nj, ni = self.array.shape  # 3-D: checked in __post_init__
        return (int(nk), int(nj), int(ni))

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """``(ni, nj, nk)``: the order ITK and the CLI's indices use."""
        nk, nj, ni = self.shape
        return ni, nj, nk

    def content_hash(self) -> str:
        """SHA-256 of voxels and geometry: identifies the volume in caches and sessions, whatever its path."""
        if self._hash is None:
            self._hash = content_sha256(self.array, self.geometry.affine)
        return self._hash

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.geometry.spacing)) / 1000.0

    @property
    def display_name(self) -> str:
        return Path(self.source.path).name or "volume"


# ---------------------------------------------------------------------------------------------------------------
# Re-sliced views: a coronal or sagittal plane as "slice k" of a volume whose axes are permuted


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


__all__ = [
    "LPS_TO_RAS",
    "PLANE_ORIENTATIONS",
    "DicomSeriesInfo",
    "Geometry",
    "Orientation",
    "Volume",
    "VolumeSource",
    "flips_to_superior_up",
    "from_plane_array",
    "plane_array_axes",
    "plane_ijk_axes",
    "plane_shape",
    "plane_to_ijk",
    "plane_volume",
]
