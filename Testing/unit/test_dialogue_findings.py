"""Findings and spatial relations: numbers from the mask and the geometry, right on anisotropic grids."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from MedSegReasoning.dialogue.findings import (
    findings_text,
    largest_slice,
    max_inplane_diameter_mm,
    measure,
    voxel_volume_ml,
)
from MedSegReasoning.dialogue.spatial import spatial_relation, surface_distance_mm
from MedSegReasoning.terminology import map_label
from MedSegReasoning.volume.core import Geometry
from MedSegReasoning.wire.masks import CompactMask

SHAPE = (10, 40, 30)
ANISO = Geometry.from_arrays((0, 0, 0), (0.5, 2.0, 3.0), np.eye(3))  # si, sj, sk


def _box_mask(k0, k1, j0, j1, i0, i1, shape=SHAPE) -> CompactMask:
    m = np.zeros(shape, dtype=bool)
    m[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1] = True
    return CompactMask.from_dense(m)


def test_diameter_is_edge_to_edge_with_each_axis_own_spacing():
    mask = _box_mask(4, 4, 5, 24, 3, 12)  # 20 rows (j) x 10 columns (i)
    expected = np.hypot(10 * 0.5, 20 * 2.0)
    assert max_inplane_diameter_mm(mask, 4, ANISO) == pytest.approx(expected)


def test_diameter_follows_oblique_directions():
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    oblique = Geometry.from_arrays((5, 5, 5), (0.5, 2.0, 3.0), rot)
    mask = _box_mask(4, 4, 5, 24, 3, 12)
    assert max_inplane_diameter_mm(mask, 4, oblique) == pytest.approx(np.hypot(5.0, 40.0))


def test_volume_and_key_slice():
    m = np.zeros(SHAPE, dtype=bool)
    m[2:5, 10:14, 10:14] = True
    m[3, 8:16, 8:16] = True  # slice 3 is the largest
    compact = CompactMask.from_dense(m)
    meas = measure(compact, ANISO)
    assert voxel_volume_ml(ANISO) == pytest.approx(0.5 * 2.0 * 3.0 / 1000)
    assert meas.volume_ml == pytest.approx(m.sum() * 0.003)
    assert meas.key_slice == largest_slice(compact) == 3
    assert meas.slice_range == (2, 4)
    assert measure(compact, ANISO, key_slice=2).key_slice == 2  # a given key slice is kept when the mask is there
    assert measure(compact, ANISO, key_slice=8).key_slice == 3


def test_surface_distance_equals_the_distance_transform_with_sampling():
    a = _box_mask(1, 3, 2, 8, 2, 6)
    b = _box_mask(6, 8, 12, 20, 15, 25)
    dense_a, dense_b = a.to_dense(SHAPE), b.to_dense(SHAPE)
    edt = ndimage.distance_transform_edt(~dense_b, sampling=(3.0, 2.0, 0.5))  # (sk, sj, si) for [k, j, i]
    assert surface_distance_mm(a, b, ANISO) == pytest.approx(edt[dense_a].min())


@pytest.mark.parametrize(
    ("a", "b", "kind"),
    [
        ((3, 5, 10, 14, 10, 14), (1, 8, 5, 25, 5, 25), "inside"),
        ((1, 8, 5, 25, 5, 25), (3, 5, 10, 14, 10, 14), "contains"),
        ((1, 8, 5, 25, 5, 15), (1, 8, 5, 25, 16, 25), "adjacent"),  # touching faces
        ((1, 8, 5, 25, 5, 15), (1, 8, 5, 25, 27, 29), "separate"),  # 6 mm apart
        ((1, 8, 5, 25, 5, 15), (1, 8, 5, 25, 5, 15), "same"),
        ((1, 8, 5, 25, 5, 15), (1, 8, 5, 25, 12, 25), "overlaps"),
    ],
)
def test_relation_kinds(a, b, kind):
    rel = spatial_relation(_box_mask(*a), _box_mask(*b), ANISO)
    assert rel.kind == kind


def test_contains_counts_a_lesion_in_a_hole_of_the_organ_mask():
    organ = np.zeros(SHAPE, dtype=bool)
    organ[1:9, 5:30, 5:25] = True
    lesion = np.zeros(SHAPE, dtype=bool)
    lesion[4:6, 12:16, 12:16] = True
    organ &= ~lesion  # the organ's mask excludes the lesion, as segmentations often do
    rel = spatial_relation(CompactMask.from_dense(organ), CompactMask.from_dense(lesion), ANISO)
    assert rel.kind == "contains"


def test_touching_is_decided_on_the_grid_not_by_distance():
    a = _box_mask(1, 8, 5, 25, 5, 15)
    b = _box_mask(1, 8, 5, 25, 17, 25)  # one empty column between: 1 mm apart at 0.5 mm columns
    rel = spatial_relation(a, b, ANISO)
    assert not rel.touching and rel.distance_mm == pytest.approx(1.0) and rel.kind == "adjacent"


def test_findings_text_reads_like_a_finding_and_puts_doubt_first():
    from MedSegReasoning.dialogue.findings import RelatedEntity

    organ = _box_mask(1, 8, 5, 30, 5, 25)
    lesion = _box_mask(4, 5, 12, 15, 12, 15)
    rel = RelatedEntity("E1", "Left kidney", spatial_relation(lesion, organ, ANISO))
    text = findings_text(map_label("lesion", use_embedding=False), measure(lesion, ANISO), [rel])
    assert text.startswith("Lesion: 0.1 mL; key slice 4; max in-plane diameter 8.2 mm on the key slice; slices 4-5")
    assert text.endswith("inside E1 (Left kidney).")
    doubtful = findings_text(map_label("lesion", use_embedding=False), measure(lesion, ANISO), [], ["size: too big"])
    assert doubtful.startswith("UNCERTAIN: size: too big.")
