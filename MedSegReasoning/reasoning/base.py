"""The reasoner contract, its identity and the context it is given.

``Reasoner.reason(views, question, context, on_text=None, cancel=None) -> Answer`` is the whole contract: the
views say what the model sees (``views``), ``context`` what the dialogue knows so far, ``on_text`` receives
the generated text chunk by chunk (for the chat panel), and setting ``cancel`` (a ``threading.Event``) stops
the work with ``ReasoningCancelled``. The answer comes back in voxel indices. The shared chat-style
implementation is ``chat.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..volume.core import Orientation
from .answer import Answer
from .views import ViewSet

TextCallback = Callable[[str], None]


SliceMaskFn = Callable[[int], np.ndarray | None]
"""``k -> (nj, ni) bool mask`` of one entity on axial slice ``k`` (None or empty where it is absent)."""


@dataclass(frozen=True)
class EntityRef:
    """A structure found in an earlier round, as the reasoner may refer to it (``ref``). The dialogue fills these.

    Besides its id and label, an entity carries what is needed to draw it on the views the reasoner sees (a model
    reads an outline tagged "E1" on the image far more reliably than a box in the prompt text): its colour, the
    axial slices it spans, and ``slice_mask`` to get its outline on a slice. Without ``slice_mask`` its box is
    drawn on its key slice; ``slice_mask`` is a callable (not the mask) so this package stays free of the
    dialogue's mask type and no mask is decoded for slices that are never shown. The last fields are what the
    dialogue says of it besides (``ReasoningContext.text``).
    """

    id: str
    label: str  # what the reasoner is shown: the coded name where there is one, else the label as given
    orientation: Orientation = "axial"
    slice: int | None = None
    box: tuple[int, int, int, int] | None = None  # plane voxel indices, as in Target.box
    color: tuple[int, int, int] | None = None
    slices: tuple[int, int] | None = None  # first and last axial slice the entity spans (inclusive)
    slice_mask: SliceMaskFn | None = field(default=None, compare=False, repr=False)
    given_label: str | None = None  # the label as given, where ``label`` is its coded name
    code: str | None = None  # "SCT 52988006"
    volume_ml: float | None = None
    edited: bool = False
    uncertain: bool = False


@dataclass(frozen=True)
class ReasoningContext:
    """What the dialogue knows when a question is asked: the entities so far and the round number (1-based).

    ``dialogue.Session.reasoning_context`` builds it. ``to_dict``/``from_dict`` are its one plain-JSON form, for
    what is written to a file or sent (the outline callables stay behind: pass ``slice_mask`` to ``from_dict``).
    """

    entities: tuple[EntityRef, ...] = ()
    round: int = 1

    @property
    def text(self) -> str:
        """One line per entity (id, name, label, span, key slice, box, volume, flags), or "No entities yet."."""
        lines = []
        for e in self.entities:
            k0, k1 = e.slices or (0, 0)
            volume = f", {e.volume_ml:.1f} mL" if e.volume_ml is not None else ""
            lines.append(
                f"{e.id}: {e.label} (label '{e.given_label or e.label}'), slices {k0}-{k1}, key slice {e.slice}, "
                f"box {list(e.box) if e.box else None} (i0, j0, i1, j1) on it{volume}"
                + (", edited by the user" if e.edited else "")
                + (", UNCERTAIN" if e.uncertain else "")
            )
        return "\n".join(lines) if lines else "No entities yet."

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: ``name`` is what the reasoner is shown, ``label`` the label as given."""
        return {
            "round": self.round,
            "entities": [
                {
                    "id": e.id,
                    "label": e.given_label or e.label,
                    "name": e.label,
                    "code": e.code,
                    "orientation": e.orientation,
                    "key_slice": e.slice,
                    "box": list(e.box) if e.box else None,
                    "slices": list(e.slices) if e.slices else None,
                    "color": list(e.color) if e.color else None,
                    "volume_ml": e.volume_ml,
                    "edited": e.edited,
                    "uncertain": e.uncertain,
                }
                for e in self.entities
            ],
            "text": self.text,
        }

    @staticmethod
    def from_dict(
        data: Mapping[str, Any],
        round_number: int | None = None,
        slice_mask: Callable[[str, int], np.ndarray | None] | None = None,
    ) -> ReasoningContext:
        """From ``to_dict``'s form (only ``id`` is required of an entity; ``round_number`` overrides ``round``).

        ``slice_mask(entity_id, k)`` lets the views draw each entity's real outline; a dict cannot carry it.
        """
        entities = []
        for item in data.get("entities", ()):
            box, slices, color = item.get("box"), item.get("slices"), item.get("color")
            entity_id = str(item["id"])
            label = item.get("label")
            name = str(item.get("name") or label or entity_id)
            entities.append(
                EntityRef(
                    id=entity_id,
                    label=name,
                    orientation=item.get("orientation") or "axial",
                    slice=item.get("key_slice"),
                    box=tuple(int(v) for v in box) if box else None,  # type: ignore[arg-type]  # to_dict's 4 ints; length not re-checked
                    color=tuple(int(c) for c in color) if color else None,  # type: ignore[arg-type]  # to_dict's RGB; length not re-checked
                    slices=(int(slices[0]), int(slices[1])) if slices else None,
                    slice_mask=bind_slice_mask(slice_mask, entity_id),
                    given_label=str(label) if label and label != name else None,
                    code=item.get("code"),
                    volume_ml=item.get("volume_ml"),
                    edited=bool(item.get("edited", False)),
                    uncertain=bool(item.get("uncertain", False)),
                )
            )
        rnd = round_number if round_number is not None else int(data.get("round", 1))
        return ReasoningContext(entities=tuple(entities), round=rnd)


def bind_slice_mask(slice_mask: Callable[[str, int], np.ndarray | None] | None, entity_id: str) -> SliceMaskFn | None:
    """``slice_mask(entity_id, k)`` as the entity's own ``k -> mask``."""
    if slice_mask is None:
        return None
    return lambda k: slice_mask(entity_id, k)


EMPTY_CONTEXT = ReasoningContext()


@dataclass(frozen=True)
class ReasonerIdentity:
    """Which model produced an answer, and how: goes into ``result.json`` next to every mask it led to.

    ``revision`` is the Hugging Face commit when the weights came from the hub cache, else a digest of the
    weight files (``sha256:`` of their content when small, ``fingerprint:`` of safetensors headers and sizes
    when hashing gigabytes would cost more than loading them), or what the server reports.
    """

    name: str
    backend: str  # hf | openai | replay
    revision: str
    convention: str
    prompt_version: str
    decoding: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["decoding"] = dict(self.decoding)
        return data


@runtime_checkable
class Reasoner(Protocol):
    """Anything that answers a question about rendered views with targets in voxel indices."""

    identity: ReasonerIdentity

    def reason(
        self,
        views: ViewSet,
        question: str,
        context: ReasoningContext = EMPTY_CONTEXT,
        on_text: TextCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Answer: ...
