"""Compact masks: exact round trips, the wire format of DESIGN.md, and clear refusals of malformed input."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from MedSegReasoning.wire.errors import InputError
from MedSegReasoning.wire.masks import CompactMask, bounding_box

SHAPE = (7, 11, 13)


def _random_mask(seed: int, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=bool)
    mask[2:5, 3:9, 1:12] = rng.random((3, 6, 11)) > 0.5
    return mask


@pytest.mark.parametrize("seed", range(5))
def test_dense_round_trip_is_exact_and_box_is_tight(seed):
    mask = _random_mask(seed)
    compact = CompactMask.from_dense(mask)
    np.testing.assert_array_equal(compact.to_dense(SHAPE), mask)
    assert compact.box == bounding_box(mask)
    assert compact.voxel_count == int(mask.sum())
    assert compact.tight() is compact


def test_wire_format_is_box_plus_little_endian_packbits_in_c_order():
    mask = np.zeros(SHAPE, dtype=bool)
    mask[1, 2, 3] = mask[1, 2, 4] = mask[2, 5, 3] = True
    obj = CompactMask.from_dense(mask).to_json()
    assert obj["box"] == [1, 2, 3, 2, 5, 4]  # k0, j0, i0, k1, j1, i1 inclusive
    crop = mask[1:3, 2:6, 3:5]
    assert base64.b64decode(obj["bits"]) == np.packbits(crop.ravel(), bitorder="little").tobytes()
    assert obj["encoding"] == "packbits-little"


def test_json_round_trip_and_shape_check():
    compact = CompactMask.from_dense(_random_mask(1))
    again = CompactMask.from_json(compact.to_json(), shape=SHAPE)
    assert again == compact
    with pytest.raises(InputError, match="outside the volume"):
        CompactMask.from_json(compact.to_json(), shape=(3, 11, 13))


def test_empty_mask():
    empty = CompactMask.from_dense(np.zeros(SHAPE, dtype=bool))
    assert empty.box is None and empty.bits == b"" and empty.is_empty and empty.voxel_count == 0 and empty.nbytes == 0
    assert not empty.to_dense(SHAPE).any()
    assert empty.to_json()["box"] is None
    assert CompactMask.from_json({"box": None, "bits": ""}) == empty
    with pytest.raises(InputError, match="no bits"):
        CompactMask(None, b"\x01")


def test_slice_mask_and_loose_boxes():
    mask = _random_mask(2)
    compact = CompactMask.from_dense(mask)
    for k in range(SHAPE[0]):
        np.testing.assert_array_equal(compact.slice_mask(k, SHAPE), mask[k])
    loose = CompactMask.from_crop((0, 0, 0, 6, 10, 12), mask)  # a client may send the whole grid as the box
    assert loose.tight() == compact
    np.testing.assert_array_equal(loose.to_dense(SHAPE), mask)


def test_memory_is_the_crop_at_one_bit_per_voxel():
    mask = np.zeros((300, 512, 512), dtype=bool)
    mask[100:140, 200:300, 150:250] = True
    compact = CompactMask.from_dense(mask)
    assert compact.nbytes == 40 * 100 * 100 // 8 + 48


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"box": [0, 0, 0, 1, 1], "bits": ""}, "6 integers"),
        ({"box": [0, 0, 0, 1, 1, 1.5], "bits": ""}, "integers only"),
        ({"box": [0, 0, -1, 1, 1, 1], "bits": "AA=="}, "negative"),
        ({"box": [2, 0, 0, 1, 1, 1], "bits": "AA=="}, "inverted"),
        ({"box": [0, 0, 0, 1, 1, 1], "bits": "AAAA"}, r"8 voxels, which pack into 1 bytes, but 3 bytes"),
        ({"box": [0, 0, 0, 0, 0, 2], "bits": base64.b64encode(b"\xff").decode()}, "padding bit"),
        ({"box": [0, 0, 0, 0, 0, 0], "bits": "not base64!"}, "not valid base64"),
        ({"box": [0, 0, 0, 0, 0, 0], "bits": "AQ==", "encoding": "rle"}, "not supported"),
        ({"box": [0, 0, 0, 0, 0, 0], "bits": "AQ==", "colour": 1}, "unknown field"),
        ({"box": [0, 0, 0, 0, 0, 0], "bits": "AQ==", "voxels": 2}, "says it has 2 voxels"),
        ({"bits": "AQ=="}, "needs both"),
        ([1, 2, 3], "JSON object"),
    ],
)
def test_malformed_masks_are_refused_with_what_was_expected(obj, message):
    with pytest.raises(InputError, match=message):
        CompactMask.from_json(obj)


def test_dense_input_must_be_3d():
    with pytest.raises(InputError, match="3D"):
        CompactMask.from_dense(np.zeros((4, 4), dtype=bool))
