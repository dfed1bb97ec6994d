"""UIDs for a series that has none: ``ask --assign-uids`` and ``export --assign-uids``.

Why: anonymisers often blank Study/Series Instance UID (the shared abdominal CT is one such series), and a DICOM-SEG
or SR must reference its source images by study and series. Rather than refuse, the user may let the SEG and SR
reference the source under UIDs derived from the voxels themselves: the volume's content hash (voxels and
geometry) is the entropy of ``pydicom.uid.generate_uid``, so the same series always gets the same UIDs (a second
``ask``, a later ``export`` and another machine agree), and another series never does. Only blank UIDs are
assigned; a UID the series carries is kept. The source files are never modified: the UIDs live in the SEG/SR's
references and in result.json's ``assigned_uids`` (docs/result-schema.md), so the user can give the same UIDs to
the series where it is stored (a PACS import) and the SEG will resolve there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..volume.core import Volume

# Bump when the derivation changes, so UIDs of one recipe are never mistaken for another's.
RECIPE = "medseg-reasoning assign-uids v1"
# (keyword in the source headers, key in result.json)
_ASSIGNABLE = (
    ("StudyInstanceUID", "study_instance_uid"),
    ("SeriesInstanceUID", "series_instance_uid"),
    ("FrameOfReferenceUID", "frame_of_reference_uid"),
)


@dataclass(frozen=True)
class AssignedUids:
    """UIDs derived from ``content_sha256`` for each assignable attribute; ``assigned`` lists those the series
    lacked (filled in), the others are left as the series has them."""

    content_sha256: str
    uids: dict[str, str]  # result.json key -> derived UID, for every assignable attribute
    assigned: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """result.json's ``assigned_uids``: only the UIDs actually assigned, and how they were derived."""
        return {
            **{key: self.uids[key] for key in self.assigned},
            "derived_from": {"content_sha256": self.content_sha256, "recipe": RECIPE},
        }

    def describe(self) -> str:
        """One line for the terminal."""
        names = {key: keyword for keyword, key in _ASSIGNABLE}
        parts = ", ".join(f"{names[key]} {self.uids[key]}" for key in self.assigned)
        return f"the source series had no {', '.join(names[k] for k in self.assigned)}: assigned (from its content hash) {parts}"


def derive_uids(volume: Volume) -> AssignedUids:
    """The UIDs ``volume`` gets under ``--assign-uids``: a function of its content hash only."""
    from pydicom.uid import generate_uid

    digest = volume.content_hash()
    uids = {key: str(generate_uid(entropy_srcs=[RECIPE, keyword, digest])) for keyword, key in _ASSIGNABLE}
    return AssignedUids(digest, uids)


def fill_blank_uids(headers: list, derived: AssignedUids) -> AssignedUids:
    """Put the derived UIDs into the (in-memory) source headers where the series has none; returns ``derived``
    with ``assigned`` naming what was filled in. The files are not touched."""
    assigned = []
    for keyword, key in _ASSIGNABLE:
        if any(not ds.get(keyword) for ds in headers):
            assigned.append(key)
            for ds in headers:
                if not ds.get(keyword):
                    setattr(ds, keyword, derived.uids[key])
    return AssignedUids(derived.content_sha256, derived.uids, tuple(assigned))


def describe_record(record: dict[str, Any]) -> str:
    """result.json's ``assigned_uids`` in one line, for the terminal."""
    names = {
        "study_instance_uid": "study",
        "series_instance_uid": "series",
        "frame_of_reference_uid": "frame of reference",
    }
    uids = ", ".join(f"{names[k]} {v}" for k, v in record.items() if k in names)
    return f"the source series had blank UIDs; assigned from its content hash: {uids}"
