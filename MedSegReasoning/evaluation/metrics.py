"""Scores for one sample, computed the way the reasoning-segmentation literature computes them.

Every function here takes plain arrays or coordinate lists and returns a Python float, so the runner can
write the numbers straight into a JSON line. The formulas, conventions (empty masks, box corners) and
sources are written out in docs/evaluation.md; the short version:

- mask Dice ``2|P∩T| / (|P|+|T|)`` and IoU ``|P∩T| / |P∪T|``; an empty prediction on an empty truth scores
  1.0 (the convention of LISA / Seg-Zero's evaluation: "no object" correctly predicted). Dice on 3D arrays
  is volumetric Dice. gIoU (mean of per-sample IoU) and cIoU (Σ intersection / Σ union) are dataset-level
  reductions of :func:`overlap_counts`, done in ``report.summarize``;
- box IoU on continuous corner coordinates ``[x1, y1, x2, y2]``, area ``(x2-x1)(y2-y1)``, as MedReasoner's
  ``eval/utils.py::compute_iou`` (and Seg-Zero) compute it;
- pDice: MedReasoner's point-pair score, the overlap of the disc whose diameter is the predicted point pair
  with the disc whose diameter is the true pair, computed analytically (circle-circle intersection area);
- NSD: normalized surface Dice with a tolerance in mm, MONAI's voxel-count definition.

Only numpy is needed, plus scipy's Euclidean distance transform for NSD; nothing here imports torch.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from MedSegReasoning.wire.errors import InputError

__all__ = [
    "box_iou",
    "ciou",
    "dice",
    "dice_from_counts",
    "iou",
    "iou_from_counts",
    "normalized_surface_dice",
    "overlap_counts",
    "peak_rss_mb",
    "point_pair_dice",
]


# ---------------------------------------------------------------------------------------------- masks
def _as_mask(array: object, what: str) -> np.ndarray:
    """A boolean view of a mask; refuses label maps, whose non-zero labels would silently all count as one."""
    arr = np.asarray(array)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf":
        raise InputError(f"The {what} mask must be a boolean or 0/1 numeric array, got dtype {arr.dtype}.")
    stray = (arr != 0) & (arr != 1)
    if np.any(stray):
        values = ", ".join(str(v) for v in np.unique(arr[stray])[:5])
        raise InputError(
            f"The {what} mask must be binary (bool or 0/1) but holds other values ({values}): "
            "select one structure first, e.g. labels == k."
        )
    return arr != 0


def _mask_pair(pred: object, truth: object) -> tuple[np.ndarray, np.ndarray]:
    p = _as_mask(pred, "predicted")
    t = _as_mask(truth, "truth")
    if p.shape != t.shape:
        raise InputError(
            f"The predicted mask has shape {tuple(p.shape)} but the truth mask has shape {tuple(t.shape)}: "
            "masks are compared voxel by voxel, so resample or crop the prediction onto the truth's grid first."
        )
    if p.ndim == 0:
        raise InputError("A mask must be an array with at least one axis, got a scalar.")
    return p, t


def overlap_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """``(intersection, union)`` voxel counts of two boolean masks of the same shape.

    These two integers are all a dataset-level cIoU needs, so the runner stores them per sample.
    """
    p, t = _mask_pair(pred, truth)
    return int(np.count_nonzero(p & t)), int(np.count_nonzero(p | t))


def _check_counts(intersection: int, union: int) -> None:
    if not (0 <= intersection <= union):
        raise InputError(f"Overlap counts must satisfy 0 <= intersection <= union, got {intersection} and {union}.")


def dice_from_counts(intersection: int, union: int) -> float:
    """Dice from the overlap counts: ``|P|+|T| = |P∩T| + |P∪T|``, so Dice = 2I / (I + U); 1.0 when U = 0."""
    _check_counts(intersection, union)
    if union == 0:
        return 1.0
    return 2.0 * intersection / (intersection + union)


def iou_from_counts(intersection: int, union: int) -> float:
    """IoU = I / U; 1.0 when both masks are empty (U = 0)."""
    _check_counts(intersection, union)
    if union == 0:
        return 1.0
    return intersection / union


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient ``2|P∩T| / (|P|+|T|)`` of two masks (2D or 3D); 1.0 when both are empty."""
    return dice_from_counts(*overlap_counts(pred, truth))


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union ``|P∩T| / |P∪T|`` of two masks; 1.0 when both are empty."""
    return iou_from_counts(*overlap_counts(pred, truth))


def ciou(counts: Sequence[tuple[int, int]]) -> float | None:
    """Cumulative IoU ``Σ intersection / Σ union`` over samples; None when every union is 0 (nothing to score).

    Unlike gIoU (the mean of per-sample IoU), large structures weigh more, and an empty-on-empty sample adds
    nothing (it would add 1 to gIoU's numerator).
    """
    total_i = total_u = 0
    for intersection, union in counts:
        _check_counts(intersection, union)
        total_i += intersection
        total_u += union
    return total_i / total_u if total_u else None


# ---------------------------------------------------------------------------------------------- boxes
def _finite_numbers(value: Any, count: int, what: str) -> list[float]:
    """``value``: whatever a JSON file or caller gave (hence ``Any``), checked here."""
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        raise InputError(f"The {what} must be {count} numbers, got {value!r}.") from None
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise InputError(f"The {what} must be {count} finite numbers, got {value!r}.")
    return numbers


def _box(value: Sequence[float], what: str, inclusive: bool) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = _finite_numbers(value, 4, f"{what} box [x1, y1, x2, y2]")
    if x2 < x1 or y2 < y1:
        raise InputError(f"The {what} box {list(value)!r} is inverted: it needs x1 <= x2 and y1 <= y2.")
    if inclusive:
        x2, y2 = x2 + 1.0, y2 + 1.0
    return x1, y1, x2, y2


def box_iou(a: Sequence[float], b: Sequence[float], *, inclusive: bool = False) -> float:
    """IoU of two axis-aligned boxes ``[x1, y1, x2, y2]``.

    Corner convention: by default the corners are continuous coordinates and a box's area is
    ``(x2 - x1) * (y2 - y1)`` (no +1), exactly as MedReasoner (``eval/utils.py::compute_iou``) and Seg-Zero
    score the reasoner's boxes, so numbers are comparable with theirs. ``inclusive=True`` reads the corners
    as the first and last pixel indices of the box (this project's voxel-box convention) and turns them into
    pixel edges first (``x2 + 1``, ``y2 + 1``), so a box around one pixel has area 1.

    Two degenerate (zero-area) boxes have no union; their IoU is 0.0, as in MedReasoner's code.
    """
    ax1, ay1, ax2, ay2 = _box(a, "first", inclusive)
    bx1, by1, bx2, by2 = _box(b, "second", inclusive)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


# ---------------------------------------------------------------------------------------------- points
def _point_pair(value: Sequence[Sequence[float]], what: str) -> tuple[tuple[float, float], tuple[float, float]]:
    try:
        points = list(value)
    except TypeError:
        raise InputError(f"The {what} point pair must be two points [[x, y], [x, y]], got {value!r}.") from None
    if len(points) != 2:
        raise InputError(f"The {what} point pair must be exactly two points [[x, y], [x, y]], got {value!r}.")
    (x1, y1), (x2, y2) = (_finite_numbers(p, 2, f"{what} point [x, y]") for p in points)
    return (x1, y1), (x2, y2)


def _disc(pair: tuple[tuple[float, float], tuple[float, float]]) -> tuple[float, float, float]:
    """Centre and radius of the disc whose diameter is the segment between the two points."""
    (x1, y1), (x2, y2) = pair
    return (x1 + x2) / 2.0, (y1 + y2) / 2.0, math.hypot(x2 - x1, y2 - y1) / 2.0


def _disc_intersection_area(r1: float, r2: float, d: float) -> float:
    """Area of the intersection of two discs of radii r1, r2 whose centres are d apart (circular lens)."""
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return math.pi * min(r1, r2) ** 2
    c1 = max(-1.0, min(1.0, (d * d + r1 * r1 - r2 * r2) / (2.0 * d * r1)))
    c2 = max(-1.0, min(1.0, (d * d + r2 * r2 - r1 * r1) / (2.0 * d * r2)))
    kite = 0.5 * math.sqrt(max(0.0, (-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)))
    return r1 * r1 * math.acos(c1) + r2 * r2 * math.acos(c2) - kite


def _raster_disc(cx: float, cy: float, r: float, shape: tuple[int, int]) -> np.ndarray:
    """Pixels (x = column, y = row, pixel centres at integer coordinates) inside the disc, clipped to the image."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (cols - cx) ** 2 + (rows - cy) ** 2 <= r * r


def point_pair_dice(
    pred: Sequence[Sequence[float]],
    truth: Sequence[Sequence[float]],
    shape: tuple[int, int] | None = None,
    *,
    released_formula: bool = False,
) -> float:
    """MedReasoner's pDice: how well the predicted key-point pair matches the true pair.

    Each pair ``[[x1, y1], [x2, y2]]`` (pixel coordinates, x = column) defines a disc whose diameter is the
    segment between the two points; the score is the Dice of the two discs, ``2|A∩B| / (|A|+|B|)``, with
    the intersection area computed analytically (circle-circle lens area) on continuous coordinates. The
    order of the two points in a pair does not matter.

    Source: PRIS-CV/MedReasoner, ``eval/utils.py::compute_pdice`` (the evaluation) and
    ``verl/utils/reward_score/med_grounding.py::seg_points_reward`` (the same disc overlap as RL reward).
    Their released code divides ``2|A∩B|`` by the *union* ``|A|+|B|-|A∩B|`` (+1e-5) rather than by
    ``|A|+|B|``, i.e. it returns 2·IoU of the discs, up to 2.0 for identical pairs. The default here is the
    Dice the name and paper describe (within [0, 1]); ``released_formula=True`` reproduces the released
    numbers (their 1e-5 included) for side-by-side comparison with published tables.

    ``shape`` ``(rows, columns)``: when given, the discs are rasterised on the image's pixel grid (pixel
    centres inside the disc, clipped to the image) and compared by counting pixels; the result tends to the
    analytic value for large discs. Leave it None for MedReasoner's (continuous) number.

    A predicted pair of one point twice (a zero-area disc) scores 0.0, as in MedReasoner; a true pair of one
    point twice is an InputError (the truth defines no region).
    """
    p_pair = _point_pair(pred, "predicted")
    t_pair = _point_pair(truth, "true")
    pcx, pcy, pr = _disc(p_pair)
    tcx, tcy, tr = _disc(t_pair)
    if tr == 0.0:
        raise InputError(
            f"The true point pair {list(truth)!r} is one point twice: pDice needs two distinct points "
            "(the diameter of the true disc)."
        )
    if shape is not None:
        if len(shape) != 2 or not all(isinstance(n, (int, np.integer)) and n > 0 for n in shape):
            raise InputError(f"The image shape for pDice must be two positive integers (rows, columns), got {shape!r}.")
        rows, cols = int(shape[0]), int(shape[1])
        counts = overlap_counts(_raster_disc(pcx, pcy, pr, (rows, cols)), _raster_disc(tcx, tcy, tr, (rows, cols)))
        if released_formula:
            return 2.0 * counts[0] / (counts[1] + 1e-5)
        return dice_from_counts(*counts)
    if pr == 0.0:
        return 0.0
    inter = _disc_intersection_area(pr, tr, math.hypot(pcx - tcx, pcy - tcy))
    area_p, area_t = math.pi * pr * pr, math.pi * tr * tr
    if released_formula:
        return 2.0 * inter / (area_p + area_t - inter + 1e-5)
    return 2.0 * inter / (area_p + area_t)


# ---------------------------------------------------------------------------------------------- surfaces
def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: those of the mask with at least one face-neighbour outside it (mask XOR its erosion)."""
    from scipy.ndimage import binary_erosion, generate_binary_structure

    return mask & ~binary_erosion(mask, structure=generate_binary_structure(mask.ndim, 1), border_value=0)


def normalized_surface_dice(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> float:
    """Normalized surface Dice (NSD) at ``tolerance_mm``: the fraction of both surfaces within tolerance of the other.

    ``NSD = (#{p ∈ ∂P : d(p, ∂T) <= τ} + #{t ∈ ∂T : d(t, ∂P) <= τ}) / (|∂P| + |∂T|)``, where ∂X are the
    surface voxels of mask X (voxels with a face-neighbour outside it; outside the array counts as outside)
    and d is the Euclidean distance in mm between voxel centres with ``spacing`` per axis, in the array's
    axis order (``[k, j, i]`` arrays take ``(sk, sj, si)``). This is MONAI's ``compute_surface_dice``
    (voxel counts, ``<=`` tolerance); DeepMind's surface-distance package weights surface elements by their
    area instead, which differs slightly on oblique surfaces. Works for 2D and 3D arrays.

    Conventions: both masks empty -> 1.0; exactly one empty -> 0.0.
    """
    p, t = _mask_pair(pred, truth)
    spacing_mm = _finite_numbers(spacing, p.ndim, f"voxel spacing (one value per axis of the {p.ndim}D masks)")
    if not all(s > 0 for s in spacing_mm):
        raise InputError(f"The voxel spacing must be positive, got {list(spacing)!r}.")
    if not (isinstance(tolerance_mm, (int, float)) and math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise InputError(f"The NSD tolerance must be a finite number of mm >= 0, got {tolerance_mm!r}.")
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return 1.0
    if not (p_any and t_any):
        return 0.0
    # Work on the union's bounding box plus one background voxel each side: every surface voxel lies in the
    # box, so distances between surfaces are exact there, and the padding makes the array's border "outside".
    nonzero = np.nonzero(p | t)
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in nonzero)
    p_surface = _surface(np.pad(p[box], 1))
    t_surface = _surface(np.pad(t[box], 1))

    from scipy.ndimage import distance_transform_edt

    to_truth = distance_transform_edt(~t_surface, sampling=spacing_mm)
    to_pred = distance_transform_edt(~p_surface, sampling=spacing_mm)
    within = np.count_nonzero(to_truth[p_surface] <= tolerance_mm) + np.count_nonzero(
        to_pred[t_surface] <= tolerance_mm
    )
    return float(within) / float(np.count_nonzero(p_surface) + np.count_nonzero(t_surface))


# ---------------------------------------------------------------------------------------------- resources
def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, in MiB (None where the OS does not report it).

    ``ru_maxrss`` is a high-water mark: it never goes down, so per-question figures are "peak so far".
    """
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
