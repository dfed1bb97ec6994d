"""Rewards for training the reasoner: each a documented function of (answer text, ground truth) -> float in [0, 1].

Every reward reads the completion the way the runtime does: ``reasoning.parser.parse_answer`` and the view's own
coordinate conversion (``reasoning.convert.to_answer``), so a completion that scores here is exactly one that
``ask`` can use, and the geometry is compared in the volume's voxel indices, never in a second coordinate system.

Two families, combined with weights from the training config (``RewardWeights``):

- **MedReasoner's** (PRIS-CV/MedReasoner, ``verl/utils/reward_score/med_grounding.py``, read, not copied): a format
  reward (a non-empty ``<think>`` block; an answer with a valid box and two distinct points), the box IoU and the
  point-pair disc overlap, both smoothed as ``0.1 + 0.9 * log(1 + 3x) / log 4``, and their penalties (each factor
  1.0 when the check holds, 0.5 when not, applied as ``0.7 r + 0.3 r * mean(factors)``): the true points inside
  the predicted box and the predicted box's area within 0.5-2x the truth's (box); the predicted points inside the
  true box and at least 10 pixels apart (points). Where we differ: (1) their point score divides ``2|A∩B|`` by the
  union (2x the discs' IoU, up to 2.0 before smoothing, so the log smoothing can exceed 1); ours is the discs' Dice
  (``evaluation.metrics.point_pair_dice``), within [0, 1], the number ``eval`` reports; (2) their format reward is
  two terms summed (think + answer, up to 2.0); ours is their mean, so every component lies in [0, 1] and the
  weights alone set the balance; (3) an answer the runtime cannot convert (a box outside the image) scores 0 on
  geometry, where theirs scores the raw numbers.
- **Ours:** the Dice of the mask the frozen segmenter makes from the predicted prompts against the reference
  (``MaskReward``, in ``mask_reward.py``: it needs a segmenter), and for 3D samples the key-slice reward
  (``key_slice_reward``): 0 when the chosen slice misses the structure, else its area over the largest slice's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..evaluation.metrics import point_pair_dice
from ..wire.errors import InputError

_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
PENALTY_FACTOR = 0.5
"""A failed validity check halves its factor (MedReasoner's value)."""
PENALTY_SHARE = 0.3
"""The share of the reward that the validity factors scale: ``(1 - share) r + share r mean(factors)``."""
MIN_POINT_SPREAD_PX = 10.0
"""Two predicted points closer than this (pixels of the key slice) are one point twice, in effect."""

Box = tuple[float, float, float, float]
Point = tuple[float, float]


def smooth_log(value: float, k: float = 3.0) -> float:
    """``0.1 + 0.9 log(1 + k x) / log(1 + k)``: steep near 0 so a poor but overlapping answer already earns signal;
    a complete miss still earns 0.1 (MedReasoner's floor, which keeps a group's advantages from all being equal)."""
    x = min(max(float(value), 0.0), 1.0)
    return 0.1 + 0.9 * math.log(1.0 + k * x) / math.log(1.0 + k)


def penalized(reward: float, factors: Sequence[float]) -> float:
    """Scale ``PENALTY_SHARE`` of ``reward`` by the mean of the validity ``factors`` (each 1.0 or 0.5)."""
    mean = sum(factors) / len(factors) if factors else 1.0
    return min(max((1.0 - PENALTY_SHARE) * reward + PENALTY_SHARE * reward * mean, 0.0), 1.0)


# ------------------------------------------------------------------------------------------------------- format
def format_reward(text: str) -> float:
    """Mean of a think score and an answer score, each in [0, 1] (MedReasoner's levels).

    think: 1.0 for a ``<think>`` block with text, 0.2 for an empty one, 0.0 for none. answer: 0.0 without an
    ``<answer>`` block; 0.2 when the runtime's parser cannot read it; 0.4 when it reads but gives neither a box nor
    two distinct points; 0.6 with one of the two; 1.0 with both.
    """
    from ..reasoning.answer import ReasonerOutputError
    from ..reasoning.parser import parse_answer

    think = _THINK_BLOCK.search(text)
    think_score = 0.0 if think is None else (1.0 if think.group(1).strip() else 0.2)
    block = _ANSWER_BLOCK.search(text)
    if block is None:
        return think_score / 2.0
    try:
        parsed = parse_answer(f"<answer>{block.group(1)}</answer>")
    except ReasonerOutputError:
        return (think_score + 0.2) / 2.0
    target = parsed.targets[0] if parsed.targets else None
    has_box = target is not None and target.bbox is not None
    has_points = target is not None and len(set(target.points)) >= 2
    answer_score = 1.0 if has_box and has_points else 0.6 if has_box or has_points else 0.4
    return (think_score + answer_score) / 2.0


# ---------------------------------------------------------------------------------------------------------- box
def _area(box: Box) -> float:
    """Area of an inclusive voxel box (corners are the first and last voxel, so one voxel has area 1)."""
    return max(0.0, box[2] - box[0] + 1.0) * max(0.0, box[3] - box[1] + 1.0)


def _inside(point: Point, box: Box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def inclusive_box_iou(a: Box, b: Box) -> float:
    """IoU of two inclusive voxel boxes (``evaluation.metrics.box_iou`` with ``inclusive=True``)."""
    from ..evaluation.metrics import box_iou

    return float(box_iou(a, b, inclusive=True))


def box_reward(pred_box: Box | None, truth_box: Box, truth_points: Sequence[Point] | None = None) -> float:
    """Smoothed IoU of the predicted box with the truth's, penalised when a true point lies outside the predicted
    box (each point checked, as MedReasoner does) or when the predicted area is outside 0.5-2x the truth's.

    No predicted box scores 0.0. Boxes are inclusive voxel boxes ``(u0, v0, u1, v1)`` on the key slice.
    """
    if pred_box is None:
        return 0.0
    factors = [1.0 if 0.5 * _area(truth_box) < _area(pred_box) < 2.0 * _area(truth_box) else PENALTY_FACTOR]
    position = 1.0
    for point in truth_points or ():
        position *= 1.0 if _inside(point, pred_box) else PENALTY_FACTOR
    factors.append(position)
    return penalized(smooth_log(inclusive_box_iou(pred_box, truth_box)), factors)


# ------------------------------------------------------------------------------------------------------- points
def points_reward(pred_points: Sequence[Point], truth_points: Sequence[Point], truth_box: Box) -> float:
    """Smoothed Dice of the discs the two point pairs span (MedReasoner's pDice as a Dice), penalised when a
    predicted point lies outside the true box or the two predicted points are closer than 10 pixels.

    Fewer than two predicted (foreground) points score 0.0; only the first two count, as in ``eval``.
    """
    if len(pred_points) < 2 or len(truth_points) < 2:
        return 0.0
    pair = [tuple(map(float, p)) for p in pred_points[:2]]
    truth = [tuple(map(float, p)) for p in truth_points[:2]]
    position = 1.0
    for point in pair:
        position *= 1.0 if _inside((point[0], point[1]), truth_box) else PENALTY_FACTOR
    spread = 1.0 if math.dist(pair[0], pair[1]) >= MIN_POINT_SPREAD_PX else PENALTY_FACTOR
    return penalized(smooth_log(point_pair_dice(pair, truth)), [position, spread])


# ------------------------------------------------------------------------------------------------------ 3D slice
def key_slice_reward(chosen: int | None, truth: np.ndarray) -> float:
    """How good a key slice ``chosen`` is for the 3D ``truth`` (K, J, I): 0.0 outside the structure, else the
    structure's area on that slice over its largest slice's area (1.0 on the largest slice)."""
    truth = np.asarray(truth, dtype=bool)
    if truth.ndim != 3 or not truth.any():
        raise InputError("the key-slice reward needs a non-empty 3D reference mask (K, J, I).")
    if chosen is None or not 0 <= chosen < truth.shape[0]:
        return 0.0
    areas = truth.reshape(truth.shape[0], -1).sum(axis=1)
    return float(areas[chosen] / areas.max())


# -------------------------------------------------------------------------------------------------- combination
@dataclass(frozen=True)
class RewardWeights:
    """The weight of each component in the total (``total = Σ w c / Σ w`` over components with w > 0).

    Defaults: the mask Dice (what users care about) carries most; format keeps the answer readable; box and
    points give a denser signal while the mask is still poor. ``key_slice`` applies to 3D samples only.
    """

    format: float = 0.2
    box: float = 0.2
    points: float = 0.1
    mask: float = 0.5
    key_slice: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InputError(f"reward weight '{f.name}' must be a finite number >= 0, got {value!r}.")
        if sum(getattr(self, f.name) for f in fields(self)) <= 0:
            raise InputError("at least one reward weight must be above 0.")

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> RewardWeights:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown reward component(s) {', '.join(unknown)}: use {', '.join(sorted(known))}.")
        return cls(**{k: float(v) for k, v in data.items()})  # type: ignore[arg-type]  # checked in __post_init__

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def total(self, components: Mapping[str, float]) -> float:
        """Weighted mean of the components present (a component absent, e.g. key_slice on 2D, is left out)."""
        weights = self.to_dict()
        used = {k: w for k, w in weights.items() if w > 0 and k in components}
        if not used:
            return 0.0
        return sum(w * components[k] for k, w in used.items()) / sum(used.values())
