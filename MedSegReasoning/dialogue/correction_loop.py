"""Correct a candidate mask that failed its judgment (``judgment.py``): retry with corrected prompts, keep the best.

On failure the caller's ``segment`` callable is asked again with corrected prompts (tighter box with negative
points outside, or a larger box for an empty mask; then the same without propagation), up to a bound; an optional
``ask_again`` hook lets the reasoner propose a new prompt given the reasons. An optional ``propose`` hook
(``reasoner_correction.reasoner_proposals``) then shows the reasoner the kept mask's outline on its worst slices and
applies the box or erase it proposes through the user's refine step; the corrected mask replaces the kept one only
when it is better (``reasoner_correction.decide``), and its judgment carries the proposal either way. The best
attempt is kept, and when none passed, the outcome is *uncertain* and the findings say so. Every judgment is
returned for the round record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..pipeline import VoxelPrompt
from ..volume.core import plane_shape
from ..wire.errors import InputError
from .judgment import Candidate, Judgment
from .reasoner_correction import STRATEGY, ProposalFn, decide

SegmentFn = Callable[[VoxelPrompt, bool, str], Candidate]
"""``(prompt, propagate, strategy) -> Candidate``: the caller's segmenter path (may raise InputError)."""
AskAgainFn = Callable[[list[str]], VoxelPrompt | None]
"""Given the reasons the mask failed, a new prompt from the reasoner (or None): the hook for reasoner re-asks."""
JudgeFn = Callable[[Candidate, int], Judgment]


@dataclass
class Outcome:
    """The kept attempt, its judgment, and every judgment made on the way."""

    best: Candidate
    best_judgment: Judgment
    judgments: list[Judgment]

    @property
    def accepted(self) -> bool:
        return self.best_judgment.accepted

    @property
    def uncertain(self) -> bool:
        return not self.accepted

    def uncertainty(self) -> list[str]:
        """Plain reasons for the findings text; empty when the kept attempt passed."""
        if self.accepted:
            return []
        n = len(self.judgments)
        return [f"no attempt passed judgment ({n} tried); kept attempt {self.best_judgment.attempt}"] + [
            r for r in self.best_judgment.reasons()
        ]


def correction_prompts(
    prompt: VoxelPrompt, failed: Judgment, shape: tuple[int, int, int]
) -> list[tuple[str, VoxelPrompt, bool]]:
    """Corrected prompts to try, best first: ``(strategy, prompt, propagate)``.

    Empty mask: the box probably missed the structure, so grow it and add a foreground point. Anything else (leak,
    too big, wrong relation, low score): a tighter box, a foreground point at its centre and background points just
    outside the original box; then the same on the key slice alone, which cannot run away.
    """
    _, nj, ni = plane_shape(shape, prompt.orientation)  # (n_v, n_u) of the prompt's plane: (j, i) when axial
    names = {c.name for c in failed.failures}
    fg = [p for p, lab in zip(prompt.points, prompt.labels, strict=True) if lab == 1]
    if prompt.box is None:
        return [("key slice only", prompt, False)] if failed.propagated else []
    i0, j0, i1, j1 = prompt.box
    centre = ((i0 + i1) // 2, (j0 + j1) // 2)
    if "empty" in names:
        box = _grow(prompt.box, 0.25, ni, nj)
        points = tuple(fg) or (centre,)
        grown = replace(prompt, box=box, points=points, labels=(1,) * len(points))
        return [
            ("larger box and a foreground point", grown, failed.propagated),
            ("larger box, key slice only", grown, False),
        ]
    box = _shrink(prompt.box, 0.15)
    negatives = _outside_points(prompt.box, ni, nj, margin=2)
    points = (*(fg or [centre]), *negatives)
    labels = (1,) * len(fg or [centre]) + (0,) * len(negatives)
    tighter = replace(prompt, box=box, points=tuple(points), labels=labels)
    strategies = [("tighter box, negative points outside", tighter, failed.propagated)]
    if failed.propagated:
        strategies.append(("tighter box, key slice only", tighter, False))
    return strategies


def judge_and_correct(
    prompt: VoxelPrompt,
    segment: SegmentFn,
    judge_fn: JudgeFn,
    shape: tuple[int, int, int],
    *,
    propagate: bool = True,
    max_corrections: int = 2,
    ask_again: AskAgainFn | None = None,
    propose: ProposalFn | None = None,
) -> Outcome:
    """Segment, judge, and re-prompt while the judgment fails; keep the best attempt.

    A first prompt that the segmenter path refuses (InputError, e.g. a box outside the volume) raises: the caller
    records the target as failed. Corrected prompts that it refuses are skipped.
    """
    first = segment(prompt, propagate, "initial")
    judgments = [judge_fn(first, 1)]
    attempts = [(first, judgments[0])]
    corrections = correction_prompts(prompt, judgments[0], shape)[:max_corrections]
    for strategy, corrected, prop in corrections:
        if any(j.accepted for _, j in attempts):
            break
        try:
            cand = segment(corrected, prop, strategy)
        except InputError:
            continue
        j = judge_fn(cand, len(judgments) + 1)
        judgments.append(j)
        attempts.append((cand, j))
    if ask_again is not None and not any(j.accepted for _, j in attempts):
        reasons = _best(attempts)[1].reasons()
        new_prompt = ask_again(reasons)
        if new_prompt is not None:
            try:
                asked = segment(new_prompt, propagate, "asked the reasoner again")
                j = judge_fn(asked, len(judgments) + 1)
                judgments.append(j)
                attempts.append((asked, j))
            except InputError:
                pass
    best, best_j = _best(attempts)
    if propose is not None:
        proposed = propose(best, best_j)
        if proposed is not None:
            proposal_candidate, record = proposed
            j = replace(judge_fn(proposal_candidate, len(judgments) + 1), strategy=STRATEGY)  # also when refused
            if decide(best_j, j, record):
                best, best_j = proposal_candidate, j
            j.proposal = record
            judgments.append(j)
    return Outcome(best, best_j, judgments)


def _best(attempts: list[tuple[Candidate, Judgment]]) -> tuple[Candidate, Judgment]:
    """Passed beats failed; then fewer failed checks, a non-empty mask, a higher score; ties keep the earlier."""

    def key(item: tuple[int, tuple[Candidate, Judgment]]) -> tuple[bool, int, bool, float, int]:
        n, (c, j) = item
        score = float(c.score) if np.isfinite(c.score) else 0.0
        return (j.accepted, -len(j.failures), j.voxels > 0, score, -n)

    return max(enumerate(attempts), key=key)[1]


def _shrink(box: tuple[int, int, int, int], fraction: float) -> tuple[int, int, int, int]:
    i0, j0, i1, j1 = box
    di, dj = int(round((i1 - i0) * fraction)), int(round((j1 - j0) * fraction))
    if i1 - i0 - 2 * di < 2 or j1 - j0 - 2 * dj < 2:
        return box
    return (i0 + di, j0 + dj, i1 - di, j1 - dj)


def _grow(box: tuple[int, int, int, int], fraction: float, ni: int, nj: int) -> tuple[int, int, int, int]:
    i0, j0, i1, j1 = box
    di, dj = max(2, int(round((i1 - i0 + 1) * fraction))), max(2, int(round((j1 - j0 + 1) * fraction)))
    return (max(i0 - di, 0), max(j0 - dj, 0), min(i1 + di, ni - 1), min(j1 + dj, nj - 1))


def _outside_points(box: tuple[int, int, int, int], ni: int, nj: int, margin: int) -> list[tuple[int, int]]:
    """Midpoints of the box's four sides, ``margin`` pixels outside it; those that leave the slice are dropped."""
    i0, j0, i1, j1 = box
    ic, jc = (i0 + i1) // 2, (j0 + j1) // 2
    candidates = [(i0 - margin, jc), (i1 + margin, jc), (ic, j0 - margin), (ic, j1 + margin)]
    return [(i, j) for i, j in candidates if 0 <= i < ni and 0 <= j < nj]
