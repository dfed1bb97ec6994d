"""DICOM SR (TID 1500 Measurement Report) through highdicom: the findings, in the form PACS and reporting tools read.

One Comprehensive 3D SR per export. What goes where, and why:

- observation context: the reasoner (or, for a user's own prompts, the segmenter) as the *device* observer, because
  the numbers and the placement are a machine's, not a person's;
- one Volumetric ROI measurement group (TID 1411) per exported structure: tracking identifier = entity id with a
  tracking UID shared with the SEG segment, finding = its SNOMED type, finding category, finding site with
  laterality (the organ a lesion lies in, or the structure's own side), the referenced SEG segment, the algorithm,
  the round as "Activity Session", and two measurements computed from the exported mask: volume (mL) and the largest
  in-plane diameter on the key slice (mm, with the key slice image referenced);
- the TID 1500 "Qualitative Evaluations" container (row 12) holds text: each round's question ("Request") and the
  reasoner's reasoning, each structure's findings sentence ("Findings") and its review status. highdicom has no
  argument for this container, so it is appended to the report highdicom built, with highdicom's content items;
- Verification Flag: VERIFIED only when the user confirmed every exported structure and named the verifier
  (DICOM requires a Verifying Observer Name); otherwise UNVERIFIED. Completion: COMPLETE (the export holds every
  structure that was not rejected); Preliminary Flag: FINAL only when verified.

``read_measurement_report`` reads such a document back into plain dataclasses (and tests that it round-trips).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..terminology.codes import Code
from ..wire.errors import InputError
from .dicom_seg import MANUFACTURER
from .model import ExportSegment, ExportSet

SERIES_DESCRIPTION = "MedSegReasoning SR - research use only"
_ROUND_QUESTION = re.compile(r"^Round (\d+): (.*)$", re.DOTALL)
_ROUND_REASONING = re.compile(r"^Round (\d+) reasoning: (.*)$", re.DOTALL)
_ENTITY_TEXT = re.compile(r"^([A-Za-z][\w.-]*): (.*)$", re.DOTALL)
_STATUS = re.compile(r"^([A-Za-z][\w.-]*) status: review (\w+); (.*)$", re.DOTALL)


def _codes():
    """The concept names this module uses, built once (pydicom's code dictionary is slow to search)."""
    from pydicom.sr.codedict import codes

    return {
        "ml": Code("ml", "UCUM", "milliliter"),
        "mm": codes.UCUM.Millimeter,
        "volume": codes.SCT.Volume,
        "diameter": codes.SCT.Diameter,
        "maximum": codes.SCT.Maximum,
        "qualitative": Code("C0034375", "UMLS", "Qualitative Evaluations"),
        "request": codes.DCM.Request,
        "comment": codes.DCM.Comment,
        "findings": codes.DCM.Findings,
        "session": Code("C67447", "NCIt", "Activity Session"),
        "ct": codes.LN.CTUnspecifiedBodyRegion,
        "mr": Code("25056-3", "LN", "MRI unspecified body region"),
        "imaging": codes.SCT.ImagingProcedure,
    }


# ---------------------------------------------------------------------------------------------------------------
# Writing


def build_measurement_report(
    export_set: ExportSet,
    seg: Any,
    source_headers: Sequence[Any],
    *,
    verifier: str | None = None,
    organization: str | None = None,
    include_free_text: bool = True,
):
    """A ``highdicom.sr.Comprehensive3DSR`` reporting ``export_set``'s structures, referencing ``seg``'s segments.

    ``include_free_text=False`` leaves out the question and reasoning texts (they are typed by people or written
    by a model, and may name a patient; de-identification drops them).
    """
    import highdicom as hd

    c = _codes()
    groups = [_measurement_group(s, export_set, seg, source_headers, c) for s in export_set.segments]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(export_set),
        procedure_reported=_procedure(export_set.modality, c),
        imaging_measurements=groups,
        title=hd.sr.CodedConcept("126000", "DCM", "Imaging Measurement Report"),
    )
    report[0].ContentSequence.append(_qualitative_evaluations(export_set, include_free_text, c))
    verified = bool(verifier) and export_set.all_confirmed
    return hd.sr.Comprehensive3DSR(
        evidence=[*source_headers, seg],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=int(getattr(seg, "SeriesNumber", 1000)) + 1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=verified,
        is_verified=verified,
        verifying_observer_name=verifier if verified else None,
        verifying_organization=(organization or "Unknown") if verified else None,
        series_description=SERIES_DESCRIPTION,
    )


def _observation_context(export_set: ExportSet):
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    name = export_set.models.observer_name
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["medseg-reasoning device observer", name]),
        name=name[:64],
        manufacturer_name=MANUFACTURER,
        model_name=name[:64],
    )
    observer = hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    return hd.sr.ObservationContext(observer_device_context=observer)


def _procedure(modality: str, c: dict):
    return {"CT": c["ct"], "MR": c["mr"]}.get(modality.upper(), c["imaging"])


def _measurement_group(segment: ExportSegment, export_set: ExportSet, seg, source_headers, c: dict):
    import highdicom as hd

    tracking = hd.sr.TrackingIdentifier(uid=segment.tracking_uid, identifier=segment.entity_id)
    t = segment.terminology
    finding_type = _concept(t.type) if t.type is not None else hd.sr.CodedConcept("85756007", "SCT", "Tissue")
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=segment.number,
            source_series=hd.sr.SourceSeriesForSegmentation(source_headers[0].SeriesInstanceUID),
        ),
        finding_type=finding_type,
        finding_category=_concept(t.category) if t.category is not None else None,
        finding_sites=_finding_sites(segment),
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=export_set.models.algorithm_name[:64], version=export_set.models.algorithm_version[:64]
        ),
        session=f"Round {segment.round}" if segment.round is not None else None,
        measurements=_measurements(segment, export_set, source_headers, c),
    )


def _finding_sites(segment: ExportSegment):
    """The organ a finding lies in (with its side), or the structure itself when only its side says more."""
    import highdicom as hd

    t = segment.terminology
    if t.region is not None:
        return [
            hd.sr.FindingSite(_concept(t.region), laterality=_concept(t.region_modifier) if t.region_modifier else None)
        ]
    if t.type is not None and t.modifier is not None:
        return [hd.sr.FindingSite(_concept(t.type), laterality=_concept(t.modifier))]
    return None


def _measurements(segment: ExportSegment, export_set: ExportSet, source_headers, c: dict):
    import highdicom as hd

    items = [hd.sr.Measurement(name=c["volume"], value=round(segment.volume_ml, 4), unit=c["ml"])]
    if segment.max_diameter_mm is not None and segment.key_slice is not None:
        items.append(
            hd.sr.Measurement(
                name=c["diameter"],
                value=round(segment.max_diameter_mm, 3),
                unit=c["mm"],
                derivation=c["maximum"],
                referenced_images=[_key_slice_image(export_set, segment.key_slice, source_headers)],
            )
        )
    return items


def _key_slice_image(export_set: ExportSet, k: int, source_headers):
    """The image (or frame) of the key slice: where the diameter was measured."""
    import highdicom as hd

    volume = export_set.volume
    info = volume.source.dicom if volume is not None else None
    if info is not None and info.is_multiframe:
        ds = source_headers[0]
        return hd.sr.SourceImageForMeasurement(ds.SOPClassUID, ds.SOPInstanceUID, [info.frame_numbers[k]])
    ds = source_headers[k]
    return hd.sr.SourceImageForMeasurement(ds.SOPClassUID, ds.SOPInstanceUID)


def _qualitative_evaluations(export_set: ExportSet, include_free_text: bool, c: dict):
    import highdicom as hd
    from highdicom.sr import RelationshipTypeValues

    container = hd.sr.ContainerContentItem(name=c["qualitative"], relationship_type=RelationshipTypeValues.CONTAINS)
    items = []

    def text(name, value: str) -> None:
        if value:
            items.append(
                hd.sr.TextContentItem(name=name, value=value, relationship_type=RelationshipTypeValues.CONTAINS)
            )

    if include_free_text:
        for rnd in export_set.rounds:
            text(c["request"], f"Round {rnd.index}: {rnd.question}" if rnd.question else "")
            text(c["comment"], f"Round {rnd.index} reasoning: {rnd.reasoning}" if rnd.reasoning else "")
    for s in export_set.segments:
        text(c["findings"], f"{s.entity_id}: {s.findings}" if s.findings else "")
        text(c["comment"], f"{s.entity_id} status: review {s.review}; {_provenance(s)}")
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _provenance(segment: ExportSegment) -> str:
    placed = "placed by the reasoner" if segment.automatic and not segment.edited else "prompted by the user"
    mask = "mask edited by the user" if segment.edited else "mask as segmented"
    return f"{placed}; {mask}"


def _concept(code: Any):
    import highdicom as hd

    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


# ---------------------------------------------------------------------------------------------------------------
# Reading back


@dataclass(frozen=True)
class SRFinding:
    """One measurement group as read back."""

    tracking_id: str
    tracking_uid: str
    finding: Code | None
    category: Code | None
    site: Code | None
    laterality: Code | None
    volume_ml: float | None
    diameter_mm: float | None
    segment_number: int | None
    seg_sop_instance_uid: str | None
    round: int | None
    findings: str = ""
    review: str = ""
    provenance: str = ""


@dataclass(frozen=True)
class SRContent:
    """A measurement report as read back: the findings, the rounds' texts, who observed and who verified."""

    findings: list[SRFinding]
    questions: dict[int, str] = field(default_factory=dict)
    reasoning: dict[int, str] = field(default_factory=dict)
    observer: str = ""
    verification: str = ""
    verifier: str = ""

    def finding(self, tracking_id: str) -> SRFinding:
        return next(f for f in self.findings if f.tracking_id == tracking_id)


def read_measurement_report(path_or_dataset: str | Path | Any) -> SRContent:
    """Read a TID 1500 report written by ``build_measurement_report`` (or any TID 1500 with volumetric groups)."""
    import highdicom as hd

    sr = (
        hd.sr.srread(path_or_dataset)
        if isinstance(path_or_dataset, (str, Path))
        else hd.sr.Comprehensive3DSR.from_dataset(path_or_dataset)
    )
    c = _codes()
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):  # highdicom reads other root templates as plain content
        raise InputError(
            f"{path_or_dataset if isinstance(path_or_dataset, (str, Path)) else 'the dataset'} is a structured report "
            "but not a TID 1500 measurement report: it has no findings to read."
        )
    texts = _root_texts(report, c)
    by_entity = _entity_texts(texts)
    findings = [_read_group(g, c, by_entity) for g in report.get_volumetric_roi_measurement_groups()]
    questions, reasoning = _round_texts(texts)
    verifier = ""
    if getattr(sr, "VerificationFlag", "") == "VERIFIED" and "VerifyingObserverSequence" in sr:
        verifier = str(sr.VerifyingObserverSequence[0].VerifyingObserverName)
    return SRContent(
        findings=findings,
        questions=questions,
        reasoning=reasoning,
        observer=_device_name(report),
        verification=str(getattr(sr, "VerificationFlag", "")),
        verifier=verifier,
    )


def _read_group(group, c: dict, by_entity: dict[str, dict[str, str]]) -> SRFinding:
    from highdicom.sr.utils import find_content_items

    def code(concept) -> Code | None:
        return None if concept is None else Code(concept.value, concept.scheme_designator, concept.meaning)

    def value(name) -> float | None:
        found = group.get_measurements(name=name)
        return float(found[0].value) if found else None

    sites = group.finding_sites
    site = sites[0] if sites else None
    referenced = group.referenced_segment
    session = find_content_items(group[0], name=c["session"])
    tracking_id = str(group.tracking_identifier or "")
    extra = by_entity.get(tracking_id, {})
    return SRFinding(
        tracking_id=tracking_id,
        tracking_uid=str(group.tracking_uid or ""),
        finding=code(group.finding_type),
        category=code(group.finding_category),
        site=code(site.value) if site is not None else None,
        laterality=code(site.laterality) if site is not None else None,
        volume_ml=value(c["volume"]),
        diameter_mm=value(c["diameter"]),
        segment_number=int(referenced.referenced_segment_numbers[0]) if referenced is not None else None,
        seg_sop_instance_uid=str(referenced.referenced_sop_instance_uid) if referenced is not None else None,
        round=int(str(session[0].TextValue).split()[-1]) if session else None,
        findings=extra.get("findings", ""),
        review=extra.get("review", ""),
        provenance=extra.get("provenance", ""),
    )


def _root_texts(report, c: dict) -> list[tuple[str, str]]:
    """(concept value, text) of the TEXT items in the report's Qualitative Evaluations container."""
    from highdicom.sr.utils import find_content_items

    containers = find_content_items(report[0], name=c["qualitative"])
    if not containers:
        return []
    return [(item.ConceptNameCodeSequence[0].CodeValue, str(item.TextValue)) for item in containers[0].ContentSequence]


def _round_texts(texts: list[tuple[str, str]]) -> tuple[dict[int, str], dict[int, str]]:
    questions: dict[int, str] = {}
    reasoning: dict[int, str] = {}
    for _, text in texts:
        if m := _ROUND_REASONING.match(text):
            reasoning[int(m[1])] = m[2]
        elif m := _ROUND_QUESTION.match(text):
            questions[int(m[1])] = m[2]
    return questions, reasoning


def _entity_texts(texts: list[tuple[str, str]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    findings_code = "121070"
    for concept, text in texts:
        if m := _STATUS.match(text):
            out.setdefault(m[1], {}).update(review=m[2], provenance=m[3])
        elif concept == findings_code and (m := _ENTITY_TEXT.match(text)):
            out.setdefault(m[1], {})["findings"] = m[2]
    return out


def _device_name(report) -> str:
    from highdicom.sr.utils import find_content_items
    from pydicom.sr.codedict import codes

    items = find_content_items(report[0], name=codes.DCM.DeviceObserverName, recursive=True)
    return str(items[0].TextValue) if items else ""
