"""From one 2D mask on a key slice to a 3D mask, visiting (and encoding) only the slices the structure spans.

The segmenter is 2D, so a structure is followed slice by slice: each next slice is prompted with the box of
the previous slice's mask, grown by a small margin so the structure may widen. Box-prompted SAM models
almost always return *something* inside a box, so "the structure ended" cannot be read from an empty mask
alone; a slice is rejected, and propagation stops in that direction, when any of these holds:

- the mask is (nearly) empty;
- the model's own quality estimate falls below ``min_score``;
- the mask barely overlaps the previous one (``min_overlap``, Dice after projection): the box has slid onto
  a different structure;
- the area grows by more than ``max_growth`` at once: a leak into the neighbourhood.

Finally the largest 3D connected component is kept, so islands that a slice picked up do not survive.
The stop reason per direction is returned, because the judgment step and the reviewer need to know why a
mask ends where it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .segmentation.base import Prediction, Prompt2D, Segmenter, box_from_mask
from .volume.core import Volume
from .volume.windowing import Window, render_slice

ProgressCallback = Callable[[int, int], None]
"""Called with (slices visited so far, upper bound on slices to visit)."""


@dataclass(frozen=True)
class PropagationConfig:
    """Thresholds of the stopping rules (see the module docstring)."""

    margin_fraction: float = 0.1
    min_margin_px: int = 2
    min_pixels: int = 10
    min_score: float = 0.35
    min_overlap: float = 0.3
    max_growth: float = 2.5
    max_slices: int | None = None


DEFAULT_PROPAGATION = PropagationConfig()


@dataclass(frozen=True)
class SliceOutcome:
    """What happened on one visited slice (``accepted`` False is the slice that stopped a direction)."""

    k: int
    pixels: int
    score: float
    accepted: bool
    reason: str = ""


@dataclass
class PropagationResult:
    mask: np.ndarray  # bool [k, j, i]
    key_slice: int
    outcomes: list[SliceOutcome] = field(default_factory=list)
    stop_reasons: dict[str, str] = field(default_factory=dict)

    @property
    def visited_slices(self) -> list[int]:
        return sorted(o.k for o in self.outcomes)

    @property
    def slice_range(self) -> tuple[int, int] | None:
        ks = np.flatnonzero(self.mask.any(axis=(1, 2)))
        return (int(ks[0]), int(ks[-1])) if ks.size else None


def slice_cache_key(volume: Volume, k: int, window: Window) -> tuple:
    """The embedding cache key of an axial slice: same voxels, slice and window give the same embedding."""
    return (volume.content_hash(), "k", int(k), window.key)


def segment_slice(volume: Volume, segmenter: Segmenter, window: Window, k: int, prompt: Prompt2D) -> Prediction:
    """Segment slice ``k`` of ``volume`` from a prompt in its (i, j) pixel coordinates."""
    segmenter.set_image(render_slice(volume, k, window), cache_key=slice_cache_key(volume, k, window))
    return segmenter.predict(prompt)


def propagate(
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    key_slice: int,
    key_mask: np.ndarray,
    config: PropagationConfig = DEFAULT_PROPAGATION,
    progress: ProgressCallback | None = None,
) -> PropagationResult:
    """Grow ``key_mask`` (bool, (nj, ni)) on ``key_slice`` through the volume, up and down."""
    nk = volume.shape[0]
    mask3d = np.zeros(volume.shape, dtype=bool)
    mask3d[key_slice] = key_mask
    result = PropagationResult(mask=mask3d, key_slice=key_slice)
    result.outcomes.append(SliceOutcome(key_slice, int(key_mask.sum()), float("nan"), True, "key slice"))
    budget = nk if config.max_slices is None else min(nk, config.max_slices)
    visited = 1
    if progress:
        progress(visited, budget)
    for direction, step in (("up", 1), ("down", -1)):
        previous = key_mask
        k = key_slice + step
        while True:
            if not 0 <= k < nk:
                result.stop_reasons[direction] = "reached the end of the volume"
                break
            if visited >= budget:
                result.stop_reasons[direction] = f"reached the limit of {budget} slices"
                break
            outcome, mask = _next_slice(volume, segmenter, window, k, previous, config)
            result.outcomes.append(outcome)
            visited += 1
            if progress:
                progress(visited, budget)
            if not outcome.accepted:
                result.stop_reasons[direction] = f"slice {k}: {outcome.reason}"
                break
            mask3d[k] = mask
            previous = mask
            k += step
    result.mask = largest_component(mask3d)
    return result


def _next_slice(
    volume: Volume, segmenter: Segmenter, window: Window, k: int, previous: np.ndarray, config: PropagationConfig
) -> tuple[SliceOutcome, np.ndarray]:
    x0, y0, x1, y1 = box_from_mask(previous)  # type: ignore[misc]  # previous is never empty here
    margin = max(config.min_margin_px, round(config.margin_fraction * max(x1 - x0, y1 - y0)))
    h, w = previous.shape
    box = (max(x0 - margin, 0.0), max(y0 - margin, 0.0), min(x1 + margin, w - 1.0), min(y1 + margin, h - 1.0))
    prediction = segment_slice(volume, segmenter, window, k, Prompt2D(box=box))
    mask = prediction.mask
    pixels = int(mask.sum())
    reason = _rejection(mask, pixels, prediction.score, previous, config)
    return SliceOutcome(k, pixels, prediction.score, accepted=not reason, reason=reason), mask


def _rejection(mask: np.ndarray, pixels: int, score: float, previous: np.ndarray, config: PropagationConfig) -> str:
    """Why a propagated slice is not part of the structure ('' when it is)."""
    if pixels < config.min_pixels:
        return f"the structure ended ({pixels} pixels)"
    if score < config.min_score:
        return f"low model confidence ({score:.2f} < {config.min_score})"
    previous_pixels = int(previous.sum())
    overlap = 2.0 * np.logical_and(mask, previous).sum() / (pixels + previous_pixels)
    if overlap < config.min_overlap:
        return f"the mask moved away from the previous slice (overlap {overlap:.2f} < {config.min_overlap})"
    if pixels > config.max_growth * previous_pixels:
        return f"the mask grew {pixels / previous_pixels:.1f}x at once (likely a leak)"
    return ""


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of a 3D mask."""
    from scipy import ndimage

    if not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))
