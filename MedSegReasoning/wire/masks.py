"""Compact 3D masks: the wire format of DESIGN.md section 2, and how entities keep their masks in memory and on disk.

A mask is its bounding box ``[k0, j0, i0, k1, j1, i1]`` (inclusive, voxel indices of the volume's ``[k, j, i]``
array) plus the box's voxels as ``numpy.packbits(crop.ravel(), bitorder="little")``. Why this and not a dense
array or RLE: an organ fills a few percent of a CT, so a dense bool array per entity per round would cost
tens of MB; the box crop at one bit per voxel costs tens of kB, decodes with one numpy call, and needs no
codec on the Slicer side. The empty mask has no box (``None``) and no bits.

The server receives these from clients, so everything coming from outside goes through ``CompactMask.from_json``
(or the constructor), which checks the box, the byte count and the padding bits and raises ``InputError`` with
what was expected.

Two digests of a mask, deliberately different (both are written into files that outlive a release, so neither
can change): ``mask_file_digest`` names a saved session's mask file (box as stored + bits, 32 hex digits) and
``mask_voxel_digest`` tags a Slicer segment with the voxels it was written with (tight box + bits, full SHA-256),
so an edit is recognised whatever box the segment's voxels come back in. Numpy only: the Slicer side imports it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from .errors import InputError

Box3D = tuple[int, int, int, int, int, int]
"""``(k0, j0, i0, k1, j1, i1)``, inclusive."""

ENCODING = "packbits-little"


@dataclass(frozen=True, eq=True)
class CompactMask:
    """A binary 3D mask as bounding box + packed bits; immutable, so entities and snapshots can share one safely."""

    box: Box3D | None
    bits: bytes

    def __post_init__(self) -> None:
        if self.box is None:
            if self.bits:
                raise InputError(f"an empty mask (box null) must carry no bits, got {len(self.bits)} bytes.")
            return
        box = _checked_box(self.box)
        object.__setattr__(self, "box", box)
        if not isinstance(self.bits, bytes):
            object.__setattr__(self, "bits", bytes(self.bits))
        n = _box_voxels(box)
        expected = (n + 7) // 8
        if len(self.bits) != expected:
            raise InputError(
                f"the mask bits do not fit the box {list(box)}: it holds {n} voxels, which pack into {expected} bytes, "
                f"but {len(self.bits)} bytes came. Pack the box's voxels in C order with "
                'numpy.packbits(crop.ravel(), bitorder="little").'
            )
        spare = expected * 8 - n
        if spare and self.bits[-1] >> (8 - spare):
            raise InputError(
                f"the last byte of the mask bits sets {spare} padding bit(s) beyond the box's {n} voxels: the bits "
                'were packed with the wrong bit order or for another box (use bitorder="little").'
            )

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def empty(cls) -> CompactMask:
        return cls(None, b"")

    @classmethod
    def from_dense(cls, mask: np.ndarray) -> CompactMask:
        """The tight box around the mask's true voxels, and those voxels packed; all-false gives the empty mask."""
        mask = np.asarray(mask)
        if mask.ndim != 3:
            raise InputError(f"a mask must be 3D [k, j, i], got shape {mask.shape}.")
        mask = mask.astype(bool, copy=False)
        box = bounding_box(mask)
        if box is None:
            return cls.empty()
        k0, j0, i0, k1, j1, i1 = box
        crop = mask[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1]
        return cls(box, np.packbits(crop.ravel(), bitorder="little").tobytes())

    @classmethod
    def from_crop(cls, box: Sequence[int], crop: np.ndarray) -> CompactMask:
        """A mask from a box and its voxels (the box need not be tight)."""
        box = _checked_box(box)
        crop = np.asarray(crop, dtype=bool)
        expected = (box[3] - box[0] + 1, box[4] - box[1] + 1, box[5] - box[2] + 1)
        if crop.shape != expected:
            raise InputError(f"the crop has shape {crop.shape} but the box {list(box)} needs {expected}.")
        return cls(box, np.packbits(crop.ravel(), bitorder="little").tobytes())

    # -- reading --------------------------------------------------------------------------------------------------
    @property
    def is_empty(self) -> bool:
        return self.box is None or self.voxel_count == 0

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        if self.box is None:
            return (0, 0, 0)
        k0, j0, i0, k1, j1, i1 = self.box
        return (k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)

    @cached_property
    def voxel_count(self) -> int:
        """Number of true voxels, counted on the packed bytes (no unpacking)."""
        return int.from_bytes(self.bits, "little").bit_count()  # padding bits are checked to be zero

    @property
    def nbytes(self) -> int:
        """Bytes this mask holds (bits plus the six box integers): the memory an entity's mask costs."""
        return len(self.bits) + (6 * 8 if self.box is not None else 0)

    def crop(self) -> np.ndarray:
        """The box's voxels as a bool array of ``crop_shape``."""
        shape = self.crop_shape
        n = int(np.prod(shape))
        if n == 0:
            return np.zeros(shape, dtype=bool)
        flat = np.unpackbits(np.frombuffer(self.bits, dtype=np.uint8), count=n, bitorder="little")
        return flat.reshape(shape).view(bool)

    def check_fits(self, shape: Sequence[int]) -> None:
        """Refuse a mask whose box reaches outside a volume of ``shape`` ``(nk, nj, ni)``."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise InputError(f"a volume shape is (nk, nj, ni), got {shape}.")
        if self.box is None:
            return
        k0, j0, i0, k1, j1, i1 = self.box
        if k1 >= shape[0] or j1 >= shape[1] or i1 >= shape[2]:
            raise InputError(
                f"the mask box {list(self.box)} lies outside the volume: k must be within 0..{shape[0] - 1}, "
                f"j within 0..{shape[1] - 1} and i within 0..{shape[2] - 1}."
            )

    def to_dense(self, shape: Sequence[int]) -> np.ndarray:
        """The mask on the full ``(nk, nj, ni)`` grid."""
        self.check_fits(shape)
        dense = np.zeros(tuple(int(s) for s in shape), dtype=bool)
        if self.box is not None:
            k0, j0, i0, k1, j1, i1 = self.box
            dense[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1] = self.crop()
        return dense

    def slice_mask(self, k: int, shape: Sequence[int]) -> np.ndarray:
        """The 2D ``(nj, ni)`` mask of slice ``k`` without building the 3D array (for outlines and findings)."""
        self.check_fits(shape)
        out = np.zeros((int(shape[1]), int(shape[2])), dtype=bool)
        if self.box is None or not self.box[0] <= k <= self.box[3]:
            return out
        k0, j0, i0, _, j1, i1 = self.box
        out[j0 : j1 + 1, i0 : i1 + 1] = self.crop()[k - k0]
        return out

    def tight(self) -> CompactMask:
        """The same voxels with the tightest box (a client may send a loose one)."""
        if self.box is None:
            return self
        inner = bounding_box(self.crop())
        if inner is None:
            return CompactMask.empty()
        k0, j0, i0 = self.box[:3]
        box = (inner[0] + k0, inner[1] + j0, inner[2] + i0, inner[3] + k0, inner[4] + j0, inner[5] + i0)
        if box == self.box:
            return self
        c = self.crop()[inner[0] : inner[3] + 1, inner[1] : inner[4] + 1, inner[2] : inner[5] + 1]
        return CompactMask.from_crop(box, c)

    # -- JSON (the wire) --------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "box": list(self.box) if self.box is not None else None,
            "bits": base64.b64encode(self.bits).decode("ascii"),
            "encoding": ENCODING,
        }

    @classmethod
    def from_json(cls, obj: object, shape: Sequence[int] | None = None) -> CompactMask:
        """Parse and validate a mask from JSON; with ``shape`` also check that it fits the volume."""
        if not isinstance(obj, dict):
            raise InputError(
                f'a mask must be a JSON object {{"box": [...], "bits": "<base64>"}}, got {type(obj).__name__}.'
            )
        unknown = set(obj) - {"box", "bits", "encoding", "voxels"}
        if unknown:
            raise InputError(f"a mask has unknown field(s) {sorted(unknown)}: only box, bits, encoding, voxels.")
        encoding = obj.get("encoding", ENCODING)
        if encoding != ENCODING:
            raise InputError(f'mask encoding "{encoding}" is not supported: use "{ENCODING}".')
        if "box" not in obj or "bits" not in obj:
            raise InputError('a mask needs both "box" (null when empty) and "bits" (base64).')
        bits_text = obj["bits"]
        if not isinstance(bits_text, str):
            raise InputError('mask "bits" must be a base64 string.')
        try:
            bits = base64.b64decode(bits_text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f'mask "bits" is not valid base64: {exc}.') from None
        mask = cls(None if obj["box"] is None else _checked_box(obj["box"]), bits)
        if "voxels" in obj and obj["voxels"] != mask.voxel_count:
            raise InputError(f"the mask says it has {obj['voxels']} voxels but its bits hold {mask.voxel_count}.")
        if shape is not None:
            mask.check_fits(shape)
        return mask


def bounding_box(mask: np.ndarray) -> Box3D | None:
    """Tight inclusive ``(k0, j0, i0, k1, j1, i1)`` of a 3D bool array, or None when it is empty."""
    ks = np.flatnonzero(mask.any(axis=(1, 2)))
    if ks.size == 0:
        return None
    js = np.flatnonzero(mask.any(axis=(0, 2)))
    is_ = np.flatnonzero(mask.any(axis=(0, 1)))
    return (int(ks[0]), int(js[0]), int(is_[0]), int(ks[-1]), int(js[-1]), int(is_[-1]))


def _checked_box(box: object) -> Box3D:
    if not isinstance(box, (list, tuple)) or len(box) != 6:
        raise InputError(f"a mask box is 6 integers [k0, j0, i0, k1, j1, i1] (inclusive), got {box!r}.")
    values = []
    for v in box:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InputError(f"a mask box holds integers only, got {box!r}.")
        values.append(int(v))
    k0, j0, i0, k1, j1, i1 = values
    if min(values) < 0:
        raise InputError(f"the mask box {values} has a negative index: indices start at 0.")
    if k0 > k1 or j0 > j1 or i0 > i1:
        raise InputError(
            f"the mask box {values} is inverted: give [k0, j0, i0, k1, j1, i1] with each start <= its end."
        )
    return (k0, j0, i0, k1, j1, i1)


def _box_voxels(box: Box3D) -> int:
    return (box[3] - box[0] + 1) * (box[4] - box[1] + 1) * (box[5] - box[2] + 1)


# ---------------------------------------------------------------------------------------------------------------
# Digests


def mask_file_digest(mask: CompactMask) -> str:
    """Content address of a mask as stored: the same box and bits always give the same file name (32 hex digits,
    ``masks/<digest>.npz`` in a session folder; ``dialogue.store`` checks it on load)."""
    h = hashlib.sha256()
    h.update(np.asarray(mask.box if mask.box is not None else (), dtype=np.int64).tobytes())
    h.update(mask.bits)
    return h.hexdigest()[:32]


def mask_voxel_digest(mask: CompactMask) -> str:
    """SHA-256 of the mask's voxels (tight box + bits): equal voxels, equal digest, whatever box they came in."""
    tight = mask.tight()
    h = hashlib.sha256()
    h.update(repr(tight.box).encode())
    h.update(tight.bits)
    return h.hexdigest()


def decode_mask_bits(box: Sequence[int], bits_b64: str) -> np.ndarray:
    """The box's voxels as a bool array from the wire's base64 bits (for callers that do not want ``CompactMask``)."""
    return CompactMask.from_json({"box": list(box), "bits": bits_b64}).crop()
