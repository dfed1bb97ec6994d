"""Reasoning: a vision-language model reads rendered slices and a clinical question, reasons, and points.

The pieces (each module's docstring says why it is shaped as it is):

- ``answer``: ``Answer``/``Target`` (voxel indices); ``parser``: ``parse_answer`` (every accepted answer format);
- ``coords``: the coordinate conventions of the model families;
- ``views``: what the model sees (montage, full-resolution slice, current view) and ``ReasoningStrategy``;
- ``base``: the ``Reasoner`` protocol, ``ReasonerIdentity``, ``ReasoningContext``;
- ``hf`` / ``openai_compat`` / ``replay``: the adapters, created with ``spec.create_reasoner``;
- ``models``: known models, the local cache, downloads;
- ``run``: ``run_reasoning``, one question -> targets ready for the segmenter.

Importing this package is cheap: torch, transformers, httpx and huggingface_hub load only when an adapter or a
model operation needs them.
"""

from __future__ import annotations

from .answer import (
    Answer,
    GenerationStats,
    ParsedAnswer,
    ParsedTarget,
    ReasonerOutputError,
    ReasoningCancelled,
    StepRecord,
    Target,
)
from .base import EMPTY_CONTEXT, EntityRef, Reasoner, ReasonerIdentity, ReasoningContext
from .coords import CONVENTION_NAMES, Convention, get_convention
from .parser import parse_answer
from .run import run_reasoning
from .spec import DEFAULT_REASONER_SPEC, SPEC_FORMS, create_reasoner
from .views import DEFAULT_STRATEGY, CurrentView, ReasoningStrategy, View, ViewSet

__all__ = [
    "CONVENTION_NAMES",
    "DEFAULT_REASONER_SPEC",
    "DEFAULT_STRATEGY",
    "EMPTY_CONTEXT",
    "SPEC_FORMS",
    "Answer",
    "Convention",
    "CurrentView",
    "EntityRef",
    "GenerationStats",
    "ParsedAnswer",
    "ParsedTarget",
    "Reasoner",
    "ReasonerIdentity",
    "ReasonerOutputError",
    "ReasoningCancelled",
    "ReasoningContext",
    "ReasoningStrategy",
    "StepRecord",
    "Target",
    "View",
    "ViewSet",
    "create_reasoner",
    "get_convention",
    "parse_answer",
    "run_reasoning",
]
