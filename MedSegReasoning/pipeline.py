"""One target, from a prompt in voxel indices to a 3D mask: the step the CLI, the dialogue and the server share.

Prompts arrive in the volume's own voxel indices (i column, j row, k slice; box corners inclusive), whoever
made them: a user on the command line, a reasoner after its coordinate conversion, a click in Slicer. They
are checked against the volume here, once, so every caller gets the same clear error for a box outside the
volume or on an empty region.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .propagation import (
    DEFAULT_PROPAGATION,
    ProgressCallback,
    PropagationConfig,
    PropagationResult,
    propagate,
    segment_slice,
)
from .segmentation.base import Prompt2D, Segmenter
from .volume.core import Volume
from .volume.windowing import Window, render_slice


@dataclass(frozen=True)
class VoxelPrompt:
    """A prompt on slice ``k``: ``box`` is ``(i0, j0, i1, j1)`` inclusive; ``points`` are ``(i, j)`` with labels."""

    k: int
    box: tuple[int, int, int, int] | None = None
    points: tuple[tuple[int, int], ...] = ()
    labels: tuple[int, ...] = ()

    def to_prompt2d(self) -> Prompt2D:
        """The same prompt in the pixel coordinates of slice ``k`` (x = i, y = j), as the segmenter takes it."""
        return Prompt2D(
            box=tuple(float(v) for v in self.box) if self.box else None,  # type: ignore[arg-type]
            points=tuple((float(i), float(j)) for i, j in self.points),
            labels=tuple(self.labels),
        )

    def to_dict(self) -> dict:
        return {
            "slice": self.k,
            "box": list(self.box) if self.box else None,
            "points": [[i, j, self.k, lab] for (i, j), lab in zip(self.points, self.labels, strict=True)],
        }


@dataclass
class TargetResult:
    """A segmented target: its 3D mask on the volume's grid plus what a reviewer needs to trust it."""

    value: int
    label: str
    prompt: VoxelPrompt
    mask: np.ndarray  # bool [k, j, i]
    score: float
    propagation: PropagationResult | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())


def check_prompt(volume: Volume, prompt: VoxelPrompt, window: Window | None = None) -> None:
    """Refuse prompts that do not fit the volume, with the volume's valid ranges in the message.

    With a ``window``, also refuse a box over a region that is uniform in that window (nothing to segment).
    Callers run this before loading a model, so a wrong prompt costs nothing.
    """
    ni, nj, nk = volume.size_ijk
    if not 0 <= prompt.k < nk:
        raise InputError(f"slice K={prompt.k} does not exist: this volume has slices 0 to {nk - 1}.")
    if prompt.box is not None:
        i0, j0, i1, j1 = prompt.box
        if i0 > i1 or j0 > j1:
            raise InputError(f"the box {prompt.box} is inverted: give it as I0,J0,I1,J1 with I0 <= I1 and J0 <= J1.")
        if i0 < 0 or j0 < 0 or i1 >= ni or j1 >= nj:
            raise InputError(
                f"the box {prompt.box} lies outside the slice: I must be within 0..{ni - 1} and J within 0..{nj - 1}."
            )
    for i, j in prompt.points:
        if not (0 <= i < ni and 0 <= j < nj):
            raise InputError(
                f"the point ({i}, {j}, {prompt.k}) lies outside the slice: I must be within 0..{ni - 1} "
                f"and J within 0..{nj - 1}."
            )
    if prompt.labels and not any(lab == 1 for lab in prompt.labels) and prompt.box is None:
        raise InputError("the prompt has only background points: add a box or at least one foreground point.")
    if window is not None:
        _check_region_has_content(render_slice(volume, prompt.k, window), prompt)


def _check_region_has_content(image: np.ndarray, prompt: VoxelPrompt) -> None:
    """A box over uniform background (air, padding) cannot contain a structure: say so instead of guessing."""
    if prompt.box is None:
        return
    i0, j0, i1, j1 = prompt.box
    region = image[j0 : j1 + 1, i0 : i1 + 1, 0]
    if int(region.max()) - int(region.min()) == 0:
        raise InputError(
            f"the box {prompt.box} on slice {prompt.k} covers a uniform region (no image content in this window): "
            "place the box on the structure, or choose another --window."
        )


def segment_target(
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    prompt: VoxelPrompt,
    *,
    value: int = 1,
    label: str = "Segment 1",
    propagate_3d: bool = True,
    config: PropagationConfig = DEFAULT_PROPAGATION,
    progress: ProgressCallback | None = None,
) -> TargetResult:
    """Segment the key slice from ``prompt`` and, unless told not to, propagate it through the volume."""
    check_prompt(volume, prompt, window)
    t0 = time.perf_counter()
    prediction = segment_slice(
        volume,
        segmenter,
        window,
        prompt.k,
        prompt.to_prompt2d(),
    )
    t1 = time.perf_counter()
    if not prediction.mask.any():
        raise InputError(
            f"the segmenter found nothing for the prompt on slice {prompt.k}: check that the box or points lie on "
            "the structure (indices are I column, J row, K slice, 0-based)."
        )
    mask = np.zeros(volume.shape, dtype=bool)
    mask[prompt.k] = prediction.mask
    result = TargetResult(value, label, prompt, mask, prediction.score, None, {"segment_s": t1 - t0})
    if propagate_3d:
        result.propagation = propagate(volume, segmenter, window, prompt.k, prediction.mask, config, progress)
        result.mask = result.propagation.mask
        result.timings["propagate_s"] = time.perf_counter() - t1
    return result
