"""DICOM readers: a series folder, a single-frame file, or an enhanced multi-frame object, as a ``Volume``.

A series folder is read in two passes: headers only (``stop_before_pixels``) to find the series, check that
its slices form one regular grid and sort them, then pixels, only for the files of the chosen series. Every
way a folder can fail to be one clean volume (several series, missing or duplicated slices, mixed
orientations, damaged files) is an ``InputError`` that says where the problem is, because a silently wrong
geometry would put every mask in the wrong place.

Geometry of a series is what ITK's ``ImageSeriesReader`` gives (SimpleITK default, orthogonal direction):
slices sorted along the normal ``row x column`` of ImageOrientationPatient, origin at the first sorted slice,
slice spacing ``|last - first| / (n - 1)``. Enhanced multi-frame objects go through highdicom, which knows
their functional groups; the result is then turned to the same convention (k along the normal).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..wire.errors import InputError
from .core import DicomSeriesInfo, Geometry, Volume, VolumeSource

logger = logging.getLogger(__name__)

# Modalities that are never a volume, for files whose SOP Class pydicom does not name.
_NON_IMAGE_MODALITIES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "PR", "KO", "REG", "DOC", "RWV", "PLAN"}
_ORIENTATION_TOL = 1e-4  # direction cosines: DS strings carry ~1e-6, different orientations differ by far more
_SPACING_RTOL = 1e-4  # PixelSpacing: the same value written by the same scanner
_DUPLICATE_MM = 1e-3  # two slices closer than this along the normal occupy the same place
_GAP_FACTOR = 1.5  # a step this many times the usual spacing means slices are missing
_UNEVEN_RTOL = 0.01  # steps may differ from the usual spacing by 1 % (highdicom's default tolerance) ...
_UNEVEN_ATOL_MM = 1e-3  # ... plus rounding of positions written with few decimals
_INPLANE_TOL_PIXELS = 0.25  # slices shifted in-plane by more than a quarter pixel are not one straight stack


@dataclass(frozen=True)
class _Header:
    """One image file's header, with the attributes the series checks need already parsed."""

    path: Path
    ds: Any  # pydicom.Dataset (not imported here: pydicom loads lazily)
    bare: bool = False  # no preamble and file meta: pydicom must be forced, and told the transfer syntax

    @property
    def series_uid(self) -> str:
        return str(getattr(self.ds, "SeriesInstanceUID", "") or "")

    @property
    def number_of_frames(self) -> int:
        try:
            return int(getattr(self.ds, "NumberOfFrames", 1) or 1)
        except (TypeError, ValueError):
            return 1

    @property
    def has_plane_geometry(self) -> bool:
        return _has_value(self.ds, "ImagePositionPatient") and _has_value(self.ds, "ImageOrientationPatient")

    @property
    def position(self) -> np.ndarray:
        return np.asarray([float(x) for x in self.ds.ImagePositionPatient], dtype=float)

    @property
    def orientation(self) -> np.ndarray:
        return np.asarray([float(x) for x in self.ds.ImageOrientationPatient], dtype=float)

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """(between rows, between columns), as DICOM orders it; 1 mm where the file does not say."""
        spacing = getattr(self.ds, "PixelSpacing", None)
        if spacing is None or len(spacing) != 2:
            return (1.0, 1.0)
        return (float(spacing[0]), float(spacing[1]))


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


def is_dicom_file(path: Path) -> bool:
    """Cheap sniff, no parsing: see ``_sniff``."""
    return _sniff(path) is not None


def _sniff(path: Path) -> str | None:
    """``"part10"`` for the ``DICM`` magic after the 128-byte preamble, ``"bare"`` for a dataset without file
    meta (old ACR-NEMA style, starting at group 0008, which GDCM also reads), None for anything else."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return None
    if head[128:132] == b"DICM":
        return "part10"
    if len(head) >= 8 and head[:2] == b"\x08\x00":
        return "bare"
    return None


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
    from .itk_io import image_kind

    others = [f for f in files if image_kind(f) is not None]
    hint = f" ({others[0].name} is NIfTI/NRRD: give that file instead)" if others else ""
    return f"folder {folder} holds no DICOM files{hint}: give a folder with a DICOM series, or a NIfTI or NRRD file."


def _group_by_series(headers: Sequence[_Header]) -> dict[str, list[_Header]]:
    groups: dict[str, list[_Header]] = {}
    for header in headers:
        groups.setdefault(header.series_uid, []).append(header)
    return groups


def _select_series(folder: Path, groups: dict[str, list[_Header]], series_uid: str | None) -> list[_Header]:
    if series_uid:
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


def _list_series(groups: dict[str, list[_Header]]) -> str:
    items = []
    for uid, members in groups.items():
        ds = members[0].ds
        modality = getattr(ds, "Modality", "") or "?"
        description = getattr(ds, "SeriesDescription", "") or "no description"
        items.append(f"{uid or '(no UID)'} ({modality}, '{description}', {len(members)} file(s))")
    return "; ".join(items)


# ---------------------------------------------------------------------------------------------------------------
# Headers


def _read_header(path: Path) -> _Header | None:
    """The header of a DICOM file, or None for a file that is not DICOM at all; damaged DICOM is an error."""
    import pydicom

    kind = _sniff(path)
    if kind is None:
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=kind == "bare")
    except pydicom.errors.InvalidDicomError:
        return None
    except Exception as exc:  # pydicom raises many types on damaged files; all mean the same to the user
        raise InputError(_damaged_message(path, exc)) from exc
    if not _looks_like_dataset(ds):
        return None
    return _Header(path=path, ds=ds, bare=kind == "bare")


def _looks_like_dataset(ds) -> bool:
    """``force=True`` parses anything; a real dataset has a SOP Class or at least rows and columns."""
    return bool(_sop_class_uid(ds)) or ("Rows" in ds and "Columns" in ds)


def _damaged_message(path: Path, exc: Exception) -> str:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (
        f"DICOM file {path} is truncated or damaged ({reason}): copy it again from its source, "
        "or remove it from the folder."
    )


def _sop_class_uid(ds) -> str:
    """The SOP Class from the dataset, or from the file meta where an anonymiser blanked the dataset's."""
    uid = str(getattr(ds, "SOPClassUID", "") or "")
    if not uid and getattr(ds, "file_meta", None) is not None:
        uid = str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "") or "")
    return uid


def _sop_instance_uid(ds) -> str:
    uid = str(getattr(ds, "SOPInstanceUID", "") or "")
    if not uid and getattr(ds, "file_meta", None) is not None:
        uid = str(getattr(ds.file_meta, "MediaStorageSOPInstanceUID", "") or "")
    return uid


def _is_image(ds) -> bool:
    """Image Storage SOP classes by their name; for private (unnamed) classes, a pixel matrix and an image
    modality."""
    from pydicom.uid import UID

    uid = _sop_class_uid(ds)
    name = UID(uid).name if uid else ""
    if name and name != uid:
        return "Image Storage" in name
    modality = str(getattr(ds, "Modality", "") or "").upper()
    return "Rows" in ds and "Columns" in ds and modality not in _NON_IMAGE_MODALITIES


def _describe_non_image(ds) -> str:
    from pydicom.uid import UID

    uid = _sop_class_uid(ds)
    name = UID(uid).name if uid else ""
    return f"a DICOM {name} object, not an image" if name and name != uid else "a DICOM object that is not an image"


def _has_value(ds, keyword: str) -> bool:
    value = getattr(ds, keyword, None)
    return value is not None and value != ""


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


def _check_required(headers: Sequence[_Header]) -> None:
    for header in headers:
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


def _check_stack(ordered: Sequence[_Header]) -> None:
    """Sorted slices must be distinct, evenly spaced, and stacked straight along their normal."""
    normal = _slice_normal(ordered[0].orientation)
    positions = np.array([h.position for h in ordered])
    distances = positions @ normal
    steps = np.diff(distances)
    duplicates = np.flatnonzero(steps < _DUPLICATE_MM)
    if duplicates.size:
        k = int(duplicates[0])
        raise InputError(
            f"two slices lie at the same position ({distances[k]:.3f} mm along the slice normal): "
            f"{ordered[k].path.name} and {ordered[k + 1].path.name}; the folder holds a duplicated slice or several "
            "acquisitions: remove the duplicates, or split them into separate series."
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
        thickness = float(value) if value not in (None, "") else 0.0
    except (TypeError, ValueError):
        thickness = 0.0
    return thickness if thickness > 0 else 1.0


def _check_decodable(headers: Sequence[_Header]) -> None:
    """A missing codec is an installation problem, not a damaged file: say which one, before decoding anything."""
    seen: set[str] = set()
    for header in headers:
        syntax = _transfer_syntax(header.ds)
        if syntax in seen:
            continue
        seen.add(syntax)
        name = _undecodable(syntax)
        if name:
            raise InputError(
                f"{header.path} is compressed as {name}, which this installation cannot decode: "
                "pip install python-gdcm, or convert the series to uncompressed DICOM (e.g. gdcmconv --raw)."
            )


def _transfer_syntax(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""


def _undecodable(syntax: str) -> str | None:
    """The transfer syntax's name when no installed plugin decodes it; None when it is fine."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    if not syntax:  # a bare dataset: uncompressed
        return None
    uid = UID(syntax)
    try:
        if not uid.is_compressed or get_decoder(uid).is_available:
            return None
    except (ValueError, NotImplementedError):  # not a transfer syntax pydicom knows at all
        pass
    return uid.name if uid.name != syntax else f"the unknown transfer syntax {syntax}"


def _read_pixels(ordered: Sequence[_Header]) -> np.ndarray:
    """Stored values through each slice's modality transform (HU for CT); int16 where that is exact.

    Decoding runs in threads: the codecs (Pillow/OpenJPEG, pyjpegls) release the GIL, and compressed series
    (JPEG 2000 here: ~60 ms a 512x512 slice) are decode-bound.
    """
    from concurrent.futures import ThreadPoolExecutor

    first = ordered[0].ds
    out = np.empty((len(ordered), int(first.Rows), int(first.Columns)), dtype=np.float32)

    def fill(k: int) -> bool:
        out[k], integral = _decode_slice(ordered[k])
        return integral

    workers = max(1, min(8, os.cpu_count() or 1, len(ordered)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        integral = all(list(pool.map(fill, range(len(ordered)))))
    return _compact(out, integral)


def _decode_slice(header: _Header) -> tuple[np.ndarray, bool]:
    """One file's pixels in modality units, and whether its modality transform keeps integers integers."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    path = header.path
    try:
        ds = pydicom.dcmread(path, force=header.bare)
        if header.bare:
            _set_bare_transfer_syntax(ds)
        values = apply_modality_lut(ds.pixel_array, ds)
    except Exception as exc:  # truncated pixel data, unsupported compression, ...: name the file
        raise InputError(_damaged_message(path, exc)) from exc
    if values.ndim != 2:
        raise InputError(f"{path} holds {values.shape} pixels, not one greyscale frame: give a greyscale series.")
    return values, _modality_transform_is_integral(ds)


def _set_bare_transfer_syntax(ds) -> None:
    """A dataset without file meta is uncompressed in the encoding pydicom detected while parsing it."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = ds.original_encoding
    if "TransferSyntaxUID" not in (getattr(ds, "file_meta", None) or {}):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )


def _modality_transform_is_integral(ds) -> bool:
    if "ModalityLUTSequence" in ds:
        return False
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return slope.is_integer() and intercept.is_integer()


def _compact(array: np.ndarray, integral: bool) -> np.ndarray:
    """int16 when every value is an integer in range (CT in HU, most MR): half the memory, same numbers."""
    if integral and array.size and array.min() >= -32768 and array.max() <= 32767:
        return array.astype(np.int16)
    return array


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


def _fmt(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


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
    options = dict(
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
