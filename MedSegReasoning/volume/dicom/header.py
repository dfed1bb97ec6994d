"""One DICOM file's header as the series reader sees it (read without pixels), and what kind of object it is."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...wire.errors import InputError

# Modalities that are never a volume, for files whose SOP Class pydicom does not name.
_NON_IMAGE_MODALITIES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "PR", "KO", "REG", "DOC", "RWV", "PLAN"}


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


def _fmt(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"
