"""The ``(done, total)`` that propagation reports: ``total`` is the slices the structure can span, not the volume's.

Why: a bar counting to the volume's 189 slices with a 15-minute ETA, stopping at 38, misleads twice (how long, and
whether it finished). The structure's span is unknown until each direction stops, so ``total`` is an estimate that
becomes exact: the slices visited, plus per direction still running the slices it can still span, expected from
the key mask's in-plane size (a structure spans about as far through the slices as it is wide on its key slice; 3/4
of that width per side) and bounded by the room left before the volume's end and by the slice budget. Past the
estimate, a running direction counts one slice more than it has done; when a direction stops, its part drops out,
so the last report has ``done == total``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_SIDE_FRACTION = 0.75  # expected span per side, as a fraction of the key mask's in-plane width


class SpanProgress:
    """Counts visited slices per direction ("up", "down") and reports ``(done, total)`` to ``callback``."""

    def __init__(
        self,
        callback: Callable[[int, int], None] | None,
        key_slice: int,
        n_slices: int,
        budget: int,
        expected_per_side: int,
    ) -> None:
        self.callback = callback
        self.budget = budget
        self.expected = max(int(expected_per_side), 1)
        self.room = {"up": n_slices - 1 - key_slice, "down": key_slice}
        self.done = {"up": 0, "down": 0}
        self.running = {"up", "down"}
        self.visited = 1  # the key slice

    @staticmethod
    def expected_side(key_mask: np.ndarray, spacing: tuple[float, float, float]) -> int:
        """Slices expected on each side of the key slice, from the key mask's width in mm and the slice spacing."""
        rows = np.flatnonzero(key_mask.any(axis=1))
        cols = np.flatnonzero(key_mask.any(axis=0))
        if rows.size == 0:
            return 1
        si, sj, sk = (abs(float(s)) or 1.0 for s in spacing)
        width_mm = max((cols[-1] - cols[0] + 1) * si, (rows[-1] - rows[0] + 1) * sj)
        return max(1, math.ceil(_SIDE_FRACTION * width_mm / sk))

    def total(self) -> int:
        ahead = 0
        for side in self.running:
            left = self.room[side] - self.done[side]
            ahead += max(0, min(left, max(self.expected - self.done[side], 1)))
        return max(self.visited, min(self.visited + ahead, self.budget))

    def report(self) -> None:
        if self.callback is not None:
            self.callback(self.visited, self.total())

    def advance(self, side: str, slices: int) -> None:
        """``slices`` more visited going ``side`` (one, or a skipped run with its far slice)."""
        self.visited += slices
        self.done[side] += slices
        self.report()

    def stop(self, side: str) -> None:
        """Propagation ended going ``side``: what it could still have spanned drops out of the total."""
        self.running.discard(side)
        self.report()
