"""Judge a candidate mask before it becomes an entity, and correct it when it fails.

Why: a bad mask poisons every later round that refers to it ("the vessel next to E1"), and a SAM-family model
almost always returns *something*. So each candidate is checked against what can be known without ground truth:

- ``empty``: the segmenter found nothing;
- ``score``: the segmenter's own quality estimate (predicted IoU) on the key slice;
- ``size``: volume in mL against the plausible range of its label (``volume_ml`` in ``data/terminology.json``;
  unknown labels get no size check; only the upper bound applies when the mask touches the edge of the scanned
  volume, because the structure may continue outside it; skipped where the user asked for the key slice only
  (``Expectation.whole_structure``), since one slice of a liver is not a liver);
- ``connected``: one 3D piece (two for a "right and left" structure);
- ``propagation``: it ran away: propagation stopped at a leak, or stopped after one slice although the mask is
  much wider than a slice is thick;
- ``extent``: it fills most of the volume, or nearly a whole slice;
- ``relation``: consistency with the entity the question referred to (inside / contains / adjacent / disjoint),
  and never a copy of it.

Correction when a candidate fails is ``correction_loop.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..pipeline import VoxelPrompt
from ..terminology.codes import TermType
from ..volume.core import Geometry, plane_array_axes, plane_shape
from ..wire.errors import InputError
from ..wire.masks import CompactMask
from .findings import max_inplane_diameter_mm, voxel_volume_ml
from .spatial import DEFAULT_RELATION, RelationThresholds, spatial_relation

PASS, FAIL, SKIP = "pass", "fail", "skip"
RELATIONS = ("inside", "contains", "adjacent", "disjoint")
BILATERAL = "51440002"


@dataclass(frozen=True)
class Check:
    """One test of a candidate: ``status`` pass / fail / skip, the measured ``value`` and what was ``expected``."""

    name: str
    status: str
    value: float | int | str | None
    expected: str
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "value": self.value,
            "expected": self.expected,
            "detail": self.detail,
            "data": self.data,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Check:
        return Check(d["name"], d["status"], d["value"], d["expected"], d.get("detail", ""), dict(d.get("data", {})))


@dataclass(frozen=True)
class Candidate:
    """One attempt's mask, before it is accepted: what judgment needs, without the full-volume array."""

    mask: CompactMask
    score: float
    prompt: VoxelPrompt
    propagated: bool
    strategy: str = "initial"
    stop_reasons: dict[str, Any] = field(default_factory=dict)
    segmented_slices: int = 1  # slices the segmenter ran on for this mask (key plane + propagation's visits)
    interpolated_slices: int = 0  # slices skip-and-interpolate filled without the segmenter


@dataclass(frozen=True)
class Expectation:
    """What the label and the question imply about the mask."""

    term: TermType | None = None
    modifier: str | None = None  # laterality code value
    reference: CompactMask | None = None
    reference_id: str | None = None
    relation: str | None = None  # inside | contains | adjacent | disjoint | None
    # what was asked: the whole structure (propagated), or its key slice only (``--no-propagate``). Only a whole
    # structure is judged against the label's plausible volume; a correction's key-slice fallback is not "asked".
    whole_structure: bool = True

    def __post_init__(self) -> None:
        if self.relation is not None and self.relation not in RELATIONS:
            raise InputError(f"relation {self.relation!r} is not one of {', '.join(RELATIONS)}.")


@dataclass(frozen=True)
class JudgmentConfig:
    """Thresholds; generous on purpose: judgment catches gross failures, it does not grade quality."""

    min_score: float = 0.5
    max_volume_fraction: float = 0.5
    max_slice_fraction: float = 0.9
    # a mask on one slice only is suspicious when it is wider than this many slice thicknesses
    one_slice_width_factor: float = 2.0
    disjoint_max_fraction: float = 0.02
    adjacent_max_overlap: float = 0.1
    relation: RelationThresholds = DEFAULT_RELATION


DEFAULT_JUDGMENT = JudgmentConfig()


@dataclass
class Judgment:
    """The verdict on one attempt, as recorded in the round."""

    attempt: int
    strategy: str
    prompt: dict[str, Any]
    propagated: bool
    checks: list[Check]
    voxels: int
    volume_ml: float
    score: float | None  # None when the segmenter gave no finite estimate (keeps equality and JSON exact)
    proposal: dict[str, Any] | None = None  # a reasoner's correction this attempt judged (``reasoner_correction.py``)

    @property
    def accepted(self) -> bool:
        return not any(c.failed for c in self.checks)

    @property
    def verdict(self) -> str:
        return "accepted" if self.accepted else "rejected"

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.failures]

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "strategy": self.strategy,
            "prompt": self.prompt,
            "propagated": self.propagated,
            "verdict": self.verdict,
            "voxels": self.voxels,
            "volume_ml": self.volume_ml,
            "score": self.score,
            "checks": [c.to_dict() for c in self.checks],
            **({"proposal": self.proposal} if self.proposal is not None else {}),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Judgment:
        return Judgment(
            attempt=int(d["attempt"]),
            strategy=str(d["strategy"]),
            prompt=dict(d["prompt"]),
            propagated=bool(d["propagated"]),
            checks=[Check.from_dict(c) for c in d["checks"]],
            voxels=int(d["voxels"]),
            volume_ml=float(d["volume_ml"]),
            score=None if d.get("score") is None else float(d["score"]),
            proposal=None if d.get("proposal") is None else dict(d["proposal"]),
        )


# ---------------------------------------------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------------------------------------------
def judge(
    candidate: Candidate,
    geometry: Geometry,
    shape: tuple[int, int, int],
    expectation: Expectation = Expectation(),
    config: JudgmentConfig = DEFAULT_JUDGMENT,
    attempt: int = 1,
) -> Judgment:
    """Run every check on one candidate."""
    mask = candidate.mask
    voxels = mask.voxel_count
    volume_ml = voxels * voxel_volume_ml(geometry)
    if voxels == 0:
        checks = [Check("empty", FAIL, 0, "> 0 voxels", "the segmenter found nothing for this prompt")]
    else:
        checks = [
            _check_score(candidate, config),
            _check_size(mask, volume_ml, shape, expectation),
            _check_connected(mask, expectation),
            _check_propagation(candidate, geometry, shape, config),
            _check_extent(mask, shape, config),
            _check_relation(mask, geometry, expectation, config),
        ]
    return Judgment(
        attempt=attempt,
        strategy=candidate.strategy,
        prompt=candidate.prompt.to_dict(),
        propagated=candidate.propagated,
        checks=checks,
        voxels=voxels,
        volume_ml=volume_ml,
        score=float(candidate.score) if np.isfinite(candidate.score) else None,
    )


def _check_score(candidate: Candidate, config: JudgmentConfig) -> Check:
    s = float(candidate.score)
    expected = f">= {config.min_score}"
    if not np.isfinite(s):
        return Check("score", SKIP, None, expected, "the segmenter gave no quality estimate")
    if s < config.min_score:
        return Check("score", FAIL, round(s, 4), expected, f"the segmenter's own quality estimate is low ({s:.2f})")
    return Check("score", PASS, round(s, 4), expected)


def plausible_volume_ml(term: TermType | None, modifier: str | None) -> tuple[float, float] | None:
    """The plausible range for a label: ``volume_ml`` is for one structure; a paired one may hold both sides."""
    if term is None or term.volume_ml is None:
        return None
    lo, hi = term.volume_ml
    if term.takes_laterality and modifier == BILATERAL:
        return 2 * lo, 2 * hi
    if term.takes_laterality and modifier is None:
        return lo, 2 * hi
    return lo, hi


def touches_border(mask: CompactMask, shape: tuple[int, int, int]) -> bool:
    """True when the mask reaches the edge of the scanned volume (the structure may continue beyond it)."""
    assert mask.box is not None
    k0, j0, i0, k1, j1, i1 = mask.box
    return k0 == 0 or j0 == 0 or i0 == 0 or k1 == shape[0] - 1 or j1 == shape[1] - 1 or i1 == shape[2] - 1


def _check_size(mask: CompactMask, volume_ml: float, shape: tuple[int, int, int], e: Expectation) -> Check:
    bounds = plausible_volume_ml(e.term, e.modifier)
    value = round(volume_ml, 3)
    if bounds is None:
        return Check("size", SKIP, value, "no typical volume for this label", "no size check for this label")
    if not e.whole_structure:  # one slice was asked for: a cross-section's volume says nothing of the whole's
        lo, hi = bounds
        return Check(
            "size",
            SKIP,
            value,
            f"{lo:g}-{hi:g} mL (for a propagated 3D mask)",
            "key slice only (not propagated): the volume of one slice is not judged against the whole structure's",
        )
    lo, hi = bounds
    expected = f"{lo:g}-{hi:g} mL"
    assert e.term is not None
    name = e.term.code.meaning.lower()
    if volume_ml > hi:
        return Check("size", FAIL, value, expected, f"{volume_ml:.1f} mL is more than a {name} can plausibly hold")
    if volume_ml < lo:
        if touches_border(mask, shape):
            return Check(
                "size",
                PASS,
                value,
                expected,
                f"{volume_ml:.1f} mL is small for a {name}, but the mask reaches the edge of the scanned volume, "
                "so only the upper bound applies",
            )
        return Check("size", FAIL, value, expected, f"{volume_ml:.1f} mL is less than a {name} can plausibly hold")
    return Check("size", PASS, value, expected)


def _check_connected(mask: CompactMask, e: Expectation) -> Check:
    allowed = 2 if e.modifier == BILATERAL else 1
    _, count = ndimage.label(mask.crop(), structure=np.ones((3, 3, 3), dtype=bool))
    expected = f"<= {allowed} piece(s)"
    if count > allowed:
        return Check("connected", FAIL, int(count), expected, f"the mask falls apart into {count} pieces")
    return Check("connected", PASS, int(count), expected)


def _check_propagation(
    candidate: Candidate, geometry: Geometry, shape: tuple[int, int, int], config: JudgmentConfig
) -> Check:
    mask = candidate.mask
    assert mask.box is not None
    n_slices = mask.box[3] - mask.box[0] + 1  # along the propagation's direction: axial slices, or (below) planes
    orientation = candidate.prompt.orientation
    width, thickness = 0.0, float(geometry.spacing[2])
    if orientation != "axial":
        n_slices, width, thickness = _planes_and_width(mask, geometry, orientation)
    if not candidate.propagated:
        return Check("propagation", SKIP, n_slices, "propagated", "not propagated (key slice only, on purpose)")
    leaks = [f"{d}: {r}" for d, r in sorted(candidate.stop_reasons.items()) if "leak" in r]
    if leaks:
        return Check(
            "propagation",
            FAIL,
            n_slices,
            "stops where the structure ends",
            "propagation ran into a leak (" + "; ".join(leaks) + "), so the mask may have spread or been cut short",
            {"stop_reasons": dict(candidate.stop_reasons)},
        )
    if n_slices == 1 and plane_shape(shape, orientation)[0] > 1:
        if orientation == "axial":
            width = max_inplane_diameter_mm(mask, mask.box[0], geometry) or 0.0
        if width > config.one_slice_width_factor * thickness:
            plane = "" if orientation == "axial" else f"{orientation} "
            return Check(
                "propagation",
                FAIL,
                n_slices,
                "more than one slice",
                f"propagation stopped after one {plane}slice although the mask is {width:.1f} mm across "
                f"and {plane}slices are {thickness:g} mm apart",
                {"stop_reasons": dict(candidate.stop_reasons)},
            )
    return Check(
        "propagation",
        PASS,
        n_slices,
        "stops where the structure ends",
        "",
        {"stop_reasons": dict(candidate.stop_reasons)},
    )


def _planes_and_width(mask: CompactMask, geometry: Geometry, orientation: str) -> tuple[int, float, float]:
    """For a mask propagated along a coronal/sagittal normal: how many such planes it spans, its widest extent
    within them (bounding box, mm) and the spacing between the planes (mm)."""
    assert mask.box is not None
    normal, v_axis, u_axis = plane_array_axes(orientation)  # array axes of [k, j, i]
    extent = [mask.box[a + 3] - mask.box[a] + 1 for a in range(3)]
    spacing_of_axis = (geometry.spacing[2], geometry.spacing[1], geometry.spacing[0])  # array axis -> mm
    width = max(extent[v_axis] * spacing_of_axis[v_axis], extent[u_axis] * spacing_of_axis[u_axis])
    return extent[normal], float(width), float(spacing_of_axis[normal])


def _check_extent(mask: CompactMask, shape: tuple[int, int, int], config: JudgmentConfig) -> Check:
    total = float(np.prod(shape))
    fraction = mask.voxel_count / total
    expected = f"<= {config.max_volume_fraction:.0%} of the volume, <= {config.max_slice_fraction:.0%} of any slice"
    if fraction > config.max_volume_fraction:
        return Check("extent", FAIL, round(fraction, 4), expected, f"the mask fills {fraction:.0%} of the whole volume")
    assert mask.box is not None
    areas = mask.crop().sum(axis=(1, 2)) / float(shape[1] * shape[2])
    worst = int(np.argmax(areas))
    if areas[worst] > config.max_slice_fraction:
        return Check(
            "extent",
            FAIL,
            round(float(areas[worst]), 4),
            expected,
            f"the mask fills {areas[worst]:.0%} of slice {mask.box[0] + worst}",
        )
    return Check("extent", PASS, round(fraction, 4), expected)


def _check_relation(mask: CompactMask, geometry: Geometry, e: Expectation, config: JudgmentConfig) -> Check:
    if e.reference is None or e.reference.is_empty:
        return Check("relation", SKIP, None, "no referenced entity", "")
    rel = spatial_relation(mask, e.reference, geometry, config.relation)
    ref = e.reference_id or "the referenced entity"
    data = rel.to_dict()
    if rel.kind == "same":
        return Check(
            "relation", FAIL, rel.kind, e.relation or "a different structure", f"the mask is {ref} again", data
        )
    if e.relation is None:
        return Check("relation", PASS, rel.kind, "a different structure", "", data)
    ok = {
        "inside": rel.kind == "inside",
        "contains": rel.kind == "contains",
        "adjacent": rel.kind == "adjacent"
        or (rel.kind == "overlaps" and max(rel.overlap_of_a, rel.overlap_of_b) <= config.adjacent_max_overlap),
        "disjoint": rel.overlap_of_a <= config.disjoint_max_fraction
        and rel.overlap_of_b <= config.disjoint_max_fraction,
    }[e.relation]
    if ok:
        return Check("relation", PASS, rel.kind, e.relation, "", data)
    detail = f"the question asks for a structure {e.relation} {ref}, but the mask is {rel.kind}"
    if rel.kind in ("separate", "adjacent"):
        detail += f" ({rel.distance_mm:.1f} mm away)"
    return Check("relation", FAIL, rel.kind, e.relation, detail, data)
