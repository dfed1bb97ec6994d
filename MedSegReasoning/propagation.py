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

Before those rules, each propagated slice's mask is cut to the key slice's tissue: the voxels whose values lie in
the range the key mask covers (``Tissue``), and of what remains the parts touching the previous slice's mask. A
box-prompted model asked for a slice where the structure narrows fills its box with the neighbour; this keeps the
neighbour out when it is another tissue (measured in ``benchmarks/volumes.py``: the 3D Dice over key-slice Dice
ratio of the CT and MR structures rose from 0.69 to 0.84, with no loss on the CT organs' mean). "Ended" is relative
to the structure's own size on the previous slice, so a 15-pixel adrenal at 3 mm is not cut after one slice.

Any orientation: a coronal or sagittal key slice is propagated on ``volume.core.plane_volume``'s view
(along j or i), with the same rules.

Skip-and-interpolate (on by default, ``skip=3``): from a segmented slice the slice ``skip - 1`` further is segmented
first; when its mask is accepted and agrees with the previous one (Dice >= ``skip_agreement``, 0.5) the slices in
between are filled by shape-based interpolation (``volume.shapes.interpolate_masks``) without the segmenter. A far
slice that is refused is retried nearer (``skip_bisect``), and past a refused far slice each slice is visited one by
one up to it (``skip_walk``), so the end of a structure costs no repeated probes beyond it. Measured on the 16 goal
structures of ``benchmarks/volumes.py`` against full propagation (``skip=1``) in the same run: mean 3D Dice +0.022,
0.49x the encoder calls (benchmarks/results.md). ``skip=1`` is the slice-by-slice propagation.

Finally the largest 3D connected component is kept, so islands that a slice picked up do not survive.
The stop reason per direction is returned, because the judgment step and the reviewer need to know why a
mask ends where it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .propagation_span import SpanProgress
from .segmentation.base import Prediction, Prompt2D, Segmenter, box_from_mask
from .volume.core import Volume
from .volume.shapes import interpolate_masks, largest_component
from .volume.windowing import Window, render_slice

ProgressCallback = Callable[[int, int], None]
"""Called with (slices visited so far, slices the structure can span: ``propagation_span``; equal at the end)."""


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
    zoom_below_px: float = 0.0
    key_zoom_below_px: float = 48.0
    skip: int = 3
    skip_agreement: float = 0.5
    skip_walk: bool = True
    skip_bisect: bool = True
    tissue_quantile: float | None = 0.02
    tissue_pad: float = 0.1

    @property
    def zoom(self) -> ZoomPolicy:
        """How propagated slices are seen: whole (measured: zooming every propagated slice lost more Dice on the
        CT's vessels and pancreas than it won on the adrenal, ``benchmarks/volumes.py``)."""
        return ZoomPolicy(below_px=self.zoom_below_px)

    @property
    def key_zoom(self) -> ZoomPolicy:
        """How a slice the user or the reasoner drew on is seen: a small box is segmented both on the whole slice and
        on a zoomed crop, and the mask the model scores higher is kept (one extra encoder call, on that slice only)."""
        return ZoomPolicy(below_px=self.key_zoom_below_px, compare=True)


DEFAULT_PROPAGATION = PropagationConfig()


@dataclass(frozen=True)
class Tissue:
    """The voxel values of the structure on its key slice: its ``quantile`` to ``1 - quantile`` range, widened by
    ``pad`` of its width on each side (robust to the few mislabelled voxels at a mask's edge)."""

    low: float
    high: float

    @classmethod
    def of(cls, values: np.ndarray, quantile: float, pad: float) -> Tissue | None:
        if values.size == 0:
            return None
        low, high = np.quantile(values.astype(np.float64), [quantile, 1.0 - quantile])
        width = float(high - low)
        return cls(float(low) - pad * width, float(high) + pad * width)

    def contains(self, values: np.ndarray) -> np.ndarray:
        return (values >= self.low) & (values <= self.high)


def key_tissue(volume: Volume, key_slice: int, key_mask: np.ndarray, config: PropagationConfig) -> Tissue | None:
    """The tissue that propagated slices are cut to, or None when the config turns the cut off."""
    if config.tissue_quantile is None:
        return None
    return Tissue.of(volume.array[key_slice][key_mask], config.tissue_quantile, config.tissue_pad)


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
    interpolated_slices: list[int] = field(default_factory=list)
    probed_slices: list[int] = field(default_factory=list)
    """Far slices of a skip that was refused (segmented, then walked to slice by slice, or past the structure's end)."""

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


@dataclass(frozen=True)
class ZoomPolicy:
    """When a slice is segmented on a zoomed crop around the prompt instead of the whole slice.

    A SAM-family model resizes the whole slice to its input (256 px for LiteMedSAM): a 512 px CT loses half its
    resolution, and a 20 px adrenal gland becomes 10 px, too little for the encoder to see its edges. Where the
    prompt box's longer side would cover fewer than ``below_px`` pixels of the model's input, the slice is cropped
    to a square ``context`` times the box's longer side (at least ``min_side_px`` slice pixels, centred on the box,
    inside the slice) and that crop is encoded instead: its own embedding, cached under its own key. Crop corners
    are snapped to ``snap_px`` so a second prompt on the same slice (a correction, a re-prompt) reuses it. With
    ``compare`` the whole slice is segmented too and the mask with the higher model score is kept: on 55 organ
    slices of the benchmark's cases (box from the reference) a 4x crop below 48 px raised the mean 2D Dice of the
    organs and vessels from 0.62 to 0.72, and to 0.73 when compared this way, but single structures moved both ways
    (aorta 0.93 -> 0.81, adrenal 0.54 -> 0.67, humerus 0.02 -> 0.90).
    """

    below_px: float = 0.0
    compare: bool = False
    context: float = 4.0
    min_side_px: int = 64
    snap_px: int = 8
    model_input_px: int = 256

    def crop(
        self, box: tuple[float, float, float, float] | None, height: int, width: int
    ) -> tuple[int, int, int, int] | None:
        """``(x0, y0, x1, y1)`` (exclusive ends) of the crop for ``box`` on a ``height`` x ``width`` image, or None."""
        if box is None or self.below_px <= 0:
            return None
        x0, y0, x1, y1 = box
        side_px = max(x1 - x0 + 1, y1 - y0 + 1)
        if side_px * self.model_input_px / max(height, width) >= self.below_px:
            return None
        side = int(max(self.min_side_px, side_px * self.context))
        side = min(-(-side // self.snap_px) * self.snap_px, height, width)
        if side >= max(height, width):
            return None
        cx, cy = (x0 + x1 + 1) / 2.0, (y0 + y1 + 1) / 2.0
        left = int(round((cx - side / 2.0) / self.snap_px)) * self.snap_px
        top = int(round((cy - side / 2.0) / self.snap_px)) * self.snap_px
        left, top = min(max(left, 0), width - side), min(max(top, 0), height - side)
        return left, top, left + side, top + side


NO_ZOOM = ZoomPolicy()


def segment_slice(
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    k: int,
    prompt: Prompt2D,
    zoom: ZoomPolicy | None = None,
) -> Prediction:
    """Segment slice ``k`` of ``volume`` from a prompt in its (i, j) pixel coordinates.

    The segmenter sees the slice in physical proportions (``segmenter_input``), zoomed to a crop around a small
    prompt (``zoom``, default ``DEFAULT_PROPAGATION.key_zoom``); the returned mask is on the slice's own pixels whatever it saw.
    """
    zoom = DEFAULT_PROPAGATION.key_zoom if zoom is None else zoom
    image = render_slice(volume, k, window)
    si, sj, _ = volume.geometry.spacing
    seen = segmenter_input(image, si, sj)
    key = slice_cache_key(volume, k, window)
    if seen.resampled:
        key = (*key, "square", seen.image.shape[0], seen.image.shape[1])
    on_seen = seen.prompt(prompt)
    h, w = seen.image.shape[:2]
    crop = zoom.crop(on_seen.box, h, w)
    picture, whole_key = seen.image, key
    if crop is not None:
        x0, y0, x1, y1 = crop
        picture = np.ascontiguousarray(seen.image[y0:y1, x0:x1])
        key = (*key, "crop", *crop)
        on_seen = _shifted(on_seen, -x0, -y0)
    segmenter.set_image(picture, cache_key=key)
    prediction = segmenter.predict(on_seen)
    mask = prediction.mask
    if crop is not None:
        x0, y0, x1, y1 = crop
        full = np.zeros((h, w), dtype=bool)
        full[y0:y1, x0:x1] = mask
        mask = full
        if zoom.compare:
            segmenter.set_image(seen.image, cache_key=whole_key)
            whole = segmenter.predict(seen.prompt(prompt))
            if whole.score >= prediction.score:
                mask, prediction = whole.mask, whole
    if seen.resampled:
        mask = seen.mask_back(mask, image.shape[:2])
    return Prediction(mask, prediction.score)


def _shifted(prompt: Prompt2D, dx: float, dy: float) -> Prompt2D:
    box = None
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        box = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
    points = tuple((x + dx, y + dy) for x, y in prompt.points)
    return Prompt2D(box=box, points=points, labels=prompt.labels)


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
    tissue = key_tissue(volume, key_slice, key_mask, config)
    budget = nk if config.max_slices is None else min(nk, config.max_slices)
    visited = 1
    expected = SpanProgress.expected_side(key_mask, volume.geometry.spacing)
    span = SpanProgress(progress, key_slice, nk, budget, expected)
    span.report()
    for direction, step in (("up", 1), ("down", -1)):
        previous = key_mask
        k = key_slice + step
        walk_to = None  # after a failed skip: visit each slice up to (and including) the far slice that failed
        while True:
            if not 0 <= k < nk:
                result.stop_reasons[direction] = "reached the end of the volume"
                break
            if visited >= budget:
                result.stop_reasons[direction] = f"reached the limit of {budget} slices"
                break
            if walk_to is not None and (walk_to - k) * step < 0:
                walk_to = None
            skipped = False
            for tried in range(config.skip, 1, -1) if walk_to is None else ():
                far = k + (tried - 1) * step
                if not (0 <= far < nk and visited + tried <= budget):
                    continue
                outcome, mask = next_slice(volume, segmenter, window, far, previous, config, tissue)
                if outcome.accepted and _dice(previous, mask) >= config.skip_agreement:
                    result.outcomes.append(outcome)
                    for n, between in enumerate(range(k, far, step), start=1):
                        mask3d[between] = interpolate_masks(previous, mask, n / tried)
                        result.interpolated_slices.append(between)
                    mask3d[far] = mask
                    visited += tried
                    span.advance(direction, tried)
                    previous, k = mask, far + step
                    skipped = True
                    break
                # the slices in between differ too much to guess (or the far one is not the structure)
                result.probed_slices.append(far)
                if config.skip_walk and walk_to is None:
                    walk_to = far
                if not config.skip_bisect:
                    break
            if skipped:
                continue
            outcome, mask = next_slice(volume, segmenter, window, k, previous, config, tissue)
            result.outcomes.append(outcome)
            visited += 1
            span.advance(direction, 1)
            if not outcome.accepted:
                result.stop_reasons[direction] = f"slice {k}: {outcome.reason}"
                break
            mask3d[k] = mask
            previous = mask
            k += step
        span.stop(direction)
    result.mask = largest_component(mask3d)
    return result


def next_slice(
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    k: int,
    previous: np.ndarray,
    config: PropagationConfig,
    tissue: Tissue | None = None,
) -> tuple[SliceOutcome, np.ndarray]:
    """Segment slice ``k`` from the box of ``previous`` (the adjacent slice's mask), cut to ``tissue``, and judge it."""
    x0, y0, x1, y1 = box_from_mask(previous)  # type: ignore[misc]  # previous is never empty here
    margin = max(config.min_margin_px, round(config.margin_fraction * max(x1 - x0, y1 - y0)))
    h, w = previous.shape
    box = (max(x0 - margin, 0.0), max(y0 - margin, 0.0), min(x1 + margin, w - 1.0), min(y1 + margin, h - 1.0))
    prediction = segment_slice(volume, segmenter, window, k, Prompt2D(box=box), config.zoom)
    mask = prediction.mask
    if tissue is not None and mask.any():
        mask = touching(mask & tissue.contains(volume.array[k]), previous)
    pixels = int(mask.sum())
    reason = _rejection(mask, pixels, prediction.score, previous, config)
    return SliceOutcome(k, pixels, prediction.score, accepted=not reason, reason=reason), mask


def _rejection(mask: np.ndarray, pixels: int, score: float, previous: np.ndarray, config: PropagationConfig) -> str:
    """Why a propagated slice is not part of the structure ('' when it is)."""
    previous_pixels = int(previous.sum())
    if pixels < min(config.min_pixels, max(3, round(0.25 * previous_pixels))):
        return f"the structure ended ({pixels} pixels)"
    if score < config.min_score:
        return f"low model confidence ({score:.2f} < {config.min_score})"
    overlap = 2.0 * np.logical_and(mask, previous).sum() / (pixels + previous_pixels)
    if overlap < config.min_overlap:
        return f"the mask moved away from the previous slice (overlap {overlap:.2f} < {config.min_overlap})"
    if pixels > config.max_growth * previous_pixels:
        return f"the mask grew {pixels / previous_pixels:.1f}x at once (likely a leak)"
    return ""


def touching(mask: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The 2D components of ``mask`` that overlap ``previous``; all of ``mask`` when none does (the overlap rule
    then judges a mask that moved away)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    keep = np.unique(labels[mask & previous])
    keep = keep[keep > 0]
    return np.isin(labels, keep) if keep.size else mask


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
