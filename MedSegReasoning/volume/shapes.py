"""Shape operations on masks that propagation and its callers share: shape-based interpolation between two 2D
masks, and the largest 3D component of a mask. Pure numpy/scipy: no segmenter, no volume."""

from __future__ import annotations

import numpy as np


def interpolate_masks(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """The shape a fraction ``t`` of the way from 2D mask ``a`` to ``b``: the zero level of their blended signed
    distance maps (shape-based interpolation), so a structure that moves or changes size between two segmented
    slices is interpolated as a shape, not as a cross-fade of two outlines."""
    from scipy import ndimage

    union = a | b
    if not union.any():
        return union
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    pad = 2
    r0, r1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, a.shape[0])
    c0, c1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, a.shape[1])
    crop = (slice(r0, r1), slice(c0, c1))

    def signed(m: np.ndarray) -> np.ndarray:
        return ndimage.distance_transform_edt(~m) - ndimage.distance_transform_edt(m)

    out = np.zeros_like(a, dtype=bool)
    out[crop] = (1.0 - t) * signed(a[crop]) + t * signed(b[crop]) < 0
    return out


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
