"""Prompts taken from the truth: the oracle's box, and the simulated user's first box (``interactive.py``)."""

from __future__ import annotations

import numpy as np


def truth_prompt(truth: np.ndarray):
    """The oracle prompt: the truth's bounding box (inclusive voxel indices) on its largest axial slice."""
    from ..pipeline import VoxelPrompt

    areas = truth.reshape(truth.shape[0], -1).sum(axis=1)
    k = int(np.argmax(areas))
    jj, ii = np.nonzero(truth[k])
    return VoxelPrompt(k=k, box=(int(ii.min()), int(jj.min()), int(ii.max()), int(jj.max())))
