"""The segmenter contract: one image, then any number of cheap prompts.

Modelled on segment-anything's ``SamPredictor``: ``set_image`` runs the expensive encoder (or finds the
embedding in the cache), ``predict`` runs only the prompt encoder and mask decoder. Coordinates are pixels of
the image given to ``set_image``: x is the column (volume index i), y the row (volume index j); box corners are
inclusive pixel indices. Input transforms (resize, pad, normalise) belong to the adapter, never to callers.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

POINTS_ONLY_MESSAGE = (
    "LiteMedSAM was trained with box prompts: add a box around the structure (CLI: --box I0,J0,I1,J1,K), "
    "or use a segment-anything checkpoint, which accepts points alone"
)
"""Why LiteMedSAM refuses points without a box; here (import-free) so front ends can refuse before loading it."""


@dataclass(frozen=True)
class Prompt2D:
    """A prompt on one slice. ``box`` is ``(x0, y0, x1, y1)`` inclusive; ``labels`` 1 = foreground, 0 = background."""

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.points) != len(self.labels):
            raise ValueError("each point needs exactly one label (1 foreground, 0 background)")
        if self.box is None and not self.points:
            raise ValueError("a prompt needs a box, points, or both")

    @property
    def has_foreground_point(self) -> bool:
        return any(label == 1 for label in self.labels)


@dataclass(frozen=True)
class Prediction:
    """A 2D mask on the image given to ``set_image`` and the model's own quality estimate (predicted IoU)."""

    mask: np.ndarray  # bool, (H, W)
    score: float


@dataclass
class SegmenterStats:
    """Counters that tests and benchmarks read: the encoder must not run twice for one cached slice."""

    encoder_calls: int = 0
    cache_hits: int = 0
    store_hits: int = 0
    """Of ``cache_hits``, those read from the disk store (``disk_cache``) rather than memory."""
    decoder_calls: int = 0
    encoder_seconds: float = 0.0
    decoder_seconds: float = 0.0


@dataclass(frozen=True)
class TargetWork:
    """What one target cost the segmenter, counted (never timed), as ``result.json`` reports it per target.

    Counts say what a run did whatever the machine's load: ``encoder_calls`` embeddings computed for this target,
    ``embedding_cache_hits`` embeddings read back instead (memory or the disk store), ``segmented_slices`` slices the
    segmenter was run on for the target's mask (its key slice and every slice propagation or a correction visited,
    including the one that stopped a direction), ``interpolated_slices`` slices filled by skip-and-interpolate without
    the segmenter. Every segmented slice needs an embedding, so ``encoder_calls + embedding_cache_hits >=
    segmented_slices``.
    """

    encoder_calls: int = 0
    embedding_cache_hits: int = 0
    segmented_slices: int = 0
    interpolated_slices: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "encoder_calls": self.encoder_calls,
            "embedding_cache_hits": self.embedding_cache_hits,
            "segmented_slices": self.segmented_slices,
            "interpolated_slices": self.interpolated_slices,
        }

    @staticmethod
    def from_dict(data: dict[str, Any] | None) -> TargetWork | None:
        """The counts a session or result file recorded, or ``None`` where they were not recorded (older files)."""
        if not data:
            return None
        return TargetWork(**{k: int(data.get(k, 0)) for k in TargetWork.__dataclass_fields__})


def embedding_mark(segmenter: object) -> tuple[int, int]:
    """``(encoder calls, embedding cache hits)`` so far: a target's counts are the difference of two marks, so a
    segmenter shared by many targets (a server, an evaluation run) still reports each target's own work."""
    stats = getattr(segmenter, "stats", None)
    if stats is None:
        return 0, 0
    return int(stats.encoder_calls), int(stats.cache_hits)


def work_since(
    segmenter: object, mark: tuple[int, int], segmented_slices: int, interpolated_slices: int = 0
) -> TargetWork:
    """The ``TargetWork`` of what ``segmenter`` did since ``mark`` (``embedding_mark``), with the target's slices."""
    encoder, hits = embedding_mark(segmenter)
    return TargetWork(encoder - mark[0], hits - mark[1], int(segmented_slices), int(interpolated_slices))


@dataclass(frozen=True)
class ModelIdentity:
    """What went into ``result.json``: enough to know which weights produced a mask."""

    name: str
    weights: str
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Segmenter(Protocol):
    """A promptable 2D segmenter (SAM family)."""

    identity: ModelIdentity
    stats: SegmenterStats

    def set_image(self, image: np.ndarray, cache_key: Hashable | None = None) -> None:
        """Encode an (H, W, 3) uint8 image, or reuse the cached embedding stored under ``cache_key``."""

    def predict(self, prompt: Prompt2D) -> Prediction:
        """Segment the current image from ``prompt``."""


def box_from_mask(mask: np.ndarray, margin: int = 0) -> tuple[float, float, float, float] | None:
    """Tight inclusive ``(x0, y0, x1, y1)`` box of a 2D mask, grown by ``margin`` pixels and clipped."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    return (
        float(max(cols[0] - margin, 0)),
        float(max(rows[0] - margin, 0)),
        float(min(cols[-1] + margin, w - 1)),
        float(min(rows[-1] + margin, h - 1)),
    )


def points_array(points: Sequence[Sequence[float]]) -> np.ndarray:
    return np.asarray(points, dtype=np.float32).reshape(-1, 2)
