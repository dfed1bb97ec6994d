"""Write a volume as a standard single-frame CT or MR DICOM series.

Tests need series whose geometry is known exactly (oblique, flipped, shuffled file names) to prove the reader
right, and the README's sample needs a series any PACS or viewer accepts. The geometry goes into the files the
way a scanner writes it: one ImageOrientationPatient for all slices and one ImagePositionPatient per slice, so
a direction whose k axis points against ``row x column`` comes back read in the opposite slice order, exactly
as ITK would read it.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .core import Geometry, Volume

MANUFACTURER = "MedSegReasoning"
_MODALITIES = ("CT", "MR")


@dataclass(frozen=True)
class SeriesDescriptors:
    """Who and what the series is about; defaults make an anonymous research series."""

    patient_name: str = "Anonymous^Sample"
    patient_id: str = "MSR-SAMPLE"
    study_description: str = ""
    series_description: str = ""
    series_number: int = 1
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None


@dataclass(frozen=True)
class _Encoding:
    """How modality values become stored pixels: ``value = stored * slope + intercept``."""

    stored: np.ndarray  # int16 or uint16, [k, j, i]
    slope: float
    intercept: float


def write_dicom_series(
    volume_or_array: Volume | np.ndarray,
    geometry: Geometry | None,
    folder: Path,
    modality: str = "CT",
    descriptors: SeriesDescriptors | None = None,
    shuffle_names: bool = False,
    rng: np.random.Generator | None = None,
) -> list[Path]:
    """Write one file per slice into ``folder``; returns the paths in slice order (``paths[k]`` is slice k).

    ``geometry`` may be None when a ``Volume`` is given (its own is used). CT values are HU and may be float
    (stored as int16 with RescaleSlope/Intercept); MR values must be integers (the MR IOD has no rescale).
    ``shuffle_names`` gives the files random names in random order, so a reader cannot lean on file names.
    ``rng`` makes the names and UIDs reproducible.
    """
    array, geometry = _unpack(volume_or_array, geometry)
    modality = modality.upper()
    if modality not in _MODALITIES:
        raise ValueError(f"modality must be one of {_MODALITIES}, got {modality!r}")
    descriptors = descriptors or SeriesDescriptors()
    rng = rng if rng is not None else np.random.default_rng()
    encoding = _encode(array, modality)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = _file_names(array.shape[0], shuffle_names, rng)
    uids = _SeriesUids.create(descriptors, rng)
    now = _dt.datetime.now()
    paths = []
    for k in range(array.shape[0]):
        ds = _slice_dataset(k, encoding, geometry, modality, descriptors, uids, now)
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _unpack(volume_or_array: Volume | np.ndarray, geometry: Geometry | None) -> tuple[np.ndarray, Geometry]:
    if isinstance(volume_or_array, Volume):
        return volume_or_array.array, geometry or volume_or_array.geometry
    if geometry is None:
        raise ValueError("an array needs its geometry: pass geometry=Geometry(...)")
    array = np.asarray(volume_or_array)
    if array.ndim != 3:
        raise ValueError(f"a series needs a 3D [k, j, i] array, got shape {array.shape}")
    return array, geometry


def _encode(array: np.ndarray, modality: str) -> _Encoding:
    """Integers that fit 16 bits are stored as they are; other CT values are scaled into int16 (lossy, 1/65535
    of the range)."""
    values = np.asarray(array)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    integral = np.issubdtype(values.dtype, np.integer) or bool(np.array_equal(values, np.rint(values)))
    if integral and lo >= -32768 and hi <= 32767:
        return _Encoding(values.astype(np.int16), 1.0, 0.0)
    if integral and lo >= 0 and hi <= 65535:
        return _Encoding(values.astype(np.uint16), 1.0, 0.0)
    if modality == "MR":
        raise ValueError("MR pixel values must be integers within 16 bits (the MR Image IOD has no rescale)")
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    intercept = lo + 32768.0 * slope
    stored = np.rint((values.astype(np.float64) - intercept) / slope)
    return _Encoding(np.clip(stored, -32768, 32767).astype(np.int16), slope, intercept)


def _file_names(n: int, shuffle: bool, rng: np.random.Generator) -> list[str]:
    if not shuffle:
        return [f"IM{k + 1:05d}.dcm" for k in range(n)]
    tokens = rng.choice(16**8, size=n, replace=False)
    return [f"{int(t):08x}.dcm" for t in tokens]


@dataclass(frozen=True)
class _SeriesUids:
    study: str
    series: str
    frame_of_reference: str

    @staticmethod
    def create(descriptors: SeriesDescriptors, rng: np.random.Generator) -> _SeriesUids:
        return _SeriesUids(
            study=descriptors.study_instance_uid or _new_uid(rng),
            series=descriptors.series_instance_uid or _new_uid(rng),
            frame_of_reference=descriptors.frame_of_reference_uid or _new_uid(rng),
        )


def _new_uid(rng: np.random.Generator) -> str:
    """A UID under pydicom's root, derived from ``rng`` so a seeded writer is reproducible."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(int(x)) for x in rng.integers(0, 2**62, size=4)]))


def _slice_dataset(k, encoding, geometry, modality, descriptors, uids, now):
    """One slice: every Type 1 and Type 2 attribute of the CT or MR Image IOD, and nothing invented."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    sop_class = _sop_class(modality)
    sop_instance = _new_uid_for_slice(uids, k)
    ds.file_meta = _file_meta(sop_class, sop_instance)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    _add_patient_study_series(ds, modality, descriptors, uids, now)
    _add_image_plane(ds, k, geometry)
    _add_general_image(ds, k, modality, now)
    if modality == "CT":
        _add_ct_image(ds, encoding)
    else:
        _add_mr_image(ds, geometry)
    ds.set_pixel_data(encoding.stored[k], "MONOCHROME2", bits_stored=16, generate_instance_uid=False)
    return ds


def _sop_class(modality: str) -> str:
    from pydicom.uid import CTImageStorage, MRImageStorage

    return CTImageStorage if modality == "CT" else MRImageStorage


def _new_uid_for_slice(uids: _SeriesUids, k: int) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[uids.series, str(k)]))


def _file_meta(sop_class: str, sop_instance: str):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _add_patient_study_series(ds, modality, descriptors: SeriesDescriptors, uids: _SeriesUids, now) -> None:
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    # Patient (Type 2)
    ds.PatientName = descriptors.patient_name
    ds.PatientID = descriptors.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General Study
    ds.StudyInstanceUID = uids.study
    ds.StudyDate = date
    ds.StudyTime = time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = descriptors.study_description
    # General Series
    ds.Modality = modality
    ds.SeriesInstanceUID = uids.series
    ds.SeriesNumber = descriptors.series_number
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.SeriesDescription = descriptors.series_description
    ds.PatientPosition = "HFS"  # Type 2C, required for CT and MR
    # Frame of Reference
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = MANUFACTURER


def _add_image_plane(ds, k: int, geometry: Geometry) -> None:
    """ImagePositionPatient of slice k = origin + k * sk * (k axis); orientation = i and j axes."""
    from pydicom.valuerep import DSfloat

    direction = geometry.direction_matrix
    si, sj, sk = geometry.spacing
    position = np.asarray(geometry.origin) + k * sk * direction[:, 2]
    normal = np.cross(direction[:, 0], direction[:, 1])
    ds.ImagePositionPatient = [_ds(x) for x in position]
    ds.ImageOrientationPatient = [_ds(x) for x in (*direction[:, 0], *direction[:, 1])]
    ds.PixelSpacing = [_ds(sj), _ds(si)]  # DICOM: between rows first, then between columns
    ds.SliceThickness = _ds(sk)
    ds.SliceLocation = DSfloat(float(position @ normal), auto_format=True)


def _ds(value: float):
    """A DS that fits the 16-character limit with as many digits as it allows."""
    from pydicom.valuerep import DSfloat

    return DSfloat(float(value) + 0.0, auto_format=True)


def _add_general_image(ds, k: int, modality: str, now) -> None:
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if modality == "CT" else "OTHER"]
    ds.InstanceNumber = k + 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.ImageLaterality = "U"  # unpaired: satisfies General Series Laterality (2C) without claiming a side


def _add_ct_image(ds, encoding: _Encoding) -> None:
    ds.RescaleIntercept = _ds(encoding.intercept)
    ds.RescaleSlope = _ds(encoding.slope)
    ds.RescaleType = "HU"
    ds.KVP = ""
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"


def _add_mr_image(ds, geometry: Geometry) -> None:
    ds.ScanningSequence = "RM"  # research mode: the values were not acquired by this writer
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = ""
    ds.EchoTime = ""
    ds.EchoTrainLength = ""
    ds.SpacingBetweenSlices = _ds(geometry.spacing[2])
