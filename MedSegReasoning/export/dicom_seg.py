"""DICOM-SEG through highdicom: the segmentation object every PACS and viewer reads.

highdicom builds and validates the object; this module only decides what goes in: one segment per target with its
coded meaning (category, type, laterality modifier, anatomic region), recommended display colour, algorithm type
and identification, tracking id/UID (the same ones the SR uses, so a reader can join the two); frames aligned with
the source images the volume was read from (so each mask lands on the frame it was predicted on, whatever the
series' orientation); empty frames left out; and the research-use disclaimer.

Two encodings (``seg_type``):

- ``binary``: one bit-packed frame per segment and source slice; segments may overlap. Every SEG reader knows it.
- ``labelmap``: one 8/16-bit frame per source slice holding segment numbers (DICOM Label Map Segmentation Storage,
  Supplement 243, 2024); segments must not overlap. highdicom writes it about 8x faster (the per-segment frame
  loop is gone), dcmqi >= 1.5 reads it and dciodvfy from dicom3tools >= 2024 validates it; readers that predate
  the 2024 SOP Class do not know it.
- ``auto`` (the export command's default): ``labelmap`` when no two segments overlap, else ``binary``.

``write_dicom_seg`` keeps ``binary`` as its default so callers that relied on it see the same objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import atomic_output
from ..dialogue.records import PALETTE
from ..terminology.codes import Code
from ..volume.core import Volume
from ..wire.errors import InputError
from .assigned_uids import AssignedUids, derive_uids, fill_blank_uids

SERIES_DESCRIPTION = "MedSegReasoning SEG - research use only"
MANUFACTURER = "MedSegReasoning"
SEG_TYPES = ("auto", "binary", "labelmap")

# Segments without a colour of their own cycle through the dialogue's palette (Slicer's generic anatomy colours).
DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = PALETTE


class SourceNotReferenceableError(InputError):
    """The source series lacks the identity a SEG must reference (e.g. anonymised with its UIDs blanked)."""


TISSUE = Code("85756007", "SCT", "Tissue")


@dataclass(frozen=True)
class SegmentSpec:
    """One segment of the SEG: a target's mask on the volume's grid and how to describe it.

    ``modifier`` qualifies ``type`` (laterality: left, right, bilateral); ``region``/``region_modifier`` name the
    organ a finding lies in ("lesion" in the "left kidney"). ``tracking_id``/``tracking_uid`` identify the structure
    across objects (the SR's measurement group carries the same pair).
    """

    number: int
    label: str
    mask: np.ndarray  # bool [k, j, i], the volume's grid
    category: Code = TISSUE
    type: Code = TISSUE
    semiautomatic: bool = (
        True  # the user placed the prompt or edited the mask (SEMIAUTOMATIC) or a reasoner did (AUTOMATIC)
    )
    color: tuple[int, int, int] | None = None
    modifier: Code | None = None
    region: Code | None = None
    region_modifier: Code | None = None
    tracking_id: str | None = None
    tracking_uid: str | None = None


@dataclass(frozen=True)
class AlgorithmInfo:
    """Algorithm Identification: name and version are short (LO, 64 characters); ``parameters`` carry the full
    model names and digests, which do not fit there."""

    name: str
    version: str
    parameters: Mapping[str, str] = field(default_factory=dict)


def write_dicom_seg(
    volume: Volume,
    segments: Sequence[SegmentSpec],
    out_path: Path,
    algorithm: AlgorithmInfo,
    seg_type: str = "binary",
    source: Sequence[Any] | None = None,
) -> Path:
    """Write ``segments`` as a DICOM-SEG referencing ``volume``'s source series (``source``: its headers, e.g. with
    assigned UIDs, when the caller has read them); returns ``out_path``."""
    seg = build_dicom_seg(volume, segments, algorithm, seg_type, source)
    with atomic_output(out_path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return out_path


def build_dicom_seg(
    volume: Volume,
    segments: Sequence[SegmentSpec],
    algorithm: AlgorithmInfo,
    seg_type: str = "auto",
    source: Sequence[Any] | None = None,
):
    """The SEG as a ``highdicom.seg.Segmentation`` in memory (for a file, a PACS, or the SR that references it).

    ``source`` are the source headers (``read_source_headers(volume)``) when the caller already has them.
    Segments that do not overlap reach highdicom as one array of segment numbers whatever the SEG type: for a
    binary SEG it splits them itself, about 5x faster than from a (frames, rows, columns, segments) stack.
    """
    _check_segments(volume, segments)
    labels = label_array(segments, volume.shape)
    resolved = _resolve(seg_type, labels is not None, segments)
    source = list(source) if source is not None else read_source_headers(volume)
    stack = labels if labels is not None else np.stack([np.asarray(s.mask, dtype=np.uint8) for s in segments], axis=-1)
    pixel_array = _frames_in_source_order(volume, stack)
    return _build_segmentation(source, pixel_array, segments, algorithm, resolved)


def resolve_seg_type(seg_type: str, segments: Sequence[SegmentSpec]) -> str:
    """``auto`` -> ``labelmap`` unless segments overlap; an explicit ``labelmap`` with overlaps is refused."""
    shape = segments[0].mask.shape if segments else (0, 0, 0)
    return _resolve(seg_type, label_array(segments, shape) is not None, segments)


def _resolve(seg_type: str, disjoint: bool, segments: Sequence[SegmentSpec]) -> str:
    if seg_type not in SEG_TYPES:
        raise InputError(f"the SEG type {seg_type!r} is not one of {', '.join(SEG_TYPES)}.")
    if seg_type == "binary":
        return "binary"
    if disjoint:
        return "labelmap"
    if seg_type == "labelmap":
        a, b = first_overlap(segments) or (segments[0], segments[-1])
        raise InputError(
            f"segments {a.number} ('{a.label}') and {b.number} ('{b.label}') overlap, which a label map SEG cannot "
            "hold: use --seg-type binary (or auto)."
        )
    return "binary"


def label_array(segments: Sequence[SegmentSpec], shape: tuple[int, ...]) -> np.ndarray | None:
    """Segment numbers per voxel (uint8, or uint16 beyond 255 segments), or None when two segments share a voxel."""
    labels = np.zeros(shape, dtype=np.uint8 if len(segments) < 256 else np.uint16)
    flat = labels.reshape(-1)
    for spec in segments:
        where = np.flatnonzero(np.asarray(spec.mask, dtype=bool))  # one pass over the volume per segment
        if flat[where].any():
            return None
        flat[where] = spec.number
    return labels


def first_overlap(segments: Sequence[SegmentSpec]) -> tuple[SegmentSpec, SegmentSpec] | None:
    """The first pair of segments sharing a voxel, or None (for the message that names them)."""
    if len(segments) < 2:
        return None
    owner = np.zeros(segments[0].mask.shape, dtype=np.int32)
    for index, spec in enumerate(segments, start=1):
        mask = np.asarray(spec.mask, dtype=bool)
        taken = owner[mask]
        if taken.any():
            return segments[int(taken[taken > 0][0]) - 1], spec
        owner[mask] = index
    return None


def _check_segments(volume: Volume, segments: Sequence[SegmentSpec]) -> None:
    if not segments:
        raise InputError("there is nothing to export: the DICOM-SEG needs at least one segment.")
    numbers = [s.number for s in segments]
    if numbers != list(range(1, len(segments) + 1)):
        raise ValueError(f"segment numbers must run 1..n in order, got {numbers}")
    for spec in segments:
        if spec.mask.shape != volume.shape:
            raise ValueError(f"segment {spec.number} has shape {spec.mask.shape}, the volume {volume.shape}")
        if not spec.mask.any():
            raise InputError(
                f"segment {spec.number} ('{spec.label}') has an empty mask, and a DICOM-SEG cannot describe an empty "
                "segment: delete that entity (or segment it again), then export."
            )


def read_source_headers(volume: Volume) -> list:
    """The source images' headers (no pixels: a SEG and an SR only reference them), checked to be the very files
    the volume was read from."""
    return read_source_headers_with_uids(volume, assign_uids=False)[0]


def read_source_headers_with_uids(volume: Volume, assign_uids: bool) -> tuple[list, AssignedUids | None]:
    """``read_source_headers``; with ``assign_uids``, blank Study/Series/Frame of Reference UIDs are filled in
    (in memory) with UIDs derived from the volume's content hash (``assigned_uids.py``), returned with the headers."""
    import pydicom

    info = volume.source.dicom
    if info is None:
        raise InputError(
            f"DICOM-SEG needs a DICOM input, but {volume.source.path or 'this volume'} is {volume.source.kind}: "
            "use the NIfTI mask (mask.nii.gz) or a .seg.nrrd instead, or, with the DICOM series this image was "
            "made from, `medseg-reasoning export RESULT_DIR --format seg --series DICOM_DIR`."
        )
    datasets = []
    for path in info.files:
        try:
            datasets.append(pydicom.dcmread(path, stop_before_pixels=True))
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
                f"the source file {ds.filename!s} changed since it was read (its SOP Instance UID differs): "
                "run the segmentation again on the current series."
            )
    assigned = fill_blank_uids(datasets, derive_uids(volume)) if assign_uids else None
    missing = [name for name in ("StudyInstanceUID", "SeriesInstanceUID") if not datasets[0].get(name)]
    if missing:
        raise SourceNotReferenceableError(
            f"the source series has no {' or '.join(missing)} (it was probably anonymised with its UIDs blanked), "
            "so a DICOM-SEG could not reference it: add --assign-uids (UIDs derived from the voxels, recorded in "
            "result.json), or give the series proper UIDs and run `medseg-reasoning export RESULT_DIR --format seg "
            "--series DICOM_DIR`; mask.nii.gz needs no UIDs."
        )
    return datasets, assigned


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


def _frames_in_source_order(volume: Volume, stack: np.ndarray) -> np.ndarray:
    """Frame f aligned with source image (or source frame) f: ``stack`` is [k, j, i] segment numbers or
    [k, j, i, segment] 0/1 on the volume's grid."""
    info = volume.source.dicom
    assert info is not None
    if stack.shape[:3] != volume.shape:
        raise ValueError(f"segment masks have shape {stack.shape[:3]}, the volume {volume.shape}")
    if not info.is_multiframe:
        return stack
    frames = np.zeros_like(stack)
    frames[np.asarray(info.frame_numbers) - 1] = stack
    return frames


def _build_segmentation(
    source: list,
    pixel_array: np.ndarray,
    segments: Sequence[SegmentSpec],
    algorithm: AlgorithmInfo,
    seg_type: str = "binary",
):
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian

    algo = algorithm_sequence(algorithm)
    descriptions = [segment_description(spec, index, algo) for index, spec in enumerate(segments)]
    seg = hd.seg.Segmentation(
        source_images=source,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP
        if seg_type == "labelmap"
        else hd.seg.SegmentationTypeValues.BINARY,
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


def algorithm_sequence(algorithm: AlgorithmInfo):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.version[:64],
        parameters=dict(algorithm.parameters) or None,
    )


def segment_description(spec: SegmentSpec, index: int, algo):
    """One Segment Sequence item. highdicom has no argument for the type's modifier or the region's modifier, so
    those code items are added to the coded items highdicom built (the standard's place for them)."""
    import highdicom as hd

    color = spec.color or DEFAULT_COLORS[index % len(DEFAULT_COLORS)]
    tracking_id: str | None = None
    tracking_uid: str | None = None
    if spec.tracking_id and spec.tracking_uid:  # highdicom wants both or neither
        tracking_id, tracking_uid = spec.tracking_id[:64], spec.tracking_uid
    description = hd.seg.SegmentDescription(
        segment_number=spec.number,
        segment_label=spec.label[:64],
        segmented_property_category=_code(spec.category),
        segmented_property_type=_code(spec.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
        if spec.semiautomatic
        else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo,
        anatomic_regions=[_code(spec.region)] if spec.region else None,
        display_color=hd.color.CIELabColor.from_rgb(*color),
        tracking_id=tracking_id,
        tracking_uid=tracking_uid,
    )
    if spec.modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _code(spec.modifier)
        ]
    if spec.region is not None and spec.region_modifier is not None:
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [_code(spec.region_modifier)]
    return description


def _code(term: Code):
    import highdicom as hd

    return hd.sr.CodedConcept(value=term.value, scheme_designator=term.scheme, meaning=term.meaning)


def _series_number(source: list) -> int:
    """A series number after the source's, so viewers list the SEG next to the image series."""
    number = getattr(source[0], "SeriesNumber", None)
    try:
        return int(number) + 1000 if number is not None else 1000
    except (TypeError, ValueError):
        return 1000
