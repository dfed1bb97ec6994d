"""Findings text: measured from the mask and the geometry, never written by a language model.

A reasoner may call a structure anything, and its numbers cannot be trusted; what the clinician reads next to an
entity is computed here: what it is (the coded name), its volume in mL, its key slice, its largest in-plane
diameter on that slice in mm, and where it lies relative to the entities the question referred to. When judgment
could not make a mask pass, the text says so first, in plain words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from ..terminology.codes import CodedTerminology
from ..volume.core import Geometry
from ..wire.masks import CompactMask
from .spatial import SpatialRelation, index_matrix

# the four corners of a pixel, as (dj, di) offsets from its centre
_CORNERS = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])


@dataclass(frozen=True)
class Measurements:
    """What findings report; all from the mask and the volume's geometry."""

    voxels: int
    volume_ml: float
    key_slice: int | None
    max_diameter_mm: float | None  # on the key slice, edge to edge
    slice_range: tuple[int, int] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "voxels": self.voxels,
            "volume_ml": self.volume_ml,
            "key_slice": self.key_slice,
            "max_diameter_mm": self.max_diameter_mm,
            "slice_range": list(self.slice_range) if self.slice_range else None,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Measurements:
        return Measurements(
            voxels=int(d["voxels"]),
            volume_ml=float(d["volume_ml"]),
            key_slice=d.get("key_slice"),
            max_diameter_mm=None if d.get("max_diameter_mm") is None else float(d["max_diameter_mm"]),
            slice_range=tuple(d["slice_range"]) if d.get("slice_range") else None,
        )


def voxel_volume_ml(geometry: Geometry) -> float:
    """One voxel's volume in mL; the determinant keeps it right on sheared grids too."""
    return abs(float(np.linalg.det(index_matrix(geometry)))) / 1000.0


def largest_slice(mask: CompactMask) -> int | None:
    """The slice where the mask is largest (ties: the one nearest the mask's middle)."""
    if mask.box is None:
        return None
    areas = mask.crop().sum(axis=(1, 2))
    if not areas.any():
        return None
    best = np.flatnonzero(areas == areas.max())
    middle = (len(areas) - 1) / 2.0
    return int(mask.box[0] + best[np.argmin(np.abs(best - middle))])


def slice_crop(mask: CompactMask, k: int) -> tuple[np.ndarray, int, int]:
    """The 2D crop of slice ``k`` and its (j0, i0) offset in the slice."""
    assert mask.box is not None
    return mask.crop()[k - mask.box[0]], mask.box[1], mask.box[2]


def max_inplane_diameter_mm(mask: CompactMask, k: int, geometry: Geometry) -> float | None:
    """Largest edge-to-edge distance across the mask on slice ``k``, in mm.

    Measured between pixel *corners* of the region's convex hull, as a caliper on the screen would be laid edge to
    edge (a 10-pixel-wide disk measures ten pixels, not nine), with the i and j axes scaled by their own spacing
    and direction.
    """
    if mask.box is None or not mask.box[0] <= k <= mask.box[3]:
        return None
    crop, j0, i0 = slice_crop(mask, k)
    idx = np.argwhere(crop & ~ndimage.binary_erosion(crop))  # the hull of the boundary is the hull of the region
    if idx.size == 0:
        return None
    corners = (idx[:, None, :] + _CORNERS[None, :, :]).reshape(-1, 2) + np.array([j0, i0])
    corners = np.unique(corners, axis=0)
    m = index_matrix(geometry)[:, 1:]  # columns j, i
    points = corners @ m.T
    if len(points) > 8:
        hull = ConvexHull(corners)  # hull in index space: an affine map keeps hull vertices
        points = points[hull.vertices]
    d = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((d**2).sum(axis=2)).max())


def measure(mask: CompactMask, geometry: Geometry, key_slice: int | None = None) -> Measurements:
    """Volume, key slice, diameter and extent. ``key_slice`` is kept if the mask is there, else its largest slice."""
    n = mask.voxel_count
    if n == 0 or mask.box is None:
        return Measurements(0, 0.0, None, None, None)
    if key_slice is None or not mask.box[0] <= key_slice <= mask.box[3] or not slice_crop(mask, key_slice)[0].any():
        key_slice = largest_slice(mask)
    assert key_slice is not None
    return Measurements(
        voxels=n,
        volume_ml=n * voxel_volume_ml(geometry),
        key_slice=key_slice,
        max_diameter_mm=max_inplane_diameter_mm(mask, key_slice, geometry),
        slice_range=(mask.box[0], mask.box[3]),
    )


@dataclass(frozen=True)
class RelatedEntity:
    """An entity a finding is placed relative to."""

    entity_id: str
    name: str
    relation: SpatialRelation


def relation_phrase(rel: RelatedEntity) -> str:
    """One clause: "inside E1 (Liver)", "touching E2 (Left kidney)", "12.5 mm from E3 (Portal vein)"."""
    who = f"{rel.entity_id} ({rel.name})"
    r = rel.relation
    if r.kind == "same":
        return f"the same region as {who}"
    if r.kind == "inside":
        return f"inside {who}"
    if r.kind == "contains":
        return f"containing {who}"
    if r.kind == "overlaps":
        return f"overlapping {who} ({100 * r.overlap_of_a:.0f}% of it within)"
    if r.touching:
        return f"touching {who}"
    return f"{r.distance_mm:.1f} mm from {who} (nearest voxel centres)"


def findings_text(
    terminology: CodedTerminology,
    m: Measurements,
    related: Sequence[RelatedEntity] = (),
    uncertain: Sequence[str] = (),
) -> str:
    """The finding of one entity, e.g. "Left kidney: 152.4 mL; key slice 42; max in-plane diameter 61.0 mm; ...".

    ``uncertain`` holds the reasons judgment could not accept the mask; they come first, so nobody reads the
    numbers of a doubtful mask without the doubt.
    """
    parts = []
    if uncertain:
        parts.append("UNCERTAIN: " + "; ".join(uncertain) + ".")
    name = terminology.display_name
    if m.voxels == 0:
        return " ".join([*parts, f"{name}: empty mask."])
    body = [f"{m.volume_ml:.1f} mL"]
    if m.key_slice is not None:
        body.append(f"key slice {m.key_slice}")
    if m.max_diameter_mm is not None:
        body.append(f"max in-plane diameter {m.max_diameter_mm:.1f} mm on the key slice")
    if m.slice_range is not None:
        body.append(f"slices {m.slice_range[0]}-{m.slice_range[1]}")
    text = f"{name}: " + "; ".join(body)
    if related:
        text += "; " + "; ".join(relation_phrase(r) for r in related)
    parts.append(text + ".")
    return " ".join(parts)
