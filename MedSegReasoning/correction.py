"""Correct an existing 3D mask from one box on any slice: the one engine step behind every front end's "refine".

A clinician (or the reasoner during judgment, or the simulated user of the interactive benchmark) sees a slice
where the mask is wrong and draws one box there:

- **add** (a box on the structure): the slice is segmented again from that box, and the new mask is propagated
  outwards from it, slice by slice with the propagation's own step and stopping rules, until it *rejoins* the
  existing mask (the re-propagated slice agrees with what the mask already holds there, Dice >= ``rejoin_dice``)
  or a stopping rule ends it. It also ends on a slice whose existing mask the segmenter scores higher than the
  re-propagated one (its box, judged by the model's own quality estimate; the encoder's output is cached,
  so this costs a decoder pass): measured on the 28 goal structures of ``benchmarks/volumes.py``, without this
  rule a correction at the end of the stomach let a shrinking re-propagation replace ten good slices, and 5
  structures lost Dice to a correction; with it 2 do, and the mean final Dice rose 0.642 -> 0.656.
  Only the slices visited are replaced: a correction near one end of a structure leaves the rest as it was.
- **erase** (a box around wrong voxels): what lies inside the box on that slice is removed, and with it what
  propagation grew from it: on the slices beyond (away from the structure's key slice) the parts inside the box
  that continue the erased region, until nothing continues.

Any orientation: a coronal or sagittal box works on the ``PlaneView`` of its plane, as segmentation does, and
the result lands back on the volume's ``[k, j, i]`` grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .pipeline import PlaneView, VoxelPrompt
from .propagation import (
    DEFAULT_PROPAGATION,
    PropagationConfig,
    key_tissue,
    next_slice,
    segment_slice,
)
from .segmentation.base import Segmenter
from .volume.core import Volume
from .volume.windowing import Window
from .wire.errors import InputError

REJOIN_DICE = 0.8
"""A re-propagated slice that agrees this well with the existing mask there ends the correction in that direction."""


@dataclass(frozen=True)
class Correction:
    """One box (and points where the segmenter takes them) on any plane of an existing mask; ``erase`` removes."""

    prompt: VoxelPrompt
    erase: bool = False

    def to_dict(self) -> dict:
        return {"kind": "erase" if self.erase else "add", **self.prompt.to_dict()}


@dataclass
class CorrectionResult:
    """The corrected mask (``[k, j, i]``), which slices of the prompt's plane changed, and why each direction ended."""

    mask: np.ndarray
    changed_slices: list[int] = field(default_factory=list)
    stop_reasons: dict[str, str] = field(default_factory=dict)
    score: float = float("nan")
    segmented_slices: list[int] = field(default_factory=list)
    """Slices the segmenter ran on (an add's box slice and each slice it re-propagated to, the one that ended a
    direction included); an erase runs no segmenter."""

    @property
    def changed(self) -> int:
        return len(self.changed_slices)


def correct_mask(
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    mask: np.ndarray,
    correction: Correction,
    *,
    key_slice: int | None = None,
    config: PropagationConfig = DEFAULT_PROPAGATION,
    rejoin_dice: float = REJOIN_DICE,
    locked: set[int] | frozenset[int] = frozenset(),
) -> CorrectionResult:
    """Apply ``correction`` to ``mask`` (bool ``[k, j, i]`` on ``volume``'s grid); ``mask`` itself is not changed.

    ``key_slice`` (an axial index, as entities record it) tells an erase which side of its slice grew from it;
    without it the side holding less of the mask is taken. ``locked`` names slices of the prompt's plane that earlier
    corrections (or the key slice) set: a re-propagation, or an erase following what grew from its box, stops there
    and never changes them, so two corrections cannot undo each other. Raises ``InputError`` for a box outside the volume, an
    add the segmenter finds nothing for, or an erase box that holds none of the mask.
    """
    from .pipeline import check_prompt

    if mask.shape != volume.shape:
        raise InputError(
            f"the mask has shape {mask.shape} but the volume {volume.shape}: the entity belongs to another volume."
        )
    if correction.prompt.box is None:
        raise InputError("a correction needs a box (I0,J0,I1,J1 on its slice); points may go with it.")
    check_prompt(volume, correction.prompt)
    plane = PlaneView.of(volume, correction.prompt)
    view_mask = plane.to_view(np.asarray(mask, dtype=bool)).copy()
    if correction.erase:
        key = _key_on_view(plane, view_mask, key_slice)
        result = _erase(view_mask, plane.prompt, key, frozenset(locked))
    else:
        result = _add(plane, segmenter, window, view_mask, config, rejoin_dice, frozenset(locked))
    result.mask = plane.to_volume(result.mask)
    return result


def _add(
    plane: PlaneView,
    segmenter: Segmenter,
    window: Window,
    mask: np.ndarray,
    config: PropagationConfig,
    rejoin_dice: float,
    locked: frozenset[int],
) -> CorrectionResult:
    view, prompt = plane.volume, plane.prompt
    prediction = segment_slice(view, segmenter, window, prompt.k, prompt.to_prompt2d(), config.key_zoom)
    if not prediction.mask.any():
        raise InputError(
            f"the segmenter found nothing in the correction box on slice {prompt.k}: place the box on the structure."
        )
    result = CorrectionResult(mask, [prompt.k], score=prediction.score, segmented_slices=[prompt.k])
    first, last = _extent(mask, prompt.k)
    mask[prompt.k] = prediction.mask
    tissue = key_tissue(view, prompt.k, prediction.mask, config)
    nk = view.shape[0]
    for direction, step in (("up", 1), ("down", -1)):
        previous, k = prediction.mask, prompt.k + step
        while True:
            if not 0 <= k < nk:
                result.stop_reasons[direction] = "reached the end of the volume"
                break
            if not first <= k <= last:
                result.stop_reasons[direction] = f"slice {k}: past the entity's end"
                break
            if k in locked:
                result.stop_reasons[direction] = f"slice {k}: an earlier correction"
                break
            outcome, new = next_slice(view, segmenter, window, k, previous, config, tissue)
            result.segmented_slices.append(k)
            if not outcome.accepted:
                result.stop_reasons[direction] = f"slice {k}: {outcome.reason}"
                break
            existing = mask[k]
            if existing.any() and _dice(new, existing) >= rejoin_dice:
                result.stop_reasons[direction] = f"slice {k}: rejoined the mask"
                break
            if existing.any():
                kept, _ = next_slice(view, segmenter, window, k, existing, config, None)
                if kept.score > outcome.score:  # a tie goes to the user's correction
                    result.stop_reasons[direction] = f"slice {k}: the model scores the mask there higher"
                    break
            mask[k] = new
            result.changed_slices.append(k)
            previous, k = new, k + step
    result.changed_slices.sort()
    result.segmented_slices.sort()
    result.mask = mask  # no component filter: what the user's box added stays, what it did not touch is kept
    return result


def _extent(mask: np.ndarray, k: int) -> tuple[int, int]:
    """The slices an add on slice ``k`` may re-propagate over: the mask's own extent where ``k`` lies inside it (the
    original propagation already decided where the structure ends: measured, re-propagating past it added wrong
    slices beyond the caudate's end), unbounded on the side where ``k`` extends it."""
    ks = np.flatnonzero(mask.any(axis=(1, 2)))
    if ks.size == 0:
        return 0, mask.shape[0] - 1
    first, last = int(ks[0]), int(ks[-1])
    return (first if k >= first else 0), (last if k <= last else mask.shape[0] - 1)


def _erase(mask: np.ndarray, prompt: VoxelPrompt, key_slice: int, locked: frozenset[int]) -> CorrectionResult:
    from scipy import ndimage

    u0, v0, u1, v1 = prompt.box  # type: ignore[misc]  # checked by correct_mask
    box = (slice(v0, v1 + 1), slice(u0, u1 + 1))
    k = prompt.k
    removed = np.zeros(mask.shape[1:], dtype=bool)
    removed[box] = mask[k][box]
    if not removed.any():
        raise InputError(
            f"the erase box {prompt.box} on slice {k} holds none of the mask: place it around the voxels to remove."
        )
    result = CorrectionResult(mask, [k])
    mask[k] &= ~removed
    steps = (1, -1) if k == key_slice else ((1,) if k > key_slice else (-1,))
    for step in steps:
        previous, j = removed, k + step
        why = "nothing grown from the erased region"
        while 0 <= j < mask.shape[0]:
            if j in locked:  # an earlier correction set this slice: an erase never undoes it
                why = "an earlier correction"
                break
            inside = np.zeros_like(previous)
            inside[box] = mask[j][box]
            labels, count = ndimage.label(inside)
            touching = np.unique(labels[ndimage.binary_dilation(previous) & (labels > 0)])
            if count == 0 or touching.size == 0:
                break
            grown = np.isin(labels, touching)
            mask[j] &= ~grown
            result.changed_slices.append(j)
            previous, j = grown, j + step
        result.stop_reasons["up" if step > 0 else "down"] = f"slice {j}: {why}"
    result.changed_slices.sort()
    return result


def _key_on_view(plane: PlaneView, mask: np.ndarray, key_slice: int | None) -> int:
    """The key slice's index on the view: the entity's (axial) key slice on an axial view, else where the mask is
    largest on the view's far side from the box (the side holding more of the mask is where it was grown from)."""
    if key_slice is not None and plane.orientation == "axial":
        return int(key_slice)
    areas = mask.sum(axis=(1, 2))
    if not areas.any():
        return plane.prompt.k
    return int(np.argmax(areas))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
