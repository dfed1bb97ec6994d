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
    dialogue's mask type and no mask is decoded for slices that are never shown.
    """

    id: str
    label: str
    orientation: Orientation = "axial"
    slice: int | None = None
    box: tuple[int, int, int, int] | None = None  # plane voxel indices, as in Target.box
    color: tuple[int, int, int] | None = None
    slices: tuple[int, int] | None = None  # first and last axial slice the entity spans (inclusive)
    slice_mask: SliceMaskFn | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ReasoningContext:
    """What the dialogue knows when a question is asked: the entities so far and the round number (1-based)."""

    entities: tuple[EntityRef, ...] = ()
    round: int = 1

    @staticmethod
    def from_dialogue(
        context: Mapping[str, Any],
        round_number: int = 1,
        slice_mask: Callable[[str, int], np.ndarray | None] | None = None,
    ) -> ReasoningContext:
        """From ``dialogue.Session.context_for_reasoner()``: ids, names, key slices, boxes and colours.

        ``slice_mask(entity_id, k)`` (e.g. ``Session.entity_slice_mask``) lets the views draw each entity's real
        outline; it is passed beside the context because the context itself stays plain JSON (the server sends it).
        """
        entities = []
        for item in context.get("entities", ()):
            box = item.get("box")
            bbox = item.get("bbox")
            color = item.get("color")
            entity_id = str(item["id"])
            entities.append(
                EntityRef(
                    id=entity_id,
                    label=str(item.get("name") or item.get("label") or item["id"]),
                    slice=item.get("key_slice"),
                    box=tuple(int(v) for v in box) if box else None,  # type: ignore[arg-type]
                    color=tuple(int(c) for c in color) if color else None,  # type: ignore[arg-type]
                    slices=(int(bbox[0]), int(bbox[3])) if bbox else None,
                    slice_mask=_bind_slice_mask(slice_mask, entity_id),
                )
            )
        return ReasoningContext(entities=tuple(entities), round=round_number)


def _bind_slice_mask(slice_mask: Callable[[str, int], np.ndarray | None] | None, entity_id: str) -> SliceMaskFn | None:
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
