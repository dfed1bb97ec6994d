"""Evaluation metrics against values counted or derived by hand (the derivations are in the comments)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from MedSegReasoning.evaluation.metrics import (
    box_iou,
    ciou,
    dice,
    dice_from_counts,
    iou,
    iou_from_counts,
    normalized_surface_dice,
    overlap_counts,
    point_pair_dice,
)
from MedSegReasoning.wire.errors import EXIT_BAD_INPUT, InputError

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------- masks
def test_dice_and_iou_counted_by_hand():
    truth = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    pred = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=np.uint8)
    # overlap: column 1, rows 0-1 -> 2 voxels; union: columns 0-2, rows 0-1 -> 6 voxels; |P| = |T| = 4
    assert overlap_counts(pred, truth) == (2, 6)
    assert dice(pred, truth) == pytest.approx(2 * 2 / (4 + 4))  # 0.5
    assert iou(pred, truth) == pytest.approx(2 / 6)
    assert dice(truth, truth) == 1.0 and iou(truth, truth) == 1.0


def test_volumetric_dice_on_3d_masks():
    truth = np.zeros((4, 4, 4), bool)
    truth[1:3, 1:3, 1:3] = True  # 8 voxels
    pred = np.zeros((4, 4, 4), bool)
    pred[1:4, 1:3, 1:3] = True  # 12 voxels containing the truth
    # I = 8, U = 12: Dice = 16 / 20, IoU = 8 / 12
    assert overlap_counts(pred, truth) == (8, 12)
    assert dice(pred, truth) == pytest.approx(0.8)
    assert iou(pred, truth) == pytest.approx(2 / 3)


def test_empty_masks():
    empty = np.zeros((3, 3), bool)
    one = empty.copy()
    one[1, 1] = True
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0  # nothing there, nothing predicted
    assert dice(empty, one) == 0.0 and iou(empty, one) == 0.0  # missed structure
    assert dice(one, empty) == 0.0 and iou(one, empty) == 0.0  # hallucinated structure
    assert dice_from_counts(0, 0) == 1.0 and iou_from_counts(0, 0) == 1.0


def test_ciou_differs_from_giou():
    # Sample A: one voxel predicted exactly: I = 1, U = 1, IoU = 1.
    truth_a = np.zeros((3, 3), bool)
    truth_a[0, 0] = True
    # Sample B: a 3x3 structure of which only the centre is predicted: I = 1, U = 9, IoU = 1/9.
    truth_b = np.ones((3, 3), bool)
    pred_b = np.zeros((3, 3), bool)
    pred_b[1, 1] = True
    counts = [overlap_counts(truth_a, truth_a), overlap_counts(pred_b, truth_b)]
    assert counts == [(1, 1), (1, 9)]
    giou = np.mean([iou_from_counts(*c) for c in counts])
    assert giou == pytest.approx((1 + 1 / 9) / 2)  # 5/9 = 0.5556: the small exact hit weighs as much as the big miss
    assert ciou(counts) == pytest.approx((1 + 1) / (1 + 9))  # 0.2: voxels weigh, so the big miss dominates
    # an empty-on-empty sample lifts gIoU (IoU 1) but adds nothing to cIoU
    assert ciou([*counts, (0, 0)]) == pytest.approx(0.2)
    assert ciou([(0, 0)]) is None


def test_mismatched_shapes_are_a_clear_input_error():
    with pytest.raises(InputError, match=r"shape \(2, 3\).*shape \(3, 2\).*truth's grid") as excinfo:
        dice(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
    assert excinfo.value.exit_code == EXIT_BAD_INPUT


def test_label_maps_and_bad_counts_are_refused():
    with pytest.raises(InputError, match=r"binary.*\(2\).*labels == k"):
        dice(np.array([[0, 1], [2, 0]]), np.zeros((2, 2), bool))
    with pytest.raises(InputError, match="intersection <= union"):
        dice_from_counts(5, 3)


# ---------------------------------------------------------------------------------------------- boxes
def test_box_iou_continuous_corners():
    # overlap [5,5]-[10,10] = 25; union = 100 + 100 - 25 = 175
    assert box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1.0)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0  # disjoint
    assert box_iou([0, 0, 1, 1], [1, 0, 2, 1]) == 0.0  # sharing an edge only: no area in common
    assert box_iou([0, 0, 10, 10], [2, 2, 4, 4]) == pytest.approx(4 / 100)  # contained: its area over the outer one
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # degenerate: no union


def test_box_iou_inclusive_pixel_boxes_match_pixel_masks():
    # inclusive [0,0,1,1] and [1,1,2,2] are 2x2 pixel blocks overlapping in one pixel: 1 / (4 + 4 - 1)
    assert box_iou([0, 0, 1, 1], [1, 1, 2, 2], inclusive=True) == pytest.approx(1 / 7)
    assert box_iou([3, 3, 3, 3], [3, 3, 3, 3], inclusive=True) == 1.0
    rng = np.random.default_rng(7)
    for _ in range(20):
        boxes = []
        for _ in range(2):
            x1, y1 = rng.integers(0, 15, size=2)
            x2, y2 = x1 + rng.integers(0, 8), y1 + rng.integers(0, 8)
            boxes.append([int(x1), int(y1), int(x2), int(y2)])
        masks = []
        for x1, y1, x2, y2 in boxes:
            m = np.zeros((24, 24), bool)
            m[y1 : y2 + 1, x1 : x2 + 1] = True
            masks.append(m)
        assert box_iou(*boxes, inclusive=True) == pytest.approx(iou(*masks))


def test_bad_boxes_are_input_errors():
    with pytest.raises(InputError, match="inverted"):
        box_iou([10, 0, 0, 10], [0, 0, 1, 1])
    with pytest.raises(InputError, match="4 finite numbers"):
        box_iou([0, 0, 1], [0, 0, 1, 1])
    with pytest.raises(InputError, match="4 numbers"):
        box_iou(["a", 0, 1, 1], [0, 0, 1, 1])


# ---------------------------------------------------------------------------------------------- pDice
def test_pdice_identical_and_order_free():
    pair = [[10.0, 20.0], [30.0, 20.0]]
    assert point_pair_dice(pair, pair) == pytest.approx(1.0)
    assert point_pair_dice(pair[::-1], pair) == pytest.approx(1.0)
    # only the disc counts: a perpendicular pair with the same midpoint and length is a perfect match
    assert point_pair_dice([[20, 10], [20, 30]], pair) == pytest.approx(1.0)


def test_pdice_concentric_and_disjoint():
    # predicted disc: centre (1, 0), r = 1; true disc: centre (1, 0), r = 2.
    # intersection = pi, areas pi + 4 pi: Dice = 2 pi / 5 pi = 0.4
    assert point_pair_dice([[0, 0], [2, 0]], [[-1, 0], [3, 0]]) == pytest.approx(0.4)
    assert point_pair_dice([[0, 0], [2, 0]], [[10, 0], [12, 0]]) == 0.0  # far apart
    assert point_pair_dice([[0, 0], [2, 0]], [[2, 0], [4, 0]]) == 0.0  # tangent discs


def test_pdice_lens_of_two_unit_discs():
    # two unit discs with centres 1 apart: lens area = 2 acos(1/2) - (1/2) sqrt(4 - 1) = 2 pi / 3 - sqrt(3) / 2
    lens = 2 * math.pi / 3 - math.sqrt(3) / 2
    expected = 2 * lens / (2 * math.pi)  # 0.3910
    assert expected == pytest.approx(0.3910, abs=1e-4)
    assert point_pair_dice([[0, 0], [2, 0]], [[1, 0], [3, 0]]) == pytest.approx(expected)
    # MedReasoner's released code divides by the union instead (2 IoU of the discs)
    released = point_pair_dice([[0, 0], [2, 0]], [[1, 0], [3, 0]], released_formula=True)
    assert released == pytest.approx(2 * lens / (2 * math.pi - lens + 1e-5))
    assert point_pair_dice([[0, 0], [2, 0]], [[0, 0], [2, 0]], released_formula=True) == pytest.approx(2.0, abs=1e-5)


def test_pdice_rasterised_counts_pixels():
    # shape (3 rows, 6 columns); pixel centres at integer (x, y).
    # predicted disc: centre (2, 1), r = 1 -> pixels (2,1) (1,1) (3,1) (2,0) (2,2): 5
    # true disc: centre (3, 1), r = 1 -> (3,1) (2,1) (4,1) (3,0) (3,2): 5; common: (2,1) (3,1) -> Dice = 4 / 10
    assert point_pair_dice([[1, 1], [3, 1]], [[2, 1], [4, 1]], shape=(3, 6)) == pytest.approx(0.4)
    # large discs: the pixel count approaches the analytic value (equal radii r, centres r apart -> 0.3910)
    raster = point_pair_dice([[20, 50], [80, 50]], [[50, 50], [110, 50]], shape=(100, 140))
    analytic = point_pair_dice([[20, 50], [80, 50]], [[50, 50], [110, 50]])
    assert analytic == pytest.approx(2 / 3 - math.sqrt(3) / (2 * math.pi))
    assert raster == pytest.approx(analytic, abs=0.01)


def test_pdice_degenerate_pairs():
    assert point_pair_dice([[5, 5], [5, 5]], [[0, 0], [10, 0]]) == 0.0
    with pytest.raises(InputError, match="one point twice"):
        point_pair_dice([[0, 0], [10, 0]], [[5, 5], [5, 5]])
    with pytest.raises(InputError, match="exactly two points"):
        point_pair_dice([[0, 0]], [[0, 0], [1, 1]])


# ---------------------------------------------------------------------------------------------- NSD
def _rect(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return m


def test_nsd_anisotropic_spacing_2d():
    # truth: rows 2-4, columns 2-5 (3x4); its surface is everything but (3,3) and (3,4): 10 voxels.
    truth = _rect((8, 9), (2, 4), (2, 5))
    spacing = (3.0, 1.0)  # 3 mm between rows, 1 mm between columns
    # a one-column shift moves every surface voxel at most 1 mm from the other surface: inside 2 mm
    assert normalized_surface_dice(_rect((8, 9), (2, 4), (3, 6)), truth, spacing, 2.0) == 1.0
    # a one-row shift (3 mm). Prediction rows 3-5: its row 5 (4 voxels) is 3 mm from the truth's row 4 -> out,
    # the other 6 surface voxels are 0 or 1 mm away -> in. Truth row 2 (4 voxels) is 3 mm from the
    # prediction's row 3 -> out, 6 in. NSD = (6 + 6) / (10 + 10)
    shifted_rows = _rect((8, 9), (3, 5), (2, 5))
    assert normalized_surface_dice(shifted_rows, truth, spacing, 2.0) == pytest.approx(0.6)
    assert normalized_surface_dice(shifted_rows, truth, spacing, 3.0) == 1.0  # tolerance is inclusive
    assert normalized_surface_dice(shifted_rows, truth, (1.0, 1.0), 2.0) == 1.0  # isotropic 1 mm: 1 mm shift


def test_nsd_anisotropic_spacing_3d():
    # truth: a 3x3x3 cube, surface = 26 voxels (all but the centre)
    truth = np.zeros((6, 6, 6), bool)
    truth[1:4, 1:4, 1:4] = True
    along_k = np.roll(truth, 1, axis=0)
    along_i = np.roll(truth, 1, axis=2)
    spacing = (3.0, 1.0, 1.0)  # (sk, sj, si): thick slices
    # shifted one slice (3 mm): on each side the 9-voxel face that sticks out is 3 mm from the other surface
    # (out); every other surface voxel lies on the other surface or 1 mm from it. (17 + 17) / (26 + 26)
    assert normalized_surface_dice(along_k, truth, spacing, 2.0) == pytest.approx(34 / 52)
    assert normalized_surface_dice(along_i, truth, spacing, 2.0) == 1.0  # the same shift in-plane is 1 mm


def test_nsd_empty_and_identical_and_border():
    empty = np.zeros((4, 4, 4), bool)
    cube = empty.copy()
    cube[1:3, 1:3, 1:3] = True
    assert normalized_surface_dice(empty, empty, (1, 1, 1), 1.0) == 1.0
    assert normalized_surface_dice(cube, empty, (1, 1, 1), 1.0) == 0.0
    assert normalized_surface_dice(empty, cube, (1, 1, 1), 1.0) == 0.0
    assert normalized_surface_dice(cube, cube, (2, 1, 1), 0.0) == 1.0
    # a mask filling the array: the array's outside counts as outside, so all 8 border voxels are surface
    full = np.ones((2, 2, 2), bool)
    assert normalized_surface_dice(full, full, (1, 1, 1), 0.0) == 1.0


def test_nsd_bad_spacing_and_tolerance():
    m = np.ones((2, 2), bool)
    with pytest.raises(InputError, match="one value per axis"):
        normalized_surface_dice(m, m, (1.0, 1.0, 1.0), 1.0)
    with pytest.raises(InputError, match="positive"):
        normalized_surface_dice(m, m, (1.0, -1.0), 1.0)
    with pytest.raises(InputError, match="tolerance"):
        normalized_surface_dice(m, m, (1.0, 1.0), -1.0)


def test_peak_rss_tracks_a_real_allocation():
    # A child that touches 200 MiB. Linux carries the parent's resident size at fork into the child's
    # ru_maxrss, so "before" is not a clean baseline under pytest; what must hold is that the peak includes the
    # allocation and is at least the kernel's own high-water mark for the child (VmHWM).
    code = (
        "import re, numpy as np; from MedSegReasoning.evaluation.metrics import peak_rss_mb; "
        "block = np.ones(200 * 2**20 // 8); "
        "hwm = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) / 1024; "
        "print(peak_rss_mb(), hwm)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, cwd=ROOT)
    peak, hwm = (float(v) for v in out.stdout.split())
    assert hwm > 200  # the child really held the block
    assert peak >= hwm - 0.01
