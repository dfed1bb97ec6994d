"""``ChatReasoner``: the reasoner contract (``base.py``) implemented once for every backend that takes images plus a
text prompt and returns text.

Render the prompt from a template, call the backend (``complete``, the one method an adapter writes), then the
SAME parser and coordinate conversion for all of them (transformers in-process, an OpenAI-compatible server, a
replay file), so a recorded answer and a live one can never be read differently.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .answer import Answer, GenerationStats, ReasonerOutputError, ReasoningCancelled
from .base import EMPTY_CONTEXT, ReasonerIdentity, ReasoningContext, TextCallback
from .convert import to_answer
from .coords import Convention, resize_for_model
from .parser import parse_answer
from .prompts import PromptSet, render_prompt
from .views import ViewSet


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
