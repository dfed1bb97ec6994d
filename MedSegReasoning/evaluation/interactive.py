"""The simulated user of interactive 3D segmentation, as the CVPR 2025 challenge "Foundation models for interactive
3D biomedical image segmentation" defines it, run through the engine's own steps.

1. One box on the structure: the reference's bounding box on its largest axial slice (``truth.truth_prompt``),
   segmented and propagated by the dialogue's ``segment_candidate``, the step every round uses.
2. Up to ``corrections`` corrections, each on the axial slice where the current 3D error is largest (the most
   wrong voxels): where the reference has voxels there, its box on that slice (an *add*); where it has none (a
   leak), an *erase* box around the wrong voxels. Each goes through ``correction.correct_mask``, the step behind
   every front end's refine. Clicks are not simulated: LiteMedSAM, the default segmenter, is box-trained and does
   not take points with a box.

After every interaction 3D Dice and NSD are recorded. ``DSC_AUC`` and ``NSD_AUC`` are the areas under those
per-interaction curves (trapezoids over interaction 0..N, unit steps), as the challenge scores them; a user who
has nothing left to correct keeps the last value, so every structure's curve has the same length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..correction import Correction, correct_mask
from ..pipeline import VoxelPrompt
from ..propagation import DEFAULT_PROPAGATION, PropagationConfig
from ..segmentation.base import Segmenter
from ..volume.core import Volume
from ..volume.windowing import Window
from ..wire.errors import InputError
from .metrics import dice, normalized_surface_dice

DEFAULT_CORRECTIONS = 5
NSD_TOLERANCE_MM = 2.0


@dataclass
class Interaction:
    """One step of the simulated user: ``kind`` is ``box`` (the first), ``add`` or ``erase``."""

    kind: str
    slice: int
    dice: float
    nsd: float
    encoder_calls: int
    seconds: float
    changed_slices: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class InteractiveResult:
    """The per-interaction curve of one structure, and the key slice's own 2D Dice after the box."""

    key_slice: int
    key_slice_dice: float
    interactions: list[Interaction] = field(default_factory=list)
    stop_reasons: dict[str, str] = field(default_factory=dict)
    mask: np.ndarray | None = None

    @property
    def initial_dice(self) -> float:
        return self.interactions[0].dice

    @property
    def final_dice(self) -> float:
        return self.interactions[-1].dice

    def curve(self, metric: str, length: int) -> list[float]:
        values = [getattr(i, metric) for i in self.interactions]
        return values + [values[-1]] * (length - len(values))

    def auc(self, metric: str, length: int) -> float:
        return float(np.trapezoid(self.curve(metric, length)))

    def to_dict(self, corrections: int = DEFAULT_CORRECTIONS) -> dict:
        n = corrections + 1
        return {
            "key_slice": self.key_slice,
            "key_slice_dice": self.key_slice_dice,
            "initial_dice": self.initial_dice,
            "final_dice": self.final_dice,
            "initial_nsd": self.interactions[0].nsd,
            "final_nsd": self.interactions[-1].nsd,
            "dsc_auc": self.auc("dice", n),
            "nsd_auc": self.auc("nsd", n),
            "dice_curve": self.curve("dice", n),
            "nsd_curve": self.curve("nsd", n),
            "encoder_calls": sum(i.encoder_calls for i in self.interactions),
            "seconds": sum(i.seconds for i in self.interactions),
            "interactions": [i.to_dict() for i in self.interactions],
            "stop_reasons": self.stop_reasons,
        }


def next_correction(pred: np.ndarray, truth: np.ndarray) -> Correction | None:
    """The simulated user's next correction, or ``None`` when the mask equals the reference."""
    wrong = (pred ^ truth).reshape(pred.shape[0], -1).sum(axis=1)
    if not wrong.any():
        return None
    k = int(np.argmax(wrong))
    if truth[k].any():
        return Correction(VoxelPrompt(k=k, box=_box(truth[k])))
    return Correction(VoxelPrompt(k=k, box=_box(pred[k] & ~truth[k])), erase=True)


def run_interactive(
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    truth: np.ndarray,
    *,
    corrections: int = DEFAULT_CORRECTIONS,
    config: PropagationConfig = DEFAULT_PROPAGATION,
    tolerance_mm: float = NSD_TOLERANCE_MM,
) -> InteractiveResult:
    """The box, then up to ``corrections`` corrections, scored against ``truth`` (bool ``[k, j, i]``) after each."""
    from ..dialogue import segment_candidate
    from .truth import truth_prompt

    prompt = truth_prompt(truth)
    spacing = tuple(reversed(volume.geometry.spacing))
    calls0, t0 = segmenter.stats.encoder_calls, time.perf_counter()
    candidate = segment_candidate(volume, segmenter, window, prompt, True, "interactive", config)
    mask = candidate.mask.to_dense(volume.shape)
    key_dice = dice(mask[prompt.k], truth[prompt.k]) if mask.any() else 0.0
    result = InteractiveResult(prompt.k, key_dice, stop_reasons=dict(candidate.stop_reasons or {}))
    result.interactions.append(
        _scored("box", prompt.k, mask, truth, spacing, tolerance_mm, segmenter, calls0, t0, int(mask.any()))
    )
    locked: set[int] = {prompt.k}
    for _ in range(corrections):
        correction = next_correction(mask, truth)
        if correction is None:
            break
        calls0, t0 = segmenter.stats.encoder_calls, time.perf_counter()
        kind = "erase" if correction.erase else "add"
        try:
            outcome = correct_mask(
                volume, segmenter, window, mask, correction, key_slice=prompt.k, config=config, locked=locked
            )
        except InputError:  # the segmenter found nothing in the box: the user's click changed nothing
            changed = 0
        else:
            mask, changed = outcome.mask, outcome.changed
        locked.add(correction.prompt.k)
        result.interactions.append(
            _scored(kind, correction.prompt.k, mask, truth, spacing, tolerance_mm, segmenter, calls0, t0, changed)
        )
    result.mask = mask
    return result


def _scored(
    kind: str,
    k: int,
    mask: np.ndarray,
    truth: np.ndarray,
    spacing: tuple[float, ...],
    tolerance_mm: float,
    segmenter: Segmenter,
    calls0: int,
    t0: float,
    changed: int,
) -> Interaction:
    seconds = time.perf_counter() - t0
    return Interaction(
        kind,
        k,
        dice(mask, truth),
        normalized_surface_dice(mask, truth, spacing, tolerance_mm),
        segmenter.stats.encoder_calls - calls0,
        seconds,
        changed,
    )


def _box(mask2d: np.ndarray) -> tuple[int, int, int, int]:
    jj, ii = np.nonzero(mask2d)
    return int(ii.min()), int(jj.min()), int(ii.max()), int(jj.max())
