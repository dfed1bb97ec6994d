"""Finding the series: a folder scanned header-only (recursively), the series chosen, then read as a volume; a
single file; the cheap sniff that tells a DICOM file from anything else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...wire.errors import InputError
from ..core import Volume, VolumeSource
from .geometry import (
    _check_consistent,
    _check_required,
    _check_stack,
    _series_geometry,
    _series_info,
    _sort_along_normal,
    _with_dicom,
)
from .header import _describe_non_image, _has_value, _Header, _is_image, _read_header
from .multiframe import read_multiframe
from .pixels import _check_decodable, _read_pixels

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Entry points


def read_dicom_folder(folder: Path, series_uid: str | None = None) -> Volume:
    """Read the one image series in ``folder`` (recursively), or the one named by ``series_uid``."""
    folder = Path(folder)
    headers, skipped = _scan_folder(folder)
    series = _select_series(folder, _group_by_series(headers), series_uid)
    if len(series) == 1 and series[0].number_of_frames > 1:
        return read_multiframe(series[0].path)
    multiframe = [h for h in series if h.number_of_frames > 1]
    if multiframe:
        raise InputError(
            f"series {series[0].series_uid or '(no UID)'} in {folder} mixes {len(multiframe)} multi-frame file(s) "
            f"with other files (e.g. {multiframe[0].path.name}): give one multi-frame file as the input."
        )
    if skipped:
        logger.info("skipped %d non-image DICOM file(s) in %s (e.g. %s)", len(skipped), folder, skipped[0].name)
    return _read_single_frame_series(series, source=VolumeSource(kind="dicom-series", path=str(folder)))


def read_dicom_file(path: Path, series_uid: str | None = None) -> Volume:
    """Read one DICOM file: a single-frame image as a one-slice volume, a multi-frame object as a volume."""
    path = Path(path)
    header = _read_header(path)
    if header is None or not _is_image(header.ds):
        what = _describe_non_image(header.ds) if header is not None else "not a DICOM image"
        raise InputError(f"{path} is {what}: give the image series (folder) or an image file instead.")
    if series_uid and header.series_uid != series_uid:
        raise InputError(
            f"{path} belongs to series {header.series_uid or '(no UID)'}, not {series_uid}: "
            "give a file of that series, or leave out --series."
        )
    if header.number_of_frames > 1:
        return read_multiframe(path)
    return _read_single_frame_series([header], source=VolumeSource(kind="dicom-file", path=str(path)))


# ---------------------------------------------------------------------------------------------------------------
# Folder scan and series selection


def _scan_folder(folder: Path) -> tuple[list[_Header], list[Path]]:
    """Headers of all DICOM image files below ``folder``, and the non-image DICOM files that were skipped."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder: give a folder that holds a DICOM series.")
    files = sorted(_walk_files(folder))
    if not files:
        raise InputError(f"folder {folder} is empty: give a folder that holds a DICOM series.")
    headers: list[_Header] = []
    skipped: list[Path] = []
    for path in files:
        header = _read_header(path)
        if header is None:
            continue
        if _is_image(header.ds):
            _check_complete(header)
            headers.append(header)
        else:
            skipped.append(path)
    if not headers:
        raise InputError(_no_images_message(folder, files, skipped))
    return headers, skipped


def _walk_files(folder: Path) -> Iterable[Path]:
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            yield Path(root) / name


def _check_complete(header: _Header) -> None:
    """Rows and Columns sit just before the pixels: an image header without them was cut short.

    Checked before grouping, or a truncated file (its SeriesInstanceUID lost too) would show up as a
    mysterious second series.
    """
    missing = [kw for kw in ("Rows", "Columns") if not _has_value(header.ds, kw)]
    if missing:
        raise InputError(
            f"DICOM image {header.path} lacks {' and '.join(missing)}: the file is probably truncated; "
            "copy it again from its source, or remove it from the folder."
        )


def _no_images_message(folder: Path, files: Sequence[Path], skipped: Sequence[Path]) -> str:
    if skipped:
        return (
            f"folder {folder} holds DICOM files but no images (e.g. {skipped[0].name} is not an image): "
            "give the folder of the image series."
        )
    from ..itk_io import image_kind

    others = [f for f in files if image_kind(f) is not None]
    hint = f" ({others[0].name} is NIfTI/NRRD: give that file instead)" if others else ""
    return f"folder {folder} holds no DICOM files{hint}: give a folder with a DICOM series, or a NIfTI or NRRD file."


def _group_by_series(headers: Sequence[_Header]) -> dict[str, list[_Header]]:
    groups: dict[str, list[_Header]] = {}
    for header in headers:
        groups.setdefault(header.series_uid, []).append(header)
    return groups


def _select_series(folder: Path, groups: dict[str, list[_Header]], series_uid: str | None) -> list[_Header]:
    if series_uid is not None:  # '' picks the series without a UID (a blanked copy beside one with UIDs)
        if series_uid in groups:
            return groups[series_uid]
        raise InputError(
            f"series {series_uid} is not in {folder}; the series there are: {_list_series(groups)}. "
            "Give one of these UIDs to --series."
        )
    if len(groups) == 1:
        return next(iter(groups.values()))
    raise InputError(
        f"folder {folder} holds {len(groups)} image series: {_list_series(groups)}. Pick one with --series UID."
    )


@dataclass(frozen=True)
class SeriesSummary:
    """One image series of a folder, as a series filter sees it (``batch --series-filter``)."""

    uid: str
    modality: str
    description: str
    files: int


def list_series(folder: Path) -> list[SeriesSummary]:
    """The image series below ``folder`` (headers only, no pixels), for picking one by rule before reading it."""
    headers, _skipped = _scan_folder(Path(folder))
    return [
        SeriesSummary(
            uid,
            str(getattr(members[0].ds, "Modality", "") or ""),
            str(getattr(members[0].ds, "SeriesDescription", "") or ""),
            len(members),
        )
        for uid, members in _group_by_series(headers).items()
    ]


def _list_series(groups: dict[str, list[_Header]]) -> str:
    items = []
    for uid, members in groups.items():
        ds = members[0].ds
        modality = getattr(ds, "Modality", "") or "?"
        description = getattr(ds, "SeriesDescription", "") or "no description"
        name = uid or "(no UID: --series '')"
        items.append(f"{name} ({modality}, '{description}', {len(members)} file(s))")
    return "; ".join(items)


# ---------------------------------------------------------------------------------------------------------------
# Single-frame series: checks, sorting, geometry, pixels


def _read_single_frame_series(headers: Sequence[_Header], source: VolumeSource) -> Volume:
    _check_required(headers)
    _check_consistent(headers)
    ordered = _sort_along_normal(headers) if len(headers) > 1 else list(headers)
    if len(ordered) > 1:
        _check_stack(ordered)
    _check_decodable(ordered)
    geometry = _series_geometry(ordered)
    array = _read_pixels(ordered)
    info = _series_info(ordered)
    return Volume(array=array, geometry=geometry, modality=info.modality, source=_with_dicom(source, info))
