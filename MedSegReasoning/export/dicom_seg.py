"""DICOM-SEG through highdicom: the segmentation object every PACS and viewer reads.

highdicom builds and validates the object; this module only decides what goes in: one segment per target,
frames aligned with the source images the volume was read from (so each mask lands on the frame it was
predicted on, whatever the series' orientation), empty frames left out, and the research-use disclaimer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import atomic_output
from ..errors import InputError
from ..volume.core import Volume

SERIES_DESCRIPTION = "MedSegReasoning SEG - research use only"
MANUFACTURER = "MedSegReasoning"

# Distinct, readable default colours (Slicer's first generic anatomy colours), cycled per segment.
DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (128, 174, 128),
    (241, 214, 145),
    (177, 122, 101),
    (111, 184, 210),
    (216, 101, 79),
    (221, 130, 101),
    (144, 238, 144),
    (192, 104, 88),
)


class SourceNotReferenceableError(InputError):
    """The source series lacks the identity a SEG must reference (e.g. anonymised with its UIDs blanked)."""


@dataclass(frozen=True)
class CodedTerm:
    """A code triple as DICOM writes it (value, scheme, meaning)."""

    value: str
    scheme: str
    meaning: str


TISSUE = CodedTerm("85756007", "SCT", "Tissue")


@dataclass(frozen=True)
class SegmentSpec:
    """One segment of the SEG: a target's mask on the volume's grid and how to describe it."""

    number: int
    label: str
    mask: np.ndarray  # bool [k, j, i], the volume's grid
    category: CodedTerm = TISSUE
    type: CodedTerm = TISSUE
    semiautomatic: bool = True  # the user placed the prompt (SEMIAUTOMATIC) or a reasoner did (AUTOMATIC)
    color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class AlgorithmInfo:
    name: str
    version: str


def write_dicom_seg(
    volume: Volume, segments: Sequence[SegmentSpec], out_path: Path, algorithm: AlgorithmInfo
) -> Path:
    """Write ``segments`` as a BINARY DICOM-SEG referencing ``volume``'s source series; returns ``out_path``."""
    source = _source_datasets(volume)
    pixel_array = _frames_in_source_order(volume, segments)
    seg = _build_segmentation(source, pixel_array, segments, algorithm)
    with atomic_output(out_path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return out_path


def _source_datasets(volume: Volume) -> list:
    import pydicom

    info = volume.source.dicom
    if info is None:
        raise InputError(
            f"DICOM-SEG needs a DICOM input, but {volume.source.path or 'this volume'} is {volume.source.kind}: "
            "use the NIfTI mask (mask.nii.gz) instead."
        )
    datasets = []
    for path in info.files:
        try:
            datasets.append(pydicom.dcmread(path, stop_before_pixels=False))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise InputError(
                f"the source DICOM file {path} can no longer be read ({exc}): the DICOM-SEG must reference the "
                "series the mask was made on; restore the series and run again."
            ) from exc
    for ds in datasets:
        _fill_instance_identity_from_file_meta(ds)
    expected = info.sop_instance_uids[:1] if info.is_multiframe else info.sop_instance_uids
    for ds, uid in zip(datasets, expected, strict=True):
        if ds.SOPInstanceUID != uid:
            raise InputError(
                f"the source file {ds.filename} changed since it was read (its SOP Instance UID differs): "
                "run the segmentation again on the current series."
            )
    missing = [name for name in ("StudyInstanceUID", "SeriesInstanceUID") if not datasets[0].get(name)]
    if missing:
        raise SourceNotReferenceableError(
            f"the source series has no {' or '.join(missing)} (it was probably anonymised with its UIDs blanked), "
            "so a DICOM-SEG could not reference it: use mask.nii.gz, or give the series proper UIDs first."
        )
    return datasets


def _fill_instance_identity_from_file_meta(ds) -> None:
    """Some anonymisers blank SOP Class/Instance UID in the dataset but keep them in the file meta, which
    identifies the same instance; the reader uses the same fallback, so SEG references match what was read."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    if not ds.get("SOPInstanceUID") and meta.get("MediaStorageSOPInstanceUID"):
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if not ds.get("SOPClassUID") and meta.get("MediaStorageSOPClassUID"):
        ds.SOPClassUID = meta.MediaStorageSOPClassUID


def _frames_in_source_order(volume: Volume, segments: Sequence[SegmentSpec]) -> np.ndarray:
    """(frames, rows, cols, segments) uint8, frame f aligned with source image (or source frame) f."""
    info = volume.source.dicom
    assert info is not None
    stack = np.stack([s.mask.astype(np.uint8) for s in segments], axis=-1)
    if stack.shape[:3] != volume.shape:
        raise ValueError(f"segment masks have shape {stack.shape[:3]}, the volume {volume.shape}")
    if not info.is_multiframe:
        return stack
    frames = np.zeros_like(stack)
    frames[np.asarray(info.frame_numbers) - 1] = stack
    return frames


def _build_segmentation(source: list, pixel_array: np.ndarray, segments: Sequence[SegmentSpec], algorithm: AlgorithmInfo):
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import ExplicitVRLittleEndian

    algo = hd.AlgorithmIdentificationSequence(
        name=algorithm.name[:64], family=codes.cid7162.ArtificialIntelligence, version=algorithm.version[:64]
    )
    descriptions = []
    for index, spec in enumerate(segments):
        color = spec.color or DEFAULT_COLORS[index % len(DEFAULT_COLORS)]
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=spec.number,
                segment_label=spec.label[:64],
                segmented_property_category=_code(spec.category),
                segmented_property_type=_code(spec.type),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
                if spec.semiautomatic
                else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algo,
                display_color=hd.color.CIELabColor.from_rgb(*color),
            )
        )
    seg = hd.seg.Segmentation(
        source_images=source,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=_series_number(source),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=f"medseg-reasoning {__version__}",
        device_serial_number="0",
        content_label="SEGMENTATION",
        content_description="Reasoning segmentation (research use only)",
        series_description=SERIES_DESCRIPTION,
        omit_empty_frames=True,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    return seg


def _code(term: CodedTerm):
    import highdicom as hd

    return hd.sr.CodedConcept(value=term.value, scheme_designator=term.scheme, meaning=term.meaning)


def _series_number(source: list) -> int:
    """A series number after the source's, so viewers list the SEG next to the image series."""
    number = getattr(source[0], "SeriesNumber", None)
    try:
        return int(number) + 1000 if number is not None else 1000
    except (TypeError, ValueError):
        return 1000
