"""Which earlier entity a question means: explicit ids, plain language by recency and label, or a question back.

Rules, in order (rejected entities are only reachable by explicit id):

- ``E3``: that entity; an id that does not exist asks back with the list of entities.
- ordinals ("the second one", "the first lesion"): the n-th entity of that kind in creation order.
- "the other kidney": with one kidney segmented, the opposite side as a *label to find* (``Resolution.label``);
  with two, the one not mentioned most recently.
- demonstratives and recency ("that lesion", "this one", "the last one", "it"): the matching entity of the most
  recent round that has one; several there -> ask back.
- a definite description ("the lesion", "the liver"): the one matching entity; several -> ask back; none -> not a
  reference (the question names a new target). Generic heads ("the organ containing E1", "the vessel next to...")
  describe the *target*, so they only refer back with a demonstrative or an ordinal.

Kinds: a noun is matched through the terminology list (same type code; a laterality in the phrase must match too),
through groups ("lesion", "finding" = any morphologically altered structure; "vessel", "organ", "bone") and,
for uncoded labels, through the label's words. Ambiguity is never resolved by guessing: a ``Clarification`` is
returned, and the round asks the user instead of segmenting.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..terminology.matcher import Terminology
from ..terminology.text import normalise, split_laterality
from .entity import Entity, is_entity_id

ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "1st": 1, "2nd": 2, "3rd": 3}
RECENCY = {"that", "this", "it", "last", "latest", "previous", "same", "recent"}
DETERMINERS = {"the", "a", "an", "those", "these", "most", "please", "of"}
ANY_NOUNS = {"one", "ones", "it", "mask", "segment", "segmentation", "entity", "structure", "thing", "object"}
GROUP_NOUNS = {
    "lesion": "finding",
    "finding": "finding",
    "abnormality": "finding",
    "organ": "organ",
    "vessel": "vessel",
    "artery": "artery",
    "vein": "vein",
    "bone": "bone",
}
# generic heads that a plain "the" makes a description of the new target, not a reference back
_TARGET_HEADS = ANY_NOUNS | {"organ", "vessel", "artery", "vein", "bone"}
_OPPOSITE = {"left": "right", "right": "left"}
MORPHOLOGICALLY_ALTERED = "49755003"
# words after a head noun that end the noun phrase ("the lesion from round 1", "the kidney containing E1")
_PHRASE_ENDERS = {
    "from",
    "in",
    "of",
    "on",
    "at",
    "to",
    "with",
    "by",
    "for",
    "and",
    "or",
    "that",
    "which",
    "is",
    "was",
    "it",
    "next",
    "near",
    "inside",
    "within",
    "containing",
    "adjacent",
    "beside",
    "touching",
    "encasing",
    "around",
}
_SIDE_OF = {"7771000": "left", "24028007": "right"}

_ID_RE = re.compile(r"\b[Ee](\d{1,5})\b")
_PHRASE_RE = re.compile(
    r"\b(that|this|the|those|these)\s+"
    r"(?:(first|second|third|fourth|fifth|sixth|last|latest|previous|other|same)\s+)?"
    r"([a-z]+)(?:\s+([a-z]+))?",
)
_ROUND_RE = re.compile(r"^\s*(?:from|in|of)\s+(?:the\s+)?round\s+(\d+)")
_IT_RE = re.compile(r"\bit\b")

_RELATION_PATTERNS = [
    ("disjoint", r"\b(separate from|apart from|not touching|away from|distinct from|other than)\b"),
    ("contains", r"\b(contain|contains|containing|houses|housing|harbou?rs|harbou?ring|encloses|enclosing)\b"),
    ("inside", r"\b(inside|within|part of)\b|\bin (?=e\d)"),
    ("adjacent", r"\b(next to|adjacent|beside|abutting|touching|bordering|neighbou?ring|near|alongside)\b"),
]


@dataclass(frozen=True)
class Resolution:
    """A phrase resolved: the entities it means, how, and for "the other X" the label of the structure to find."""

    text: str
    entity_ids: tuple[str, ...]
    how: str  # id | ordinal | recency | label | other
    label: str | None = None
    related: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "entity_ids": list(self.entity_ids),
            "how": self.how,
            "label": self.label,
            "related": list(self.related),
        }


@dataclass(frozen=True)
class Clarification:
    """The question to ask back instead of guessing, with the entities that could be meant."""

    text: str
    question: str
    candidates: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "question": self.question, "candidates": list(self.candidates)}


Reference = Resolution | Clarification


def infer_relation(question: str) -> str | None:
    """The spatial relation a question asks for between its target and the entity it refers to, if it says one."""
    q = question.lower()
    for relation, pattern in _RELATION_PATTERNS:
        if re.search(pattern, q):
            return relation
    return None


def resolve_reference(text: str, entities: Sequence[Entity], terminology: Terminology) -> Reference | None:
    """Resolve one phrase ("E1", "that lesion", "the second one", "the other kidney"); None: not a reference."""
    ids = [f"E{m.group(1)}" for m in _ID_RE.finditer(text)]
    if ids:
        return _by_id(text, ids, entities)
    tokens = normalise(text).split()
    round_filter = None
    for i in range(len(tokens) - 1):
        if tokens[i] == "round" and tokens[i + 1].isdigit():
            round_filter = int(tokens[i + 1])
            tokens = tokens[: i - 1 if i and tokens[i - 1] in {"from", "in", "of"} else i]
            break
    ordinal = next((ORDINALS[t] for t in tokens if t in ORDINALS), None)
    recency = any(t in RECENCY for t in tokens) or "most recent" in " ".join(tokens)
    other = "other" in tokens
    demonstrative = any(t in {"that", "this", "those", "these", "it"} for t in tokens)
    noun_tokens = [
        t for t in tokens if t not in ORDINALS and t not in RECENCY and t not in DETERMINERS and t != "other"
    ]
    return _resolve_words(
        text, noun_tokens, entities, terminology, ordinal, recency, other, demonstrative, round_filter
    )


def find_references(question: str, entities: Sequence[Entity], terminology: Terminology) -> list[Reference]:
    """Every reference to an earlier entity in a question, in order of appearance."""
    found: list[tuple[int, Reference]] = []
    q = question.lower()
    for m in _ID_RE.finditer(question):
        by_id = _by_id(m.group(0), [f"E{m.group(1)}"], entities)
        found.append((m.start(), by_id))
    for m in _PHRASE_RE.finditer(q):
        det, modifier, w1, w2 = m.groups()
        if is_entity_id(w1):
            continue
        options = [([w1], m.end(3))]
        if w2 and w2 not in _PHRASE_ENDERS:
            options.insert(0, ([w1, w2], m.end()))
        for words, end in options:
            phrase = " ".join(x for x in (det, modifier, *words) if x)
            qualifier = _ROUND_RE.match(q[end:])
            if qualifier:
                phrase += f" from round {qualifier.group(1)}"
            ref = resolve_reference(phrase, entities, terminology)
            if ref is not None:
                found.append((m.start(), ref))
                break
    if not found and entities:
        it = _IT_RE.search(q)
        if it:
            ref = resolve_reference("it", entities, terminology)
            if ref is not None:
                found.append((it.start(), ref))
    found.sort(key=lambda item: item[0])
    return [ref for _, ref in found]


# ---------------------------------------------------------------------------------------------------------------
def _by_id(text: str, ids: list[str], entities: Sequence[Entity]) -> Reference:
    known = {e.id for e in entities}
    missing = [i for i in ids if i not in known]
    if missing:
        return Clarification(
            text,
            f"There is no {', '.join(missing)} in this session; the entities are: {_listing(entities)}. Which one?",
            tuple(sorted(known, key=_id_number)),
        )
    return Resolution(text, tuple(dict.fromkeys(ids)), "id")


def _resolve_words(
    text: str,
    words: list[str],
    entities: Sequence[Entity],
    terminology: Terminology,
    ordinal: int | None,
    recency: bool,
    other: bool,
    demonstrative: bool,
    round_filter: int | None,
) -> Reference | None:
    live = sorted((e for e in entities if e.review != "rejected"), key=lambda e: _id_number(e.id))
    if round_filter is not None:
        live = [e for e in live if e.round == round_filter or e.updated_round == round_filter]
    noun = " ".join(words)
    kind_words, side = split_laterality(noun) if noun else ([], None)
    candidates, generic = _matching(kind_words, side if not other else None, live, terminology)
    what = noun or "entity"
    if candidates is None:  # the noun names nothing we could have segmented: not a reference
        return None
    if other:
        return _other(text, candidates, kind_words, what)
    if ordinal is not None:
        if len(candidates) >= ordinal:
            return Resolution(text, (candidates[ordinal - 1].id,), "ordinal")
        return Clarification(
            text,
            f"There are only {len(candidates)} {what} entities ({_listing(candidates)}); which one do you mean?",
            tuple(e.id for e in candidates),
        )
    if recency or demonstrative:
        if not candidates:
            return Clarification(
                text,
                f"I have no {what} segmented yet ({_listing(live) or 'no entities'}); which structure do you mean?",
                tuple(e.id for e in live),
            )
        latest = max(max(e.round, e.updated_round) for e in candidates)
        newest = [e for e in candidates if max(e.round, e.updated_round) == latest]
        if len(newest) == 1:
            return Resolution(text, (newest[0].id,), "recency")
        return Clarification(
            text,
            f"Round {latest} made several: {_listing(newest)}. Which one do you mean?",
            tuple(e.id for e in newest),
        )
    if not words or generic and kind_words and kind_words[-1] in _TARGET_HEADS:
        return None
    if len(candidates) == 1:
        return Resolution(text, (candidates[0].id,), "label")
    if len(candidates) > 1:
        return Clarification(
            text,
            f"Several entities match '{what}': {_listing(candidates)}. Which one?",
            tuple(e.id for e in candidates),
        )
    return None


def _matching(
    words: list[str], side: str | None, live: list[Entity], terminology: Terminology
) -> tuple[list[Entity] | None, bool]:
    """Entities a noun can mean, and whether the noun was generic; None when the noun names nothing known."""
    if not words or all(w in ANY_NOUNS for w in words):
        return live, True
    head = words[-1].rstrip("s") if words[-1].rstrip("s") in GROUP_NOUNS else words[-1]
    if len(words) == 1 and head in GROUP_NOUNS:
        group = GROUP_NOUNS[head]
        return [e for e in live if _in_group(e, group, terminology)], True
    coded = terminology.match(" ".join(words), use_embedding=False)
    if coded.coded:
        assert coded.type is not None
        hits = [e for e in live if e.terminology.type is not None and e.terminology.type.value == coded.type.value]
        if side is not None:
            hits = [
                e
                for e in hits
                if e.terminology.modifier is not None and _SIDE_OF.get(e.terminology.modifier.value) == side
            ]
        return hits, False
    phrase = " ".join(words)
    hits = [e for e in live if phrase in normalise(e.label)]
    return (hits if hits else None), False


def _in_group(entity: Entity, group: str, terminology: Terminology) -> bool:
    """Group membership from the terminology list; a finding is any morphologically altered structure."""
    t = terminology.type_of(entity.terminology)
    if t is not None and group in t.groups:
        return True
    category = entity.terminology.category
    if group == "finding" and category is not None and category.value == MORPHOLOGICALLY_ALTERED:
        return True
    return group in normalise(entity.label).split()


def _other(text: str, candidates: list[Entity], kind_words: list[str], what: str) -> Reference:
    if len(candidates) == 1:
        e = candidates[0]
        side = _SIDE_OF.get(e.terminology.modifier.value) if e.terminology.modifier else None
        if side in _OPPOSITE:
            label = f"{_OPPOSITE[side]} {' '.join(kind_words) or e.label}"
            return Resolution(text, (), "other", label=label, related=(e.id,))
    if len(candidates) == 2:
        older = min(candidates, key=lambda e: (max(e.round, e.updated_round), _id_number(e.id)))
        return Resolution(text, (older.id,), "other", related=tuple(e.id for e in candidates if e is not older))
    return Clarification(
        text,
        f"Which {what} do you mean by 'the other'? Segmented: {_listing(candidates) or 'none'}.",
        tuple(e.id for e in candidates),
    )


def _listing(entities: Sequence[Entity]) -> str:
    return ", ".join(f"{e.id} ({e.name})" for e in entities)


def _id_number(entity_id: str) -> int:
    return int(entity_id[1:]) if entity_id[1:].isdigit() else 0
