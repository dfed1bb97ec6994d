"""The reasoner proposes a correction of a judged mask: it sees the mask's outline on the worst slices and may
answer with one box (add) or erase box on one of them, which goes through the user's refine step
(``correction.correct_mask``), so a reasoner's correction and a user's land on the same voxels.

Why: judgment can say *that* a mask is wrong (a leak, a piece too many) but not *where*; the reasoner, shown the
slices where the mask changes most abruptly, can point at the wrong region as a clinician would.

A proposal is kept only when it improves the mask, decided by the judgment's checks first and the segmenter's score
second (``decide``): fewer failed checks is better and one more is worse; with as many failed checks, an add is
kept when the segmenter scores the reasoner's box on that slice higher than the box of the mask already there
(the model's own quality estimate, a decoder pass on a cached embedding), and an erase is not kept (nothing
independent says the erased voxels were wrong). The judgment of the corrected mask is recorded in the round with
the proposal (``Judgment.proposal``): what was proposed, on which slices the reasoner looked, whether it was applied
and whether the mask improved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..correction import Correction, correct_mask
from ..pipeline import VoxelPrompt
from ..propagation import DEFAULT_PROPAGATION, PropagationConfig, segment_slice
from ..reasoning.views import draw_entities
from ..reasoning.views.model import View, ViewSet
from ..reasoning.views.render import slice_view
from ..segmentation.base import Prompt2D, Segmenter, box_from_mask
from ..volume.core import Volume
from ..volume.windowing import Window
from ..wire.errors import InputError
from ..wire.masks import CompactMask
from .judgment import Candidate, Judgment

WORST_SLICES = 3
"""How many slices the reasoner is shown: enough to find a leak or a dropout, few enough to look at in one answer."""
STRATEGY = "reasoner correction"


@dataclass(frozen=True)
class OutlineView:
    """Axial slice ``k`` rendered as the reasoner's views are, with the mask's outline drawn on it (tag "mask")."""

    k: int
    view: View
    pixels: int


ProposeFn = Callable[[list[OutlineView], list[str]], Correction | None]
"""``(views, reasons) -> Correction | None``: the reasoner's proposal, given the outlined slices and the reasons the
judgment gave (empty when the mask passed)."""
ProposalFn = Callable[[Candidate, Judgment], tuple[Candidate, dict[str, Any]] | None]
"""What ``correction_loop.judge_and_correct`` calls: the corrected candidate and the proposal's record, or None."""


def worst_slices(mask: CompactMask, count: int = WORST_SLICES) -> list[int]:
    """The axial slices where the mask's area departs most from the mean of its two neighbours (relative to the
    larger of the two): a leak or a dropped slice shows there as a jump. Its first and last slices compete too (a
    neighbour outside the mask has area 0)."""
    if mask.box is None:
        return []
    areas = mask.crop().sum(axis=(1, 2)).astype(np.float64)
    padded = np.pad(areas, 1)
    around = (padded[:-2] + padded[2:]) / 2.0
    jump = np.abs(areas - around) / np.maximum(np.maximum(areas, around), 1.0)
    order = np.argsort(-jump, kind="stable")[:count]
    return sorted(int(mask.box[0] + n) for n in order)


@dataclass(frozen=True)
class _Outlined:
    """The mask as ``reasoning.views.draw_entities`` draws an entity (its ``DrawableEntity`` protocol)."""

    mask: CompactMask
    shape: tuple[int, int, int]
    id: str = "mask"
    slice: int | None = None
    box: tuple[int, int, int, int] | None = None
    color: tuple[int, int, int] | None = (255, 255, 0)

    @property
    def slices(self) -> tuple[int, int] | None:
        return None if self.mask.box is None else (self.mask.box[0], self.mask.box[3])

    @property
    def slice_mask(self) -> Callable[[int], np.ndarray | None]:
        return lambda k: self.mask.slice_mask(k, self.shape)


def outline_views(volume: Volume, window: Window, mask: CompactMask, slices: list[int]) -> list[OutlineView]:
    """Each of ``slices`` rendered at full resolution with the mask's outline, as the reasoner's views are drawn."""
    entity = _Outlined(mask, volume.shape)
    out = []
    for k in slices:
        view = slice_view(volume, "axial", k, window)
        (drawn,) = draw_entities(_views(view, volume), [entity]).views
        out.append(OutlineView(k, drawn, int(mask.slice_mask(k, volume.shape).sum())))
    return out


def _views(view: View, volume: Volume) -> ViewSet:
    return ViewSet(task="locate", views=(view,), volume_shape=volume.shape)  # one slice to point on: a locate view


def reasoner_proposals(
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    propose: ProposeFn,
    *,
    config: PropagationConfig = DEFAULT_PROPAGATION,
    count: int = WORST_SLICES,
) -> ProposalFn:
    """The ``propose`` hook of ``judge_and_correct``: show the reasoner the worst slices, apply what it proposes."""

    def proposal(candidate: Candidate, judgment: Judgment) -> tuple[Candidate, dict[str, Any]] | None:
        if candidate.mask.is_empty:
            return None
        shown = worst_slices(candidate.mask, count)
        correction = propose(outline_views(volume, window, candidate.mask, shown), judgment.reasons())
        if correction is None:
            return None
        record: dict[str, Any] = {"by": "reasoner", "slices_shown": shown, **correction.to_dict()}
        dense = candidate.mask.to_dense(volume.shape)
        key = candidate.prompt.k if candidate.prompt.is_axial else None
        try:
            result = correct_mask(volume, segmenter, window, dense, correction, key_slice=key, config=config)
        except InputError as exc:  # a box outside the volume, on nothing, or an erase of nothing: not applied
            record.update(applied=False, improved=False, refused=str(exc))
            return candidate, record
        record["changed_slices"] = result.changed_slices
        record["score"] = None if not np.isfinite(result.score) else round(float(result.score), 4)
        if not correction.erase:
            record["score_before"] = _existing_score(volume, segmenter, window, dense, correction.prompt, config)
        corrected = Candidate(
            CompactMask.from_dense(result.mask),
            candidate.score,
            candidate.prompt,
            candidate.propagated,
            STRATEGY,
            dict(candidate.stop_reasons),
            candidate.segmented_slices + len(result.segmented_slices),
            candidate.interpolated_slices,
        )
        return corrected, record

    return proposal


def _existing_score(
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    mask: np.ndarray,
    prompt: VoxelPrompt,
    config: PropagationConfig,
) -> float | None:
    """The segmenter's score for the box of the mask already on the proposal's (axial) slice; None off-axis or
    where the mask has nothing there."""
    if not prompt.is_axial or not mask[prompt.k].any():
        return None
    box = box_from_mask(mask[prompt.k])
    prediction = segment_slice(volume, segmenter, window, prompt.k, Prompt2D(box=box), config.key_zoom)
    return round(float(prediction.score), 4) if np.isfinite(prediction.score) else None


def decide(before: Judgment, after: Judgment, record: dict[str, Any]) -> bool:
    """Whether the corrected mask replaces the judged one (see the module docstring); fills ``record``'s
    ``applied``, ``improved`` and ``decided_by``."""
    if "refused" in record:
        return False
    worse, better = len(after.failures) - len(before.failures), len(before.failures) - len(after.failures)
    if worse > 0 or better > 0:
        record.update(applied=better > 0, improved=better > 0, decided_by="judgment checks")
        return better > 0
    score, existing = record.get("score"), record.get("score_before")
    higher = record.get("kind") == "add" and score is not None and (existing is None or score > existing)
    record.update(applied=higher, improved=higher, decided_by="segmenter score")
    return higher
