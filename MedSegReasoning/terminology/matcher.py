"""The closed list (``data/terminology.json``) and the mapping of free text to it, step by step (see the package
docstring for the order and why nothing is guessed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from importlib import resources

import numpy as np

from ..wire.errors import InputError, ModelError
from .codes import Code, CodedTerminology, TermType
from .embedder import Embedder, minilm_embedder
from .text import _ARTICLES, _PART_WORDS, _REGION_CONNECTORS, _singular, normalise, split_laterality

EMBEDDING_THRESHOLD = 0.70
"""Lowest cosine similarity accepted from the embedding step (measurement: ``data/terminology_calibration.json``)."""


# ---------------------------------------------------------------------------------------------------------------
# the closed list
# ---------------------------------------------------------------------------------------------------------------
class Terminology:
    """The closed list and the mapping of free text to it. ``default_terminology()`` gives the shipped one."""

    def __init__(self, data: dict, embedder: Embedder | None = None, threshold: float = EMBEDDING_THRESHOLD) -> None:
        if data.get("format") != "medseg-reasoning/terminology" or data.get("version") != 1:
            raise InputError("the terminology file is not a medseg-reasoning/terminology version 1 file.")
        self.categories = {k: Code.from_dict(v) for k, v in data["categories"].items()}
        self.laterality = {k: Code(v["value"], v["scheme"], v["meaning"]) for k, v in data["laterality"].items()}
        self.contexts: dict[str, str] = dict(data["contexts"])
        self.provenance: dict = dict(data.get("provenance", {}))
        self.types: dict[str, TermType] = {}
        for e in data["types"]:
            t = TermType(
                key=e["key"],
                category=self.categories[e["category"]],
                code=Code.from_dict(e["code"]),
                cid=str(e.get("cid", "")),
                slicer_context=str(e.get("slicer_context", "")),
                source=str(e.get("source", "")),
                laterality=tuple(e.get("laterality", ())),
                color=tuple(int(c) for c in e["color"]),  # type: ignore[arg-type]  # the file's RGB; length not checked here
                synonyms=tuple(e.get("synonyms", ())),
                groups=tuple(e.get("groups", ())),
                region=Code.from_dict({k: e["region"][k] for k in ("scheme", "value", "meaning")})
                if e.get("region")
                else None,
                volume_ml=tuple(float(v) for v in e["volume_ml"]) if e.get("volume_ml") else None,  # type: ignore[arg-type]  # the file's (low, high); length not checked here
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
        scheme, value, meaning = pieces
        return None if not value else Code(value, scheme, meaning)

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
