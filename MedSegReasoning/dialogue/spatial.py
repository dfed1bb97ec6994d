"""Where one mask lies relative to another, in millimetres: the one computation judgment and findings share.

Both work on ``CompactMask`` crops, never on full volumes, so a relation between two organs of a 512x512x300 CT
costs what their boxes cost. Physical positions use the volume's full index-to-LPS matrix (direction x spacing),
so anisotropic and oblique grids give true millimetres.

Distance between two separate masks is the smallest distance between their surface voxels, found with a k-d tree
(``scipy.spatial.cKDTree``). A Euclidean distance transform with ``sampling=spacing`` gives the same number, but it
must cover the union of both boxes: about 9 s for two abdominal organs at CT resolution on one core, against well
under a second for the tree on surface voxels only (the nearest pair of two disjoint sets always lies on their
surfaces). ``Testing/unit/test_dialogue_findings.py`` checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..volume.core import Geometry
from ..wire.masks import CompactMask

_FULL = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class SpatialRelation:
    """How mask A lies relative to mask B.

    ``kind``: ``same`` (Dice >= 0.9), ``inside`` (A mostly within B's filled outline), ``contains`` (B mostly within
    A's), ``overlaps``, ``adjacent`` (touching, or nearest voxels within ``adjacent_mm``), ``separate``.
    ``distance_mm`` is 0 for overlapping masks, else the distance between the nearest voxel centres.
    """

    kind: str
    overlap_of_a: float  # fraction of A's voxels inside B's filled outline
    overlap_of_b: float  # fraction of B's voxels inside A's filled outline
    dice: float
    distance_mm: float
    touching: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "overlap_of_a": round(self.overlap_of_a, 4),
            "overlap_of_b": round(self.overlap_of_b, 4),
            "dice": round(self.dice, 4),
            "distance_mm": round(self.distance_mm, 2),
            "touching": self.touching,
        }


@dataclass(frozen=True)
class RelationThresholds:
    """``inside_fraction``: a lesion at an organ's border bulges out, so "inside" asks for most, not all, of it."""

    inside_fraction: float = 0.6
    same_dice: float = 0.9
    adjacent_mm: float = 5.0


DEFAULT_RELATION = RelationThresholds()


def index_matrix(geometry: Geometry) -> np.ndarray:
    """3x3 matrix mapping ``(k, j, i)`` index offsets to LPS millimetres (the affine's linear part, reordered)."""
    m: np.ndarray = geometry.direction_matrix * np.asarray(geometry.spacing)[None, :]  # columns: i, j, k
    return m[:, ::-1]  # columns: k, j, i


def spatial_relation(
    a: CompactMask, b: CompactMask, geometry: Geometry, thresholds: RelationThresholds = DEFAULT_RELATION
) -> SpatialRelation:
    """The relation of A to B (both non-empty masks on the same grid)."""
    if a.box is None or b.box is None:
        raise ValueError("spatial relations need two non-empty masks")
    inter, filled_b_hits, filled_a_hits = _overlaps(a, b)
    na, nb = a.voxel_count, b.voxel_count
    dice = 2.0 * inter / (na + nb)
    of_a, of_b = filled_b_hits / na, filled_a_hits / nb
    if inter > 0:
        distance, touching = 0.0, True
    else:
        distance = surface_distance_mm(a, b, geometry)
        touching = _touching(a, b)
    if dice >= thresholds.same_dice:
        kind = "same"
    elif of_a >= thresholds.inside_fraction:
        kind = "inside"
    elif of_b >= thresholds.inside_fraction:
        kind = "contains"
    elif inter > 0:
        kind = "overlaps"
    elif touching or distance <= thresholds.adjacent_mm:
        kind = "adjacent"
    else:
        kind = "separate"
    return SpatialRelation(kind, of_a, of_b, dice, distance, touching)


def _overlaps(a: CompactMask, b: CompactMask) -> tuple[int, int, int]:
    """|A and B|, |A within filled B|, |B within filled A| on the intersection of the two boxes.

    "Filled" is per slice (2D hole filling on each axial slice of the intersection): a lesion that an organ's mask
    leaves out as a hole still lies inside the organ, as a reader judges it slice by slice; and only the slices
    the two masks share are filled, which keeps this cheap next to a liver-sized mask.
    """
    assert a.box is not None and b.box is not None
    lo = np.maximum(a.box[:3], b.box[:3])
    hi = np.minimum(a.box[3:], b.box[3:])
    if np.any(lo > hi):
        return 0, 0, 0
    wa, wb = _window(a, lo, hi), _window(b, lo, hi)
    return (
        int(np.count_nonzero(wa & wb)),
        int(np.count_nonzero(wa & _filled_window(b, lo, hi))),
        int(np.count_nonzero(wb & _filled_window(a, lo, hi))),
    )


def _filled_window(mask: CompactMask, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The mask with in-plane holes filled, on the inclusive window ``lo..hi`` (inside the mask's box)."""
    assert mask.box is not None
    slab = mask.crop()[lo[0] - mask.box[0] : hi[0] - mask.box[0] + 1]
    filled = np.stack([ndimage.binary_fill_holes(s) for s in slab])
    return filled[:, lo[1] - mask.box[1] : hi[1] - mask.box[1] + 1, lo[2] - mask.box[2] : hi[2] - mask.box[2] + 1]


def _window(mask: CompactMask, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The mask's voxels in the inclusive box ``lo..hi`` (zeros where the box leaves the mask's own box)."""
    assert mask.box is not None
    out = np.zeros(tuple(int(x) for x in hi - lo + 1), dtype=bool)
    src_lo = np.maximum(lo, mask.box[:3])
    src_hi = np.minimum(hi, mask.box[3:])
    if np.any(src_lo > src_hi):
        return out
    crop = mask.crop()
    src = tuple(slice(int(src_lo[d] - mask.box[d]), int(src_hi[d] - mask.box[d] + 1)) for d in range(3))
    dst = tuple(slice(int(src_lo[d] - lo[d]), int(src_hi[d] - lo[d] + 1)) for d in range(3))
    out[dst] = crop[src]
    return out


def _touching(a: CompactMask, b: CompactMask) -> bool:
    """True when a voxel of A is a 26-neighbour of a voxel of B (on the grid, whatever the spacing)."""
    assert a.box is not None and b.box is not None
    lo = np.maximum(np.asarray(a.box[:3]) - 1, 0)
    hi = np.asarray(a.box[3:]) + 1
    grown = ndimage.binary_dilation(_window(a, lo, hi), structure=_FULL)
    return bool(np.any(grown & _window(b, lo, hi)))


def _surface_points_mm(voxels: np.ndarray, offset: np.ndarray, geometry: Geometry) -> np.ndarray:
    """LPS positions (N x 3, mm) of the voxels of a bool block that have a 26-neighbour outside it."""
    interior = ndimage.binary_erosion(voxels, structure=_FULL, border_value=0)
    points: np.ndarray = (np.argwhere(voxels & ~interior) + offset) @ index_matrix(geometry).T
    return points


def surface_voxels_mm(mask: CompactMask, geometry: Geometry) -> np.ndarray:
    """LPS positions (N x 3, mm) of the mask's surface voxels."""
    assert mask.box is not None
    return _surface_points_mm(mask.crop(), np.asarray(mask.box[:3]), geometry)


def surface_distance_mm(a: CompactMask, b: CompactMask, geometry: Geometry) -> float:
    """Smallest distance between voxel centres of two disjoint masks, in mm (overlap is ``spatial_relation``'s job).

    Only the part of the larger mask near the smaller one is searched: the search window is the smaller mask's box
    grown by a margin, and the distance found in it is the true one as soon as it is within that margin (any
    closer voxel would lie inside the window); otherwise the margin grows to the distance found and it repeats.
    """
    if np.prod(a.crop_shape) > np.prod(b.crop_shape):
        a, b = b, a
    assert a.box is not None and b.box is not None
    tree = cKDTree(surface_voxels_mm(a, geometry))
    step = np.array([geometry.spacing[2], geometry.spacing[1], geometry.spacing[0]])  # mm per k, j, i
    a_lo, a_hi = np.asarray(a.box[:3]), np.asarray(a.box[3:])
    b_lo, b_hi = np.asarray(b.box[:3]), np.asarray(b.box[3:])
    gap = np.maximum(np.maximum(b_lo - a_hi, a_lo - b_hi), 0) * step
    margin = float(np.linalg.norm(gap)) + 2.0 * float(step.max())
    while True:
        reach = np.ceil(margin / step).astype(int)
        lo, hi = np.maximum(a_lo - reach, b_lo), np.minimum(a_hi + reach, b_hi)
        whole = bool(np.all(lo == b_lo) and np.all(hi == b_hi))
        block = _window(b, lo, hi) if np.all(lo <= hi) else np.zeros((0, 0, 0), dtype=bool)
        if block.any():
            distances, _ = tree.query(_surface_points_mm(block, lo, geometry), k=1)
            found = float(distances.min())
            if found <= margin or whole:
                return found
            margin = found
        else:
            margin *= 2.0
