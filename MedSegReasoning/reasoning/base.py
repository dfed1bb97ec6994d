"""The reasoner contract, its identity, the context it is given, and the shared chat-style implementation.

``Reasoner.reason(views, question, context, on_text=None, cancel=None) -> Answer`` is the whole contract: the
views say what the model sees (``views.py``), ``context`` what the dialogue knows so far, ``on_text`` receives
the generated text chunk by chunk (for the chat panel), and setting ``cancel`` (a ``threading.Event``) stops
the work with ``ReasoningCancelled``. The answer comes back in voxel indices.

``ChatReasoner`` implements it once for every backend that takes images plus a text prompt and returns text:
render the prompt from a template, call the backend (``complete``, the one method an adapter writes), then the
SAME parser and coordinate conversion for all of them (transformers in-process, an OpenAI-compatible server, a
replay file), so a recorded answer and a live one can never be read differently.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .answer import Answer, GenerationStats, Orientation, ReasonerOutputError, ReasoningCancelled, parse_answer
from .coords import Convention, resize_for_model
from .prompts import PromptSet, render_prompt
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


@dataclass(frozen=True, eq=False)
class ChatRequest:
    """One backend call: the prompt text and the images as the model must receive them (already resized)."""

    prompt: str
    images: tuple[np.ndarray, ...]
    task: str
    round: int = 1


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise ReasoningCancelled("the question was cancelled before the reasoner finished.")


class ChatReasoner:
    """Prompt -> backend text -> parse -> convert, shared by every adapter; subclasses implement ``complete``."""

    identity: ReasonerIdentity
    convention: Convention
    prompts: PromptSet

    def __init__(self, identity: ReasonerIdentity, convention: Convention, prompts: PromptSet) -> None:
        self.identity = identity
        self.convention = convention
        self.prompts = prompts
        self._record_path: Path | None = None
        self._record_lock = threading.Lock()

    # -- the one method an adapter writes -------------------------------------------------------------------
    def complete(
        self, request: ChatRequest, on_text: TextCallback | None, cancel: threading.Event | None
    ) -> tuple[str, GenerationStats]:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------------------
    def reason(
        self,
        views: ViewSet,
        question: str,
        context: ReasoningContext = EMPTY_CONTEXT,
        on_text: TextCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Answer:
        from .convert import to_answer

        check_cancel(cancel)
        request = ChatRequest(
            prompt=render_prompt(self.prompts, views, question, context, self.convention),
            images=tuple(self.prepare_image(v.image) for v in views.views),
            task=views.task,
            round=context.round,
        )
        raw, stats = self.complete(request, on_text, cancel)
        check_cancel(cancel)
        self._record(context.round, views.task, raw)
        try:
            return to_answer(parse_answer(raw), views, self.convention, context, stats)
        except ReasonerOutputError as exc:
            if stats.finish_reason == "length":
                raise ReasonerOutputError(
                    f"{exc.detail} (the answer hit the token limit of {stats.generated_tokens} tokens: raise it)",
                    raw,
                    exc.expected,
                ) from None
            raise

    def prepare_image(self, image: np.ndarray) -> np.ndarray:
        """The view image as the model must receive it (only ``fixed-840`` resizes here by default)."""
        return resize_for_model(image, self.convention.model_input_size(image.shape[1], image.shape[0]))

    def record_to(self, path: str | Path) -> None:
        """Append every raw answer to ``path`` as JSON lines that ``replay:<path>`` plays back.

        The first line written is the reasoner identity, so a replay converts coordinates the same way.
        """
        self._record_path = Path(path)
        meta = {"meta": {"identity": self.identity.to_dict(), "convention": self.convention.name}}
        with self._record_lock, self._record_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(meta) + "\n")

    def _record(self, round_number: int, step: str, raw: str) -> None:
        if self._record_path is None:
            return
        line = json.dumps({"round": round_number, "step": step, "raw": raw})
        with self._record_lock, self._record_path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def with_decoding(self, **decoding: Any) -> None:
        """Record decoding settings in the identity (adapters call this once their settings are final)."""
        self.identity = replace(self.identity, decoding={**self.identity.decoding, **decoding})
