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

Any orientation: a coronal or sagittal key slice is propagated on ``volume.core.plane_volume``'s view
(along j or i), with the same rules.

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
    """``key_slice``, the outcomes' ``k`` and ``visited_slices`` count along the normal of ``orientation`` (axial:
    k; coronal: j; sagittal: i), where the propagation went; ``mask`` is on the grid it was given (the pipeline
    turns it back onto the volume's ``[k, j, i]`` grid)."""

    mask: np.ndarray  # bool [k, j, i]
    key_slice: int
    outcomes: list[SliceOutcome] = field(default_factory=list)
    stop_reasons: dict[str, str] = field(default_factory=dict)
    orientation: str = "axial"

    @property
    def visited_slices(self) -> list[int]:
        return sorted(o.k for o in self.outcomes)

    @property
    def slice_range(self) -> tuple[int, int] | None:
        ks = np.flatnonzero(self.mask.any(axis=(1, 2)))
        return (int(ks[0]), int(ks[-1])) if ks.size else None


def slice_cache_key(volume: Volume, k: int, window: Window) -> tuple:
    """The embedding cache key of slice k: same voxels, slice and window give the same embedding.

    A coronal or sagittal plane is slice k of a ``plane_volume`` view, whose content hash differs from the
    volume's, so its embeddings never collide with those of the axial slice with the same index.
    """
    return (volume.content_hash(), "k", int(k), window.key)


ANISOTROPY_RESAMPLE_RATIO = 1.5
"""Pixels whose sides differ by at least this factor are resampled square before the segmenter (see
``segmenter_input``); the reasoner's views stretch reformats from the same ratio (``views._row_repeat`` rounds it)."""
MAX_SEGMENTER_SIDE = 2048
"""Never upsample a slice beyond this many pixels a side: the segmenters resize to 256-1024 px anyway."""


@dataclass(frozen=True)
class SegmenterInput:
    """The image a slice is segmented on, and the scale from the slice's pixels (x = column, y = row) to it.

    On a 2 mm-thick axial series a coronal plane has 0.98 mm columns but 2 mm rows (5 mm vs 0.7 mm on many CTs):
    given as it is, a SAM-family model (which resizes the longer side to its input size) sees every structure
    squashed 2-7 times in height. Resampling rows (or columns) to square pixels gives it anatomy in the
    proportions it was trained on; prompts are scaled in, and masks come back by nearest neighbour at the centre
    of each original pixel. Square-pixel slices (every axial slice of ordinary series) pass through unchanged.
    """

    image: np.ndarray  # (H, W, 3) uint8
    scale_x: float = 1.0
    scale_y: float = 1.0

    @property
    def resampled(self) -> bool:
        return self.scale_x != 1.0 or self.scale_y != 1.0

    def prompt(self, prompt: Prompt2D) -> Prompt2D:
        """``prompt`` in this image's pixels: a box covers all of its corner pixels; points go to pixel centres."""
        if not self.resampled:
            return prompt
        sx, sy = self.scale_x, self.scale_y
        h, w = self.image.shape[:2]
        box = None
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            box = (
                float(np.floor(x0 * sx)),
                float(np.floor(y0 * sy)),
                float(min(np.ceil((x1 + 1) * sx) - 1, w - 1)),
                float(min(np.ceil((y1 + 1) * sy) - 1, h - 1)),
            )
        points = tuple(((x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5) for x, y in prompt.points)
        return Prompt2D(box=box, points=points, labels=prompt.labels)

    def mask_back(self, mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A mask on this image, sampled (nearest neighbour) at the centres of the slice's ``shape`` pixels."""
        if not self.resampled:
            return mask
        h, w = mask.shape
        rows = np.minimum(((np.arange(shape[0]) + 0.5) * self.scale_y).astype(int), h - 1)
        cols = np.minimum(((np.arange(shape[1]) + 0.5) * self.scale_x).astype(int), w - 1)
        return mask[np.ix_(rows, cols)]


def segmenter_input(image: np.ndarray, spacing_x: float, spacing_y: float) -> SegmenterInput:
    """``image`` (a slice, x = column) resampled to square pixels when its pixels' aspect ratio reaches
    ``ANISOTROPY_RESAMPLE_RATIO``: the coarse axis is upsampled (bilinear) to the fine one's spacing."""
    if spacing_x <= 0 or spacing_y <= 0:
        return SegmenterInput(image)
    ratio = max(spacing_x, spacing_y) / min(spacing_x, spacing_y)
    if ratio < ANISOTROPY_RESAMPLE_RATIO:
        return SegmenterInput(image)
    from PIL import Image

    h, w = image.shape[:2]
    pixel = min(spacing_x, spacing_y)
    pixel = max(pixel, spacing_x * w / MAX_SEGMENTER_SIDE, spacing_y * h / MAX_SEGMENTER_SIDE)
    new_w, new_h = max(1, round(w * spacing_x / pixel)), max(1, round(h * spacing_y / pixel))
    grey = Image.fromarray(np.ascontiguousarray(image[..., 0]))
    resized = np.asarray(grey.resize((new_w, new_h), Image.Resampling.BILINEAR))
    rgb = np.repeat(resized[..., None], 3, axis=2)
    return SegmenterInput(rgb, new_w / w, new_h / h)


def segment_slice(volume: Volume, segmenter: Segmenter, window: Window, k: int, prompt: Prompt2D) -> Prediction:
    """Segment slice ``k`` of ``volume`` from a prompt in its (i, j) pixel coordinates.

    The segmenter sees the slice in physical proportions (``segmenter_input``); the returned mask is on the
    slice's own pixels whatever it saw.
    """
    image = render_slice(volume, k, window)
    si, sj, _ = volume.geometry.spacing
    seen = segmenter_input(image, si, sj)
    key = slice_cache_key(volume, k, window)
    if seen.resampled:
        key = (*key, "square", seen.image.shape[0], seen.image.shape[1])
    segmenter.set_image(seen.image, cache_key=key)
    prediction = segmenter.predict(seen.prompt(prompt))
    if not seen.resampled:
        return prediction
    return Prediction(seen.mask_back(prediction.mask, image.shape[:2]), prediction.score)


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
    # Label only the mask's bounding box: a structure is a small part of a volume, and labelling the whole grid
    # (a 300 x 512 x 512 CT) costs far more than the propagation's own bookkeeping.
    crop = _bounding_box(mask)
    labels, count = ndimage.label(mask[crop], structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out = np.zeros_like(mask, dtype=bool)
    out[crop] = labels == int(np.argmax(sizes))
    return out


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box holding every True voxel of a non-empty mask, as slices."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)
