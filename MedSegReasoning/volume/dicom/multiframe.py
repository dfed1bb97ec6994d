"""Enhanced (and legacy-converted) multi-frame objects through highdicom, turned to the series convention (k along
the slice normal).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...wire.errors import InputError
from ..core import DicomSeriesInfo, Geometry, Volume, VolumeSource
from .header import _damaged_message, _Header, _sop_class_uid, _sop_instance_uid
from .pixels import _check_decodable, _compact

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Enhanced (multi-frame) objects through highdicom


def read_multiframe(path: Path) -> Volume:
    """An enhanced CT/MR (or legacy-converted) multi-frame object; k follows the slice normal like a series."""
    import highdicom as hd

    path = Path(path)
    try:
        image = hd.imread(str(path))
    except Exception as exc:
        raise InputError(_damaged_message(path, exc)) from exc
    _check_decodable([_Header(path=path, ds=image)])
    options: dict[str, Any] = dict(
        dtype=np.float32,
        apply_real_world_transform=False,  # CT must stay in HU even where a parametric map is attached
        apply_modality_transform=None,
        apply_presentation_lut=False,
        apply_palette_color_lut=False,
        apply_icc_profile=False,
    )
    try:
        hd_volume = image.get_volume(**options)
    except RuntimeError as exc:
        if "frame-of-reference" not in str(exc):
            raise InputError(_irregular_multiframe_message(path, exc)) from exc
        return _multiframe_without_geometry(path, image, options)
    except Exception as exc:
        raise InputError(_damaged_message(path, exc)) from exc
    if hd_volume.array.ndim != 3:
        raise InputError(f"{path} holds several values per voxel (colour or channels): give a greyscale volume.")
    hd_volume = _along_normal(hd_volume)
    frames = _frame_numbers(image, hd_volume)
    geometry = _geometry_from_affine(hd_volume.affine)
    return _multiframe_volume(path, image, hd_volume.array, geometry, frames)


def _irregular_multiframe_message(path: Path, exc: Exception) -> str:
    return (
        f"the frames of {path} do not form one regular 3D volume ({exc}); it may hold several time points, "
        "echoes or stacks: export a single 3D volume of it and give that."
    )


def _along_normal(hd_volume):
    """highdicom stacks right-handed in (slice, row, column); ITK and this engine stack along row x column."""
    affine = hd_volume.affine
    i_axis, j_axis, k_axis = affine[:3, 2], affine[:3, 1], affine[:3, 0]
    if np.dot(k_axis, np.cross(i_axis, j_axis)) < 0:
        return hd_volume.flip_spatial(0)
    return hd_volume


def _geometry_from_affine(affine: np.ndarray) -> Geometry:
    """highdicom's affine maps (slice, row, column) to LPS; ours maps (i=column, j=row, k=slice)."""
    axes = affine[:3, [2, 1, 0]]
    spacing = np.linalg.norm(axes, axis=0)
    return Geometry.from_arrays(affine[:3, 3], spacing, axes / spacing + 0.0)  # + 0.0: no -0.0 in the output


def _frame_numbers(image, hd_volume) -> tuple[int, ...]:
    """Which frame (1-based) each slice came from, so a SEG can reference the right source frame."""
    positions = _frame_positions(image)
    slices = hd_volume.map_reference_to_indices(positions, round_output=True)[:, 0]
    by_slice = {int(k): n + 1 for n, k in enumerate(slices)}
    return tuple(by_slice[k] for k in range(hd_volume.array.shape[0]))


def _frame_positions(image) -> np.ndarray:
    shared = image.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in image else None
    positions = []
    for frame in image.PerFrameFunctionalGroupsSequence:
        group = frame if "PlanePositionSequence" in frame else shared
        if group is None:  # unreachable after highdicom's get_volume, which needs every frame's position
            raise InputError("a frame of the multi-frame image has no Plane Position: it cannot be placed in 3D.")
        positions.append([float(x) for x in group.PlanePositionSequence[0].ImagePositionPatient])
    return np.asarray(positions)


def _multiframe_without_geometry(path: Path, image, options: dict) -> Volume:
    """Frames in file order on an identity grid (as ITK does): still segmentable, but not placeable in space."""
    logger.warning("%s has no patient geometry (no plane position/orientation): using an identity grid", path)
    array = np.asarray(image.get_frames(**options))
    if array.ndim != 3:
        raise InputError(f"{path} holds several values per pixel (colour): give a greyscale volume.")
    sj, si = _multiframe_pixel_spacing(image)
    sk = _first_positive(image, ("SpacingBetweenSlices", "SliceThickness"))
    geometry = Geometry.from_arrays((0.0, 0.0, 0.0), (si, sj, sk), np.eye(3))
    frames = tuple(range(1, array.shape[0] + 1))
    return _multiframe_volume(path, image, array, geometry, frames)


def _multiframe_pixel_spacing(image) -> tuple[float, float]:
    spacing = getattr(image, "PixelSpacing", None)
    if spacing is None and "SharedFunctionalGroupsSequence" in image:
        measures = image.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
        spacing = measures[0].get("PixelSpacing") if measures else None
    return (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)


def _first_positive(ds, keywords: Sequence[str]) -> float:
    for keyword in keywords:
        try:
            value = float(getattr(ds, keyword, 0) or 0)
        except (TypeError, ValueError):
            continue
        if value > 0:
            return value
    return 1.0


def _multiframe_volume(path: Path, image, array: np.ndarray, geometry: Geometry, frames: tuple[int, ...]) -> Volume:
    integral = bool(np.all(np.isfinite(array)) and np.array_equal(array, np.rint(array)))
    info = DicomSeriesInfo(
        study_instance_uid=str(getattr(image, "StudyInstanceUID", "") or ""),
        series_instance_uid=str(getattr(image, "SeriesInstanceUID", "") or ""),
        frame_of_reference_uid=str(getattr(image, "FrameOfReferenceUID", "") or ""),
        sop_class_uid=_sop_class_uid(image),
        sop_instance_uids=(_sop_instance_uid(image),),
        files=(str(path),),
        modality=str(getattr(image, "Modality", "") or ""),
        frame_numbers=frames,
    )
    return Volume(
        array=_compact(np.ascontiguousarray(array, dtype=np.float32), integral),
        geometry=geometry,
        modality=info.modality,
        source=VolumeSource(kind="dicom-file", path=str(path), dicom=info),
    )
