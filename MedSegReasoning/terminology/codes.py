"""Coded concepts and what a free-text label was mapped to: the types the Slicer side and the exporters need.

Importing this module pulls neither the matcher nor the sentence-embedding model (``terminology.matcher``,
``terminology.embedder``). The package docstring (``terminology/__init__.py``) describes the closed list and the
mapping steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, overload

from pydicom.sr.coding import Code as PydicomCode

from .text import normalise

NO_STANDARD_CODE = "no standard code"

SLICER_ANATOMIC_REGIONS = "Anatomic codes - DICOM master list"


class Code(PydicomCode):
    """One coded concept (DICOM's triple): ``pydicom.sr.coding.Code``, what highdicom's SEG and SR constructors take.

    The engine's one coded-concept type (terminology, DICOM SEG segment descriptions, SR findings), built on
    pydicom's as highdicom is, so no second triple with its own field order exists. Fields and positional order
    are pydicom's: ``Code(value, scheme_designator, meaning)``. ``scheme`` names the designator as the saved
    session (``to_dict``) and Slicer's ``scheme^value^meaning`` strings do. Equality is pydicom's (scheme and value;
    SRT and SCT spellings of one SNOMED concept are equal); comparing with anything that is not a code is False.
    """

    __slots__ = ()

    @property
    def scheme(self) -> str:
        return self.scheme_designator

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PydicomCode):
            return NotImplemented
        return bool(PydicomCode.__eq__(self, other))

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = PydicomCode.__hash__

    @staticmethod
    def of(code: Any) -> Code | None:
        """Any object with ``value``, ``scheme_designator`` (or ``scheme``) and ``meaning``, as a ``Code``."""
        if code is None or isinstance(code, Code):
            return code
        scheme = getattr(code, "scheme_designator", None) or code.scheme
        return Code(str(code.value), str(scheme), str(code.meaning))

    def to_slicer(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"

    def to_dict(self) -> dict[str, str]:
        return {"scheme": self.scheme, "value": self.value, "meaning": self.meaning}

    @overload
    @staticmethod
    def from_dict(d: dict[str, Any]) -> Code: ...
    @overload
    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> Code | None: ...
    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> Code | None:
        return None if d is None else Code(str(d["value"]), str(d["scheme"]), str(d["meaning"]))

    def __str__(self) -> str:
        return f"{self.scheme} {self.value} {self.meaning}"


@dataclass(frozen=True)
class TermType:
    """One structure of the closed list, with everything the mapping, the judgment and Slicer need."""

    key: str
    category: Code
    code: Code
    cid: str
    slicer_context: str
    source: str
    laterality: tuple[str, ...]  # modifier code values the context offers for this type
    color: tuple[int, int, int]
    synonyms: tuple[str, ...]
    groups: tuple[str, ...]
    region: Code | None
    volume_ml: tuple[float, float] | None

    @property
    def takes_laterality(self) -> bool:
        return bool(self.laterality)

    @property
    def names(self) -> tuple[str, ...]:
        """The key, the code meaning and the synonyms, normalised: every string the exact steps accept."""
        seen: dict[str, None] = {}
        for name in (self.key, self.code.meaning, *self.synonyms):
            seen.setdefault(normalise(name), None)
        return tuple(seen)

    @property
    def is_finding(self) -> bool:
        return "finding" in self.groups


@dataclass(frozen=True)
class CodedTerminology:
    """A free-text label and what it was mapped to; ``type`` is None when there is no standard code."""

    text: str
    category: Code | None
    type: Code | None
    modifier: Code | None
    matched_by: str  # exact | synonym | normalised | embedding | none | user
    region: Code | None = None
    region_modifier: Code | None = None
    similarity: float | None = None
    key: str | None = None
    color: tuple[int, int, int] | None = None
    slicer_context: str = ""
    note: str = ""

    @property
    def coded(self) -> bool:
        return self.type is not None

    @property
    def display_name(self) -> str:
        """A short human name: "Left kidney", "Lesion in the right kidney", "flux capacitor (no standard code)"."""
        if not self.coded:
            return f"{self.text} ({NO_STANDARD_CODE})"
        assert self.type is not None
        name = self.type.meaning
        if self.modifier is not None and self.modifier.value == "51440002":
            name = f"{name} (right and left)"
        elif self.modifier is not None:
            name = f"{_side_word(self.modifier)} {name[0].lower()}{name[1:]}"
        if self.region is not None:
            region = self.region.meaning.lower()
            if self.region_modifier is not None and self.region_modifier.value == "51440002":
                region = f"{region} (right and left)"
            elif self.region_modifier is not None:
                region = f"{_side_word(self.region_modifier).lower()} {region}"
            name = f"{name} in the {region}"
        return name[0].upper() + name[1:]

    def describe(self) -> str:
        """The codes in one line, for findings text and logs."""
        if not self.coded:
            return f'"{self.text}": {NO_STANDARD_CODE}'
        parts = [f"type {self.type}", f"category {self.category}"]
        if self.modifier:
            parts.append(f"modifier {self.modifier}")
        if self.region:
            parts.append(
                f"region {self.region}" + (f" ({self.region_modifier.meaning})" if self.region_modifier else "")
            )
        how = self.matched_by + (f" {self.similarity:.2f}" if self.similarity is not None else "")
        return "; ".join(parts) + f" [matched by {how}]"

    def to_slicer_string(self) -> str | None:
        """Slicer's serialised terminology entry (``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``).

        ``context~category~type~modifier~regionContext~region~regionModifier``, each code as
        ``scheme^value^meaning``. None when uncoded: the Slicer side then keeps its default entry and the name.
        """
        if not self.coded:
            return None

        def code(c: Code | None) -> str:
            return c.to_slicer() if c is not None else "^^"

        region_context = SLICER_ANATOMIC_REGIONS if self.region is not None else ""
        return "~".join(
            [
                self.slicer_context,
                code(self.category),
                code(self.type),
                code(self.modifier),
                region_context,
                code(self.region),
                code(self.region_modifier),
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "category": self.category.to_dict() if self.category else None,
            "type": self.type.to_dict() if self.type else None,
            "modifier": self.modifier.to_dict() if self.modifier else None,
            "region": self.region.to_dict() if self.region else None,
            "region_modifier": self.region_modifier.to_dict() if self.region_modifier else None,
            "matched_by": self.matched_by,
            "similarity": self.similarity,
            "key": self.key,
            "color": list(self.color) if self.color else None,
            "slicer_context": self.slicer_context,
            "note": self.note,
            "standard": self.coded,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> CodedTerminology:
        return CodedTerminology(
            text=str(d["text"]),
            category=Code.from_dict(d.get("category")),
            type=Code.from_dict(d.get("type")),
            modifier=Code.from_dict(d.get("modifier")),
            matched_by=str(d["matched_by"]),
            region=Code.from_dict(d.get("region")),
            region_modifier=Code.from_dict(d.get("region_modifier")),
            similarity=None if d.get("similarity") is None else float(d["similarity"]),
            key=d.get("key"),
            color=tuple(int(c) for c in d["color"]) if d.get("color") else None,  # type: ignore[arg-type]  # to_dict writes an RGB; not re-checked on load
            slicer_context=str(d.get("slicer_context", "")),
            note=str(d.get("note", "")),
        )


def _side_word(modifier: Code) -> str:
    return {"7771000": "Left", "24028007": "Right", "51440002": "Bilateral"}.get(modifier.value, modifier.meaning)
