"""A single-frame series' slices as one regular grid: consistency checks, sorting along the normal, and the
``Geometry`` ITK's ``ImageSeriesReader`` would give (see the package docstring for the convention).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...wire.errors import InputError
from ..core import DicomSeriesInfo, Geometry, VolumeSource
from .header import _fmt, _has_value, _Header, _sop_class_uid, _sop_instance_uid

logger = logging.getLogger(__name__)
_ORIENTATION_TOL = 1e-4  # direction cosines: DS strings carry ~1e-6, different orientations differ by far more
_SPACING_RTOL = 1e-4  # PixelSpacing: the same value written by the same scanner
_DUPLICATE_MM = 1e-3  # two slices closer than this along the normal occupy the same place
_GAP_FACTOR = 1.5  # a step this many times the usual spacing means slices are missing
_UNEVEN_RTOL = 0.01  # steps may differ from the usual spacing by 1 % (highdicom's default tolerance) ...
_UNEVEN_ATOL_MM = 1e-3  # ... plus rounding of positions written with few decimals
_UNIT_TOL = 0.01  # direction cosines written with 2-3 decimals still make unit, perpendicular vectors to this
_INPLANE_TOL_PIXELS = 0.25  # slices shifted in-plane by more than a quarter pixel are not one straight stack


def _check_required(headers: Sequence[_Header]) -> None:
    for header in headers:
        check_header_values(header)
        missing = [kw for kw in ("Rows", "Columns") if not _has_value(header.ds, kw)]
        if len(headers) > 1:
            missing += [
                kw for kw in ("ImagePositionPatient", "ImageOrientationPatient") if not _has_value(header.ds, kw)
            ]
        if missing:
            raise InputError(
                f"DICOM image {header.path} lacks {', '.join(missing)}, so it cannot be placed in a volume: "
                "the file is probably truncated; copy it again from its source or remove it."
            )
        samples = int(getattr(header.ds, "SamplesPerPixel", 1) or 1)
        if samples != 1:
            raise InputError(
                f"{header.path} is a colour image ({samples} samples per pixel): give a greyscale CT or MR series."
            )


def check_header_values(header: _Header) -> None:
    """The numbers that place and scale the pixels are numbers, finite, and make a grid, before any pixel is read.

    Why here: a zero ImageOrientationPatient or PixelSpacing used to pass into the geometry as NaN (the model ran
    first, and the result could not be written); a text in ImagePositionPatient raised deep in pydicom. Each is a
    damaged header, named with its file, so the user knows which file to fix.
    """
    where = f"DICOM image {header.path}"
    ds = header.ds
    _numbers(ds, "ImagePositionPatient", 3, where)
    iop = _numbers(ds, "ImageOrientationPatient", 6, where)
    if iop is not None:
        row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
        unit = all(abs(float(np.linalg.norm(v)) - 1.0) < _UNIT_TOL for v in (row, col))
        if not unit or abs(float(row @ col)) > _UNIT_TOL:
            raise InputError(
                f"{where} has ImageOrientationPatient {_fmt(iop)}, which is not two perpendicular unit vectors "
                "(the row and column directions): the header is damaged; copy the series again from its source."
            )
    spacing = _numbers(ds, "PixelSpacing", 2, where)
    if spacing is not None and min(spacing) <= 0:
        raise InputError(
            f"{where} has PixelSpacing {_fmt(spacing)}: the distance between pixels must be positive; the header "
            "is damaged; copy the series again from its source."
        )
    slope = _numbers(ds, "RescaleSlope", 1, where, "a NaN RescaleSlope makes every voxel NaN")
    _numbers(ds, "RescaleIntercept", 1, where)
    if slope is not None and slope[0] == 0:
        raise InputError(
            f"{where} has RescaleSlope 0, which maps every pixel to one value: the header is damaged; copy the "
            "series again from its source."
        )


def _numbers(ds, keyword: str, count: int, where: str, why: str = "") -> list[float] | None:
    """``count`` finite numbers from a DS/IS attribute (None when absent or empty), or an ``InputError`` quoting
    what is there. Read defensively: pydicom converts on access and raises on a value that is not a number."""
    if keyword not in ds:
        return None
    try:
        raw = ds[keyword].value
        values = list(raw) if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue" else [raw]
        if values in ([], [None], [""]):
            return None
        numbers = [float(v) for v in values]
    except (TypeError, ValueError, OverflowError):
        numbers = []
        values = [_raw_text(ds, keyword)]
    if len(numbers) != count or not all(np.isfinite(numbers)):
        shown = "\\".join(str(v) for v in values)
        because = f" ({why})" if why and numbers and not all(np.isfinite(numbers)) else ""
        raise InputError(
            f"{where} has {keyword} '{shown}' where {count} finite number(s) belong{because}: the header is "
            "damaged; copy the series again from its source."
        )
    return numbers


def _raw_text(ds, keyword: str) -> str:
    """The stored bytes of an element whose value pydicom cannot convert, as text."""
    try:
        raw = ds.get_item(keyword).value
        if isinstance(raw, bytes):
            return raw.decode("ascii", "replace").strip()
        return str(raw) if isinstance(raw, str) else "\\".join(str(v) for v in raw)
    except Exception:  # the quote is only for the message
        return "?"


def _check_consistent(headers: Sequence[_Header]) -> None:
    """All slices share orientation, matrix size and pixel spacing, or they are not one volume."""
    first = headers[0]
    for header in headers[1:]:
        if (header.ds.Rows, header.ds.Columns) != (first.ds.Rows, first.ds.Columns):
            raise InputError(
                f"slices differ in size: {first.path.name} is {first.ds.Rows}x{first.ds.Columns}, "
                f"{header.path.name} is {header.ds.Rows}x{header.ds.Columns}; a volume needs one matrix size: "
                "remove the odd files (e.g. a localizer) or pick another series."
            )
        if header.has_plane_geometry and not np.allclose(header.orientation, first.orientation, atol=_ORIENTATION_TOL):
            raise InputError(
                f"slices have different orientations: {first.path.name} has ImageOrientationPatient "
                f"{_fmt(first.orientation)}, {header.path.name} has {_fmt(header.orientation)}; remove the slices "
                "that do not belong (e.g. a localizer) or split the series."
            )
        if not np.allclose(header.pixel_spacing, first.pixel_spacing, rtol=_SPACING_RTOL):
            raise InputError(
                f"slices have different pixel spacing: {first.path.name} {_fmt(first.pixel_spacing)} mm, "
                f"{header.path.name} {_fmt(header.pixel_spacing)} mm; a volume needs one grid: pick another series."
            )


def _slice_normal(orientation: np.ndarray) -> np.ndarray:
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def _sort_along_normal(headers: Sequence[_Header]) -> list[_Header]:
    """Ascending distance along ``row x column``: the order ITK's series reader (GDCM's IPP sorter) uses."""
    normal = _slice_normal(headers[0].orientation)
    distances = np.array([h.position @ normal for h in headers])
    order = np.argsort(distances, kind="stable")
    return [headers[int(i)] for i in order]


def _distinct_names(a: Path, b: Path) -> tuple[str, str]:
    """The two paths relative to their common folder: two copies of a series often share file names."""
    try:
        root = os.path.commonpath([a.parent, b.parent])
    except ValueError:
        return str(a), str(b)
    return os.path.relpath(a, root), os.path.relpath(b, root)


def _check_stack(ordered: Sequence[_Header]) -> None:
    """Sorted slices must be distinct, evenly spaced, and stacked straight along their normal."""
    normal = _slice_normal(ordered[0].orientation)
    positions = np.array([h.position for h in ordered])
    distances = positions @ normal
    steps = np.diff(distances)
    duplicates = np.flatnonzero(steps < _DUPLICATE_MM)
    if duplicates.size:
        k = int(duplicates[0])
        first, second = _distinct_names(ordered[k].path, ordered[k + 1].path)
        copies = sum(1 for step in steps if step < _DUPLICATE_MM)
        raise InputError(
            f"two slices lie at the same position ({distances[k]:.3f} mm along the slice normal): "
            f"{first} and {second} ({copies} such pair(s)); the folder holds a duplicated slice or several "
            "acquisitions, e.g. two copies of the series: remove the duplicates, or split them into separate series."
        )
    usual = float(np.median(steps))
    for k, step in enumerate(steps):
        if step > _GAP_FACTOR * usual:
            missing = max(1, int(round(step / usual)) - 1)
            raise InputError(
                f"about {missing} slice(s) are missing between {ordered[k].path.name} and {ordered[k + 1].path.name} "
                f"(slice {k} to {k + 1}: a {step:.3f} mm step where the spacing is {usual:.3f} mm): "
                "copy the complete series again."
            )
        if abs(step - usual) > _UNEVEN_RTOL * usual + _UNEVEN_ATOL_MM:
            raise InputError(
                f"slices are unevenly spaced: {step:.3f} mm between {ordered[k].path.name} and "
                f"{ordered[k + 1].path.name} (slice {k} to {k + 1}) where the spacing is {usual:.3f} mm elsewhere; "
                "resample the series to a regular grid (e.g. in Slicer) and save it as NRRD or NIfTI."
            )
    _check_straight(ordered, positions, normal)


def _check_straight(ordered: Sequence[_Header], positions: np.ndarray, normal: np.ndarray) -> None:
    """Gantry tilt or shear shifts slices in-plane; a grid with a perpendicular k axis would misplace them."""
    offsets = positions - positions[0]
    inplane = offsets - np.outer(offsets @ normal, normal)
    shift = np.linalg.norm(inplane, axis=1)
    worst = int(np.argmax(shift))
    if shift[worst] > _INPLANE_TOL_PIXELS * min(ordered[0].pixel_spacing):
        raise InputError(
            f"slices are not stacked along their normal ({ordered[worst].path.name} is shifted {shift[worst]:.2f} mm "
            "sideways, as with gantry tilt): resample the series to a regular grid (e.g. in Slicer) and save it "
            "as NRRD or NIfTI."
        )


def _series_geometry(ordered: Sequence[_Header]) -> Geometry:
    first = ordered[0]
    sj, si = first.pixel_spacing
    if not first.has_plane_geometry:  # a lone file without position: ITK's default grid, and say so
        logger.warning("%s has no ImagePositionPatient/ImageOrientationPatient: using an identity grid", first.path)
        return Geometry.from_arrays((0.0, 0.0, 0.0), (si, sj, _single_slice_spacing(first)), np.eye(3))
    row, col = first.orientation[:3], first.orientation[3:]
    direction = np.column_stack([row, col, _slice_normal(first.orientation)])
    if len(ordered) > 1:
        sk = float(np.linalg.norm(ordered[-1].position - first.position)) / (len(ordered) - 1)
    else:
        sk = _single_slice_spacing(first)
    return Geometry.from_arrays(first.position, (si, sj, sk), direction)


def _single_slice_spacing(header: _Header) -> float:
    value = getattr(header.ds, "SliceThickness", None)
    try:
        thickness = float(value) if value is not None and value != "" else 0.0
    except (TypeError, ValueError):
        thickness = 0.0
    return thickness if thickness > 0 else 1.0


def _series_info(ordered: Sequence[_Header]) -> DicomSeriesInfo:
    ds = ordered[0].ds
    return DicomSeriesInfo(
        study_instance_uid=str(getattr(ds, "StudyInstanceUID", "") or ""),
        series_instance_uid=str(getattr(ds, "SeriesInstanceUID", "") or ""),
        frame_of_reference_uid=str(getattr(ds, "FrameOfReferenceUID", "") or ""),
        sop_class_uid=_sop_class_uid(ds),
        sop_instance_uids=tuple(_sop_instance_uid(h.ds) for h in ordered),
        files=tuple(str(h.path) for h in ordered),
        modality=str(getattr(ds, "Modality", "") or ""),
    )


def _with_dicom(source: VolumeSource, info: DicomSeriesInfo) -> VolumeSource:
    return VolumeSource(kind=source.kind, path=source.path, dicom=info)
