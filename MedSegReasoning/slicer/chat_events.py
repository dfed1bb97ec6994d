"""What the chat panel exchanges with its backend, independent of Qt: a round's events (``RoundEvent``), the chips
they make (``EntityChip``), the texts shown for them (``answer_text``, ``describe_context``, ``describe_progress``),
and the ``ChatBackend`` interface (``backend_link.chat_backend(url, token)`` makes the usual one over the HTTP
client).

Imported by ``chat_panel`` (which re-exports these names) and by ``backend_link``; needs no Qt binding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

EVENT_KINDS = ("reasoning", "progress", "target", "error", "done")
"""Server-Sent Event names of a round (DESIGN.md §2), plus the panel's own ``cancelled``/``review``."""


@dataclass(frozen=True)
class RoundEvent:
    """One streamed event of a round: ``kind`` is an SSE event name, ``data`` its JSON payload."""

    kind: str
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EntityChip:
    """What a chip shows of an entity (from a ``target`` event or a review update)."""

    id: str
    label: str
    color: tuple[int, int, int]
    review: str = "proposed"

    @staticmethod
    def from_event(data: dict) -> EntityChip:
        entity = data.get("entity", data)
        return EntityChip(
            id=str(entity["id"]),
            label=str(entity.get("name") or entity.get("label") or entity["id"]),
            color=tuple(int(c) for c in entity.get("color", (128, 128, 128))),  # type: ignore[arg-type]  # the server's (R, G, B); length not checked here
            review=str(entity.get("review", "proposed")),
        )


def answer_text(targets: list[dict], clarification: Any = None, names: dict[str, str] | None = None) -> str:
    """The answer line of a round, from its per-target outcome (what ``done`` and a saved round both carry).

    The server sends no prose answer: what the round found, what is uncertain and what failed is the answer.
    """
    if clarification:
        if isinstance(clarification, dict):
            return str(clarification.get("question") or clarification.get("text") or "Please say which one you mean.")
        return str(clarification)
    names = names or {}
    found: list[str] = []
    uncertain: list[str] = []
    failed: list[str] = []
    for target in targets:
        eid, label = target.get("entity_id"), str(target.get("label") or "target")
        if eid:
            what = f"{eid} ({names.get(eid) or label})"
            (uncertain if target.get("status") == "uncertain" else found).append(what)
        else:
            failed.append(f"{label}: {target.get('error') or target.get('status') or 'failed'}")
    parts = []
    if found:
        parts.append("Found " + ", ".join(found) + ".")
    if uncertain:
        parts.append("Uncertain, please check: " + ", ".join(uncertain) + ".")
    if failed:
        parts.append("Not segmented: " + "; ".join(failed) + ".")
    return " ".join(parts) or "Nothing was found."


def describe_context(context: dict) -> str:
    """ "with 2 points, 1 box, axial slice 57": what goes with the question, for the line above the input."""
    prompts = context.get("prompts")
    prompts = prompts if isinstance(prompts, dict) else {}
    parts = []
    for key, word in (("points", "point"), ("boxes", "box")):
        n = len(prompts.get(key) or [])
        if n:
            parts.append(f"{n} {word}" + ("" if n == 1 else ("es" if word == "box" else "s")))
    view = context.get("view")
    if isinstance(view, dict):
        parts.append(f"{view.get('orientation', '?')} slice {view.get('slice', '?')}")
    return ("with " + ", ".join(parts)) if parts else ""


def describe_progress(data: dict) -> str:
    """A progress event as a status line ("segmenting 45%", "waiting for the segmenter: 1 ahead")."""
    stage = str(data.get("stage", "working"))
    if stage == "queued":
        return f"waiting for the {data.get('model', 'model')}: {data.get('queue_position', '?')} ahead"
    fraction = data.get("fraction")
    return stage + (f" {round(100 * float(fraction))}%" if fraction is not None else "")


def entity_name(entity: dict) -> str:
    """The name a chip shows: the server's ``name``; for a saved entity the coded display name, else its label."""
    if entity.get("name"):
        return str(entity["name"])
    terminology = entity.get("terminology")
    if isinstance(terminology, dict) and terminology.get("type"):
        try:
            from ..terminology.codes import CodedTerminology

            return CodedTerminology.from_dict(terminology).display_name
        except Exception:
            pass
    return str(entity.get("label") or entity.get("id", "?"))


class ChatBackend(Protocol):
    """What the panel needs of a backend; every method may block, so the panel calls them off the GUI thread."""

    def ask(self, question: str, context: dict) -> Iterator[RoundEvent]:
        """Run one round, yielding its events as they stream in."""
        ...

    def cancel(self) -> None:
        """Stop the running round (thread-safe; called from the GUI thread while ``ask`` iterates elsewhere)."""
        ...

    def set_review(self, entity_id: str, review: str) -> None: ...

    # Optional: ``refine(entity_id, context, erase=False) -> Iterator[RoundEvent]``, a correction of an entity from
    # the box in ``context["prompts"]`` (``BackendLink.refine``); without it the Refine button stays disabled.
