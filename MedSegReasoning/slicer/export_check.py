"""Checks before exporting a session's segments, each failing one a sentence that says what to do.

Exporting is where a quiet mistake travels furthest: a DICOM-SEG that references no series, an empty segment in a
PACS, a segment coded only as Slicer's placeholder "Tissue". So the module runs these checks first and shows every
problem at once, instead of the first exception of the writer:

- the input volume did not come from DICOM (no ``DICOM.instanceUIDs`` attribute, which Slicer's DICOM plugins set on
  the volumes they load), while DICOM-SEG or SR is asked for: those reference the source series' instances;
- a segment to export is empty (an edit erased it, or the segmenter found nothing);
- a segment has no terminology, or only the default entry every new Slicer segment starts with (Tissue/Tissue),
  so the SEG would say nothing about what it is;
- nothing to export at all (no segments, or all rejected).

Rejected entities are not exported (the exporters leave them out), so they are not checked either.

The rules are plain functions over ``SegmentInfo`` (testable without Slicer); ``check_scene`` reads a
``SessionScene`` into them. ``save_export`` writes what the backend's export endpoint returned (one file, or a zip
of several) into a folder, the step every export destination (folder, DICOM database, PACS) starts with.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DICOM_FORMATS = ("seg", "sr", "dicom-seg")
DICOM_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"  # set by Slicer's DICOMScalarVolumePlugin on volumes it loads
SLICER_DEFAULT_TYPE_CODE = ("SCT", "85756007")  # "Tissue": vtkSegment's default terminology entry


@dataclass(frozen=True)
class SegmentInfo:
    """What the checks need of one segment."""

    segment_id: str
    name: str
    voxels: int
    terminology: str  # Slicer's serialised entry, "" when none
    review: str = "proposed"


@dataclass(frozen=True)
class ExportProblem:
    """One reason not to export yet: ``code`` for programs, ``message`` for the user, the segment when it is one's."""

    code: str
    message: str
    segment_id: str | None = None

    def __str__(self) -> str:
        return self.message


def terminology_codes(entry: str) -> dict[str, tuple[str, str, str] | None]:
    """Category, type and modifier of Slicer's serialised entry ``context~category~type~modifier~...`` as
    ``(scheme, value, meaning)``; None for a part that is absent or empty (``^^``)."""
    parts = (entry or "").split("~")
    out: dict[str, tuple[str, str, str] | None] = {}
    for name, index in (("category", 1), ("type", 2), ("modifier", 3)):
        fields = parts[index].split("^") if index < len(parts) else []
        scheme, value, meaning = (fields + ["", "", ""])[:3]
        out[name] = (scheme, value, meaning) if scheme and value else None
    return out


def check_export(
    formats: Iterable[str], *, source_is_dicom: bool, segments: Sequence[SegmentInfo]
) -> list[ExportProblem]:
    """Every problem that would make this export wrong or fail; empty when it may go ahead."""
    formats = [f.strip().lower() for f in formats if f.strip()]
    problems: list[ExportProblem] = []
    dicom = [f for f in formats if f in DICOM_FORMATS]
    if dicom and not source_is_dicom:
        problems.append(
            ExportProblem(
                "input_not_dicom",
                f"{' and '.join(_format_name(f) for f in dicom)} must reference the DICOM series the segments were "
                "made on, but the input volume was not loaded from DICOM. Load the series through the DICOM module "
                "and segment it there, or export as .seg.nrrd or NIfTI instead.",
            )
        )
    exported = [s for s in segments if s.review != "rejected"]
    if not exported:
        problems.append(
            ExportProblem(
                "nothing_to_export",
                "There is nothing to export: the session has no segments, or all of them are rejected. Ask a "
                "question first, or confirm a segment.",
            )
        )
    for s in exported:
        label = f"Segment '{s.name}' ({s.segment_id})"
        if s.voxels <= 0:
            problems.append(
                ExportProblem(
                    "empty_segment",
                    f"{label} is empty. Paint it in Segment Editor, or reject or delete it so it is not exported.",
                    s.segment_id,
                )
            )
        codes = terminology_codes(s.terminology)
        if codes["category"] is None or codes["type"] is None:
            problems.append(
                ExportProblem(
                    "missing_terminology",
                    f"{label} has no terminology: double-click its colour in the Segmentations module and choose "
                    "what structure it is, so the DICOM-SEG can say it.",
                    s.segment_id,
                )
            )
        elif codes["type"][:2] == SLICER_DEFAULT_TYPE_CODE and "tissue" not in s.name.lower():
            problems.append(
                ExportProblem(
                    "missing_terminology",
                    f"{label} has only Slicer's default terminology (Tissue), not a code for what it is: "
                    "double-click its colour in the Segmentations module and choose the structure.",
                    s.segment_id,
                )
            )
    return problems


def check_scene(
    session_scene: Any, formats: Iterable[str], segment_ids: Sequence[str] | None = None
) -> list[ExportProblem]:
    """``check_export`` on a ``SessionScene``: the input volume's DICOM origin and its segments as they are now."""
    from .scene import TAG_REVIEW, segment_tag

    volume = session_scene.volume_node
    source_is_dicom = bool(volume is not None and volume.GetAttribute(DICOM_UIDS_ATTRIBUTE))
    segmentation = session_scene.segmentation
    infos = []
    for segment_id in segment_ids if segment_ids is not None else session_scene.entity_ids():
        segment = segmentation.GetSegment(segment_id)
        if segment is None:
            continue
        infos.append(
            SegmentInfo(
                segment_id=segment_id,
                name=segment.GetName(),
                voxels=session_scene.current_mask(segment_id).voxel_count,
                terminology=segment.GetTerminology() or "",
                review=segment_tag(segment, TAG_REVIEW) or "proposed",
            )
        )
    return check_export(formats, source_is_dicom=source_is_dicom, segments=infos)


EXPORT_FILE_NAMES = {"seg": "seg.dcm", "sr": "sr.dcm", "seg-nrrd": "segmentation.seg.nrrd", "nifti": "labels.nii.gz"}


def save_export(data: bytes, fmt: str, folder: str | Path) -> list[Path]:
    """Write what the server's export endpoint answered into ``folder``: a zip of several files is unpacked (names
    kept, nothing written outside ``folder``), a single file gets the name ``medseg-reasoning export`` gives it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if data[:4] == b"PK\x03\x04":
        out = []
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.infolist():
                if member.is_dir():
                    continue
                target = (folder / member.filename).resolve()
                if folder.resolve() not in target.parents:
                    raise ValueError(f"the export holds a file outside its folder ({member.filename}): not written.")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
                out.append(target)
        return out
    target = folder / EXPORT_FILE_NAMES.get(fmt, f"export.{fmt}")
    target.write_bytes(data)
    return [target]


def _format_name(fmt: str) -> str:
    return {"seg": "DICOM-SEG", "dicom-seg": "DICOM-SEG", "sr": "DICOM SR"}.get(fmt, fmt)


__all__ = ["ExportProblem", "SegmentInfo", "check_export", "check_scene", "save_export", "terminology_codes"]
