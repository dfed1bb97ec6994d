"""The models a server runs, and the thin proxies that route every model call through the model's worker.

``Engine`` is what ``create_app(config, engine)`` serves: one segmenter, optionally a reasoner, the terminology.
Tests build one from stand-ins; ``Engine.from_specs`` builds the real one from the ``serve`` options.

The proxies (``QueuedSegmenter``, ``QueuedReasoner``) satisfy the engine's own protocols, so the dialogue's
``run_round`` and the reasoner's ``run_reasoning`` run unchanged on a round thread while each model call waits its
turn in the model's queue (``workers.py``), can be cancelled there, and counts towards the round's model time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dialogue.rounds import DEFAULT_ROUND, RoundConfig
from ..reasoning.answer import Answer
from ..reasoning.base import EMPTY_CONTEXT, Reasoner, ReasoningContext
from ..reasoning.views import DEFAULT_STRATEGY, ReasoningStrategy, ViewSet
from ..segmentation.base import Prediction, Prompt2D, Segmenter
from ..terminology import Terminology
from .workers import ModelWorker, RoundContext


@dataclass
class Engine:
    """The models behind a server.

    ``reasoner_factory`` is called once per session: a stateless reasoner (in-process model, OpenAI-compatible
    endpoint) returns the same shared instance every time, while ``replay:`` files, which count the answers they
    have served, get one reader per session so two sessions never consume each other's recorded answers.
    """

    segmenter: Segmenter
    reasoner_factory: Callable[[], Reasoner] | None = None
    terminology: Terminology | None = None
    strategy: ReasoningStrategy = DEFAULT_STRATEGY
    round_config: RoundConfig = DEFAULT_ROUND
    device: str = "cpu"
    reasoner_spec: str | None = None
    segmenter_spec: str | None = None
    encode_ahead: Any = None
    """A ``segmentation.encode_ahead.EncodeAhead`` on ``segmenter`` (set by ``from_specs``): rounds encode the slices
    the reasoner is shown while it thinks. ``None``: off (stand-in engines of tests, a reasoner on this CPU)."""
    _reasoner_identity: dict | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_specs(
        cls,
        segmenter_spec: str = "litemedsam",
        reasoner_spec: str | None = None,
        *,
        device: str = "cpu",
        allow_remote_reasoner: bool = False,
    ) -> Engine:
        """Load the named models now, so a missing model stops ``serve`` before it listens (and says which)."""
        from ..reasoning.spec import create_reasoner
        from ..segmentation.factory import create_segmenter, default_store_root

        reasoner_factory: Callable[[], Reasoner] | None = None
        if reasoner_spec:
            if reasoner_spec.strip().lower().startswith("replay:"):
                create_reasoner(reasoner_spec)  # fail now on a missing or broken file

                def reasoner_factory() -> Reasoner:
                    return create_reasoner(reasoner_spec)
            else:
                shared = create_reasoner(reasoner_spec, allow_remote=allow_remote_reasoner, device=device)

                def reasoner_factory() -> Reasoner:
                    return shared

        segmenter = create_segmenter(segmenter_spec, device=device, embedding_store=default_store_root())
        engine = cls(
            segmenter=segmenter,
            reasoner_factory=reasoner_factory,
            device=device,
            reasoner_spec=reasoner_spec,
            segmenter_spec=segmenter_spec,
        )
        engine.encode_ahead = engine_encode_ahead(engine)
        return engine

    @property
    def has_reasoner(self) -> bool:
        return self.reasoner_factory is not None

    def reasoner_identity(self) -> dict | None:
        if self.reasoner_factory is None:
            return None
        if self._reasoner_identity is None:
            self._reasoner_identity = self.reasoner_factory().identity.to_dict()
        return self._reasoner_identity

    def segmenter_identity(self) -> dict:
        ident = self.segmenter.identity
        return {"name": ident.name, "weights": ident.weights, "sha256": ident.sha256, **dict(ident.extra)}


def engine_encode_ahead(engine: Engine):
    """An ``EncodeAhead`` on the engine's segmenter where it helps: a reasoner that does not compute on this CPU."""
    from ..segmentation.encode_ahead import EncodeAhead, worth_encoding_ahead

    if engine.reasoner_factory is None:
        return None
    identity = engine.reasoner_identity() or {}
    if not worth_encoding_ahead(str(identity.get("backend", "")), dict(identity.get("decoding") or {}).get("device")):
        return None
    ahead = EncodeAhead(engine.segmenter)
    return ahead if ahead.supported else None


# ---------------------------------------------------------------------------------------------------------------
# Proxies: the engine's protocols, each call a job on the model's worker


class QueuedSegmenter:
    """A ``Segmenter`` whose ``predict`` runs (with its ``set_image``) as one job on the segmenter's worker.

    ``set_image`` only remembers the image: the worker is shared by all rounds, so the image must be set in the
    same job as the prediction that uses it. The worker skips ``set_image`` when it already holds the same cache
    key (the embedding cache would make it cheap anyway).
    """

    def __init__(
        self, worker: ModelWorker, segmenter: Segmenter, ctx: RoundContext, on_call: Callable[[], None] | None = None
    ) -> None:
        self.identity = segmenter.identity
        self.stats = segmenter.stats
        self._worker = worker
        self._segmenter = segmenter
        self._ctx = ctx
        self._on_call = on_call
        self._image: np.ndarray | None = None
        self._key: Hashable | None = None

    def set_image(self, image: np.ndarray, cache_key: Hashable | None = None) -> None:
        self._ctx.check_cancel()
        self._image, self._key = image, cache_key

    def predict(self, prompt: Prompt2D) -> Prediction:
        if self._image is None:
            raise RuntimeError("predict before set_image")
        image, key = self._image, self._key
        prediction = self._worker.call(lambda: self._run(image, key, prompt), self._ctx)
        if self._on_call is not None:
            self._on_call()
        return prediction

    def _run(self, image: np.ndarray, key: Hashable | None, prompt: Prompt2D) -> Prediction:
        state = self._worker.state
        if key is None or state.get("image_key") != key or state.get("segmenter") is not self._segmenter:
            state["image_key"] = None  # a failing set_image must not leave a stale key behind
            self._segmenter.set_image(image, cache_key=key)
            state["image_key"], state["segmenter"] = key, self._segmenter
        return self._segmenter.predict(prompt)


class QueuedReasoner:
    """A ``Reasoner`` whose ``reason`` calls run on the reasoner's worker (the round's cancel flag goes along)."""

    def __init__(self, worker: ModelWorker, reasoner: Reasoner, ctx: RoundContext) -> None:
        self.identity = reasoner.identity
        self._worker = worker
        self._reasoner = reasoner
        self._ctx = ctx

    def reason(
        self,
        views: ViewSet,
        question: str,
        context: ReasoningContext = EMPTY_CONTEXT,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Answer:
        cancel = cancel or self._ctx.cancel
        return self._worker.call(lambda: self._reasoner.reason(views, question, context, on_text, cancel), self._ctx)


_round_local = threading.local()


def current_round() -> RoundContext | None:
    """The round running on this thread (set by the round runner), for model calls made deep inside the engine."""
    return getattr(_round_local, "ctx", None)


def set_current_round(ctx: RoundContext | None) -> None:
    _round_local.ctx = ctx


def queued_terminology(worker: ModelWorker) -> Terminology:
    """The shipped terminology whose sentence-embedding model (used for labels no list name matches) runs on
    ``worker``, like every other model of the server."""
    from ..terminology.embedder import minilm_embedder  # the shipped list, with our own embedder
    from ..terminology.matcher import _shipped_data

    def embed(texts: Sequence[str]) -> Any:
        return worker.call(lambda: minilm_embedder()(list(texts)), current_round())

    return Terminology(_shipped_data(), embedder=embed)
