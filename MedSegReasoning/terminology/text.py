"""Text normalisation for terminology matching: lowercase and punctuation, laterality words, plurals."""

from __future__ import annotations

import re

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


def _singular(token: str) -> str:
    """English and Latin plurals of anatomy words; singular words ending in s (pancreas, thrombus) stay."""
    if token.endswith(("ss", "us", "is", "as")):
        return token
    for suffix, repl in (("ies", "y"), ("ae", "a"), ("s", "")):
        if token.endswith(suffix) and len(token) > len(suffix) + 2:
            return token[: -len(suffix)] + repl
    return token
