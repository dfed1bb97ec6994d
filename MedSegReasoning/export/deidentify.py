"""De-identification of the objects this tool makes (SEG, SR), on the way out of the hospital (opt-in).

DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile, applied to derived objects, with the
Clean Structured Content and Clean Descriptors options:

- identifying attributes copied from the source (patient name and ID, birth date, sex, accession number, study
  ID, referring physician, institution, ...) are emptied, replaced by a pseudonym, or removed, per the profile's
  action for each (D/Z/X);
- every UID that is not a DICOM-defined one (SOP classes, transfer syntaxes: ``1.2.840.10008.*``) is replaced,
  *consistently*: the same original UID always gets the same new one, across objects and across exports, so the
  de-identified SEG still references its (de-identified) source images and the SR still references the SEG;
- dates and times become fixed dummies (Longitudinal Temporal Information: removed); private attributes go;
- structured content keeps codes and measurements; free text typed by people or written by a model (the question,
  the reasoning) is left out when the SR is built (``include_free_text=False``); our own generated descriptions
  (series description, segment labels from the terminology) stay (Clean Descriptors).

The remapping (original UID -> new UID, patient ID -> pseudonym) is kept locally in a JSON file that never leaves
the machine (``--deid-map``, default ``$MEDSEG_DEID_MAP`` or ``~/.local/share/medseg-reasoning/deid-map.json``),
readable by its owner only: it is the key that re-identifies, so keep it where the PHI is.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_output
from ..wire.errors import InputError

MAP_FORMAT = "medseg-reasoning/deid-map"
MAP_VERSION = 1
ENV_MAP = "MEDSEG_DEID_MAP"
DICOM_ROOT = "1.2.840.10008."
DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000"}
DUMMY_PERSON = "ANONYMOUS"

# Annex E action X (remove) for attributes a derived object can inherit from its source or carry itself.
REMOVE = frozenset(
    {
        "PatientBirthTime",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientMotherBirthName",
        "PatientBirthName",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "IssuerOfPatientID",
        "MilitaryRank",
        "EthnicGroup",
        "Occupation",
        "AdditionalPatientHistory",
        "PatientComments",
        "MedicalRecordLocator",
        "PatientReligiousPreference",
        "RegionOfResidence",
        "CountryOfResidence",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "InstitutionCodeSequence",
        "StationName",
        "PhysiciansOfRecord",
        "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "OperatorsName",
        "RequestingPhysician",
        "StudyDescription",
        "ProtocolName",
        "ImageComments",
        "RequestAttributesSequence",
        "AdmittingDiagnosesDescription",
        "ReferencedPatientSequence",
        "ReferencedStudySequence",
        "PerformedProcedureStepDescription",
        "PerformedProcedureStepID",
        "ScheduledProcedureStepDescription",
        "RequestedProcedureDescription",
        "AcquisitionComments",
        "InstanceCreatorUID",
        "TimezoneOffsetFromUTC",
    }
)
# Annex E action Z (empty; Type 2 in the IODs): kept present, without a value.
EMPTY = frozenset(
    {
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "ReferringPhysicianName",
        "ContentCreatorName",
    }
)
# UIDs that name a coding scheme, a context or an implementation, not a patient's object: kept.
KEEP_UIDS = frozenset({"CodingSchemeUID", "ContextUID", "ImplementationClassUID", "MappingResourceUID"})


@dataclass
class DeidentificationMap:
    """The local remapping: original UID -> replacement, original patient ID -> pseudonym (and its name)."""

    path: Path
    uids: dict[str, str] = field(default_factory=dict)
    patients: dict[str, dict[str, str]] = field(default_factory=dict)

    @staticmethod
    def load(path: str | Path | None = None) -> DeidentificationMap:
        path = Path(path).expanduser() if path else default_map_path()
        if not path.exists():
            return DeidentificationMap(path)
        try:
            doc = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"the de-identification map {path} cannot be read ({exc}): fix or move it.") from None
        if not isinstance(doc, dict) or doc.get("format") != MAP_FORMAT:
            raise InputError(f"{path} is not a {MAP_FORMAT} file: give another --deid-map.")
        return DeidentificationMap(path, dict(doc.get("uids", {})), dict(doc.get("patients", {})))

    def uid(self, original: str) -> str:
        if original not in self.uids:
            from pydicom.uid import generate_uid

            self.uids[original] = str(generate_uid(prefix=None))  # 2.25.<random 128 bits>: nothing derivable
        return self.uids[original]

    def patient(self, original_id: str, original_name: str) -> dict[str, str]:
        key = original_id or f"(no id) {original_name}"
        if key not in self.patients:
            token = uuid.uuid4().hex[:10].upper()
            self.patients[key] = {"id": f"ANON-{token}", "name": f"ANONYMOUS^{token}", "original_name": original_name}
        return self.patients[key]

    def save(self) -> Path:
        """Atomic, and readable by its owner only (it re-identifies everything exported with it)."""
        doc = {"format": MAP_FORMAT, "version": MAP_VERSION, "uids": self.uids, "patients": self.patients}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.path, private=True) as tmp:
            tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        return self.path


def default_map_path() -> Path:
    if os.environ.get(ENV_MAP):
        return Path(os.environ[ENV_MAP]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "medseg-reasoning" / "deid-map.json"


def deidentify(original: Any, mapping: DeidentificationMap) -> Any:
    """A de-identified copy of ``original`` (a pydicom Dataset, e.g. a highdicom SEG or SR).

    A copy, because highdicom shares data elements between an object and those built from it (the SR copies the
    SEG's patient and study elements): changing them in place would change the other object too.
    """
    ds = copy.deepcopy(original)
    patient = mapping.patient(str(ds.get("PatientID", "") or ""), str(ds.get("PatientName", "") or ""))
    ds.remove_private_tags()
    _clean(ds, mapping, patient)
    _mark(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _clean(ds: Any, mapping: DeidentificationMap, patient: dict[str, str]) -> None:
    """One pass over every element, nested sequences included."""
    for elem in list(ds):
        keyword = elem.keyword
        if keyword in REMOVE:
            del ds[elem.tag]
        elif elem.VR == "SQ":
            for item in elem.value:
                _clean(item, mapping, patient)
        elif keyword == "PatientID":
            elem.value = patient["id"]
        elif keyword == "PatientName":
            elem.value = patient["name"]
        elif keyword in EMPTY:
            elem.value = ""
        elif elem.VR == "UI":
            _replace_uids(elem, mapping)
        elif elem.VR == "PN" and elem.value:
            elem.value = DUMMY_PERSON
        elif elem.VR in DUMMY and elem.value:
            elem.value = DUMMY[elem.VR]


def _replace_uids(elem: Any, mapping: DeidentificationMap) -> None:
    if elem.keyword in KEEP_UIDS or not elem.value:
        return
    values = list(elem.value) if elem.VM > 1 else [elem.value]
    new = [mapping.uid(str(v)) if not str(v).startswith(DICOM_ROOT) else str(v) for v in values]
    elem.value = new if elem.VM > 1 else new[0]


def _mark(ds: Any) -> None:
    """Patient Identity Removed, and which profile and options were applied (coded, as the standard lists them)."""
    import highdicom as hd

    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = ["PS3.15 Annex E Basic Profile", "Clean Structured Content", "Clean Descriptors"]
    ds.DeidentificationMethodCodeSequence = [
        hd.sr.CodedConcept("113100", "DCM", "Basic Application Confidentiality Profile"),
        hd.sr.CodedConcept("113104", "DCM", "Clean Structured Content Option"),
        hd.sr.CodedConcept("113105", "DCM", "Clean Descriptors Option"),
    ]
    ds.LongitudinalTemporalInformationModified = "REMOVED"
