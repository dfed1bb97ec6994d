"""The wire format (docs/wire-format.md) on the server's side: volumes in, entities and events out.

Volumes arrive as raw little-endian C-order ``[k, j, i]`` voxels, their description (shape, dtype, LPS geometry)
in the ``X-MedSeg-Volume`` header so that every limit can be checked before one byte of the body is read.
Masks leave as ``CompactMask`` JSON (box + packed bits), entities as plain JSON, and a round as Server-Sent Events.
Every check here raises ``ApiError`` with a sentence that says what was expected.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np

from ..dialogue.entity import Entity
from ..volume.core import DicomSeriesInfo, Geometry, Volume, VolumeSource
from ..wire.errors import InputError
from ..wire.hashing import content_hasher as wire_content_hasher
from .config import Limits
from .errors import ApiError, bad_request

ENCODINGS = ("identity", "deflate", "gzip")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# The source series' identity a client may send with the voxels (optional; old clients send none): the session
# records it, so a DICOM-SEG exported later where the series is (``export --series``) is checked against it.
DICOM_UID_FIELDS = ("study_instance_uid", "series_instance_uid", "frame_of_reference_uid")
_ORTHONORMAL_TOL = 1e-3
_DECODE_PIECE = 1 << 20  # a compressed body is inflated at most this many bytes at a time


@dataclass(frozen=True)
class VolumeMeta:
    """The ``X-MedSeg-Volume`` header, validated: everything but the voxels."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    geometry: Geometry
    modality: str
    content_sha256: str | None
    dicom: dict[str, str] | None = None  # DICOM_UID_FIELDS -> UID, when the client sent them

    @property
    def voxels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def nbytes(self) -> int:
        return self.voxels * self.dtype.itemsize


def parse_volume_meta(header: str | None, limits: Limits) -> VolumeMeta:
    """Validate the volume description (shape, dtype, geometry) against the limits; no body has been read yet."""
    if not header:
        raise bad_request(
            "volume_header_missing",
            "the upload has no X-MedSeg-Volume header: send the shape, dtype and geometry as JSON in it "
            "(see docs/wire-format.md).",
        )
    try:
        meta = json.loads(header)
    except json.JSONDecodeError as exc:
        raise bad_request(
            "volume_header_invalid", f"the X-MedSeg-Volume header is not valid JSON ({exc.msg})."
        ) from None
    if not isinstance(meta, dict):
        raise bad_request("volume_header_invalid", "the X-MedSeg-Volume header must be a JSON object.")
    unknown = set(meta) - {"shape", "dtype", "origin", "spacing", "direction", "modality", "content_sha256", "dicom"}
    if unknown:
        raise bad_request(
            "volume_header_invalid", f"the X-MedSeg-Volume header has unknown field(s) {sorted(unknown)}."
        )

    shape = meta.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
    ):
        raise bad_request(
            "invalid_shape",
            f"the volume shape must be three positive integers [nk, nj, ni] (slices, rows, columns), got {shape!r}.",
        )
    nk, nj, ni = shape
    if nj < 8 or ni < 8:
        raise bad_request("invalid_shape", f"the slices are {nj}x{ni} voxels: a segmentable slice is at least 8x8.")

    dtype_name = meta.get("dtype")
    if dtype_name not in limits.dtypes:
        raise ApiError(
            415,
            "unsupported_dtype",
            f"voxel type {dtype_name!r} is not accepted: send one of {', '.join(limits.dtypes)} (little-endian).",
        )
    dtype = np.dtype(str(dtype_name)).newbyteorder("<")
    voxels = nk * nj * ni
    if voxels > limits.max_voxels:
        raise ApiError(
            413,
            "volume_too_large",
            f"the volume has {voxels:,} voxels, more than this server's limit of {limits.max_voxels:,}: crop it, or "
            "ask the server's operator to raise --max-voxels.",
        )
    nbytes = voxels * dtype.itemsize
    if nbytes > limits.max_volume_bytes:  # refused from the header: nothing is allocated for it
        raise ApiError(
            413,
            "volume_too_large",
            f"the volume needs {nbytes:,} bytes once decoded ({dtype.name}), more than this server's limit of "
            f"{limits.max_volume_bytes:,}: crop it, send a smaller voxel type, or ask the server's operator to "
            "raise --max-volume-mb.",
        )
    geometry = _geometry(meta)
    modality = meta.get("modality", "")
    if not isinstance(modality, str) or len(modality) > 16 or (modality and not modality.replace("_", "").isalnum()):
        raise bad_request(
            "volume_header_invalid", f"the modality must be a short DICOM code such as 'CT', got {modality!r}."
        )
    digest = meta.get("content_sha256")
    if digest is not None and (not isinstance(digest, str) or not _SHA256.match(digest)):
        raise bad_request("volume_header_invalid", "content_sha256 must be 64 lowercase hex digits.")
    return VolumeMeta((nk, nj, ni), dtype, geometry, modality.upper(), digest, _dicom_uids(meta.get("dicom")))


def _dicom_uids(value: object) -> dict[str, str] | None:
    """The optional ``dicom`` object: the source series' Study, Series and Frame of Reference UIDs."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - set(DICOM_UID_FIELDS):
        raise bad_request(
            "volume_header_invalid",
            f"the volume's dicom field must be an object with any of {', '.join(DICOM_UID_FIELDS)}, got {value!r}.",
        )
    for key, uid in value.items():
        if uid is not None and (not isinstance(uid, str) or len(uid) > 64 or not _UID.match(uid)):
            raise bad_request(
                "volume_header_invalid", f"the volume's dicom {key} must be a DICOM UID (digits and dots), got {uid!r}."
            )
    uids = {k: v for k, v in value.items() if v}
    return uids or None


def _geometry(meta: dict) -> Geometry:
    def numbers(name: str, count: int) -> list[float]:
        value = meta.get(name)
        flat = value if name != "direction" else [x for row in value for x in row] if _is_rows(value) else None
        if not isinstance(flat, list) or len(flat) != count or not all(_is_number(x) for x in flat):
            form = (
                "a 3x3 matrix (rows) whose columns are the i, j, k axes in LPS" if name == "direction" else "3 numbers"
            )
            raise bad_request("invalid_geometry", f"the volume's {name} must be {form}, got {value!r}.")
        values = [float(x) for x in flat]
        if not all(math.isfinite(x) for x in values):
            raise bad_request("invalid_geometry", f"the volume's {name} holds NaN or infinity: {value!r}.")
        return values

    origin = numbers("origin", 3)
    spacing = numbers("spacing", 3)
    direction = np.array(numbers("direction", 9)).reshape(3, 3)
    if min(spacing) <= 0:
        raise bad_request(
            "invalid_geometry", f"the voxel spacing must be positive millimetres (si, sj, sk), got {spacing}."
        )
    if not np.allclose(direction.T @ direction, np.eye(3), atol=_ORTHONORMAL_TOL):
        raise bad_request(
            "invalid_geometry",
            "the direction matrix is not orthonormal: its columns must be unit vectors at right angles "
            "(the i, j and k axes in LPS).",
        )
    return Geometry.from_arrays(origin, spacing, direction)


def _is_rows(value: object) -> TypeGuard[list[list[Any]]]:
    return isinstance(value, list) and len(value) == 3 and all(isinstance(r, list) and len(r) == 3 for r in value)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_body_size(meta: VolumeMeta, encoding: str, content_length: int | None) -> None:
    """An uncompressed body must be exactly the voxels' size; say so before reading a byte of it."""
    if encoding not in ENCODINGS:
        raise ApiError(
            415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not accepted: use {', '.join(ENCODINGS)}."
        )
    if encoding == "identity" and content_length is not None and content_length not in (0, meta.nbytes):
        raise bad_request(
            "shape_mismatch",
            f"the body has {content_length:,} bytes but a {meta.dtype.name} volume of shape {list(meta.shape)} needs "
            f"{meta.nbytes:,}: send the voxels in C order [k, j, i], one {meta.dtype.itemsize}-byte value each.",
        )


def content_hasher(meta: VolumeMeta):
    """The content hash (``wire.hashing``) primed for the announced volume, so the voxels can be hashed as they
    arrive instead of in a second pass over 150 MB (0.6-0.8 s on this project's machines). The dtype is named in
    native byte order, as the ``Volume`` built from the buffer will hold it. ``Testing/integration/test_server_faults.py``
    and ``test_server_session.py`` check it equals ``Volume.content_hash``."""
    return wire_content_hasher(meta.dtype.newbyteorder("="), meta.shape, meta.geometry.affine)


async def read_volume_body(
    stream: AsyncIterator[bytes], meta: VolumeMeta, encoding: str, budget: _Tally | None = None
) -> tuple[bytearray, str]:
    """Read the voxels, hashing them on the way; decompress on the fly in bounded pieces with a hard output cap.
    Returns the buffer and its content hash.

    Memory follows the bytes that arrived, never the size the header announces: the buffer grows as voxels come
    in (a 4-byte body costs 4 bytes, whatever shape it claims), and each decoded piece is taken from ``budget``,
    the server-wide allowance of all uploads in flight, before it is stored (503 when it is spent). What was taken
    is the caller's to give back (``UploadBudget.reservation``)."""
    hasher = content_hasher(meta)
    buf = bytearray()
    decoder = None
    if encoding == "deflate":
        decoder = zlib.decompressobj()
    elif encoding == "gzip":
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def store(data: bytes | memoryview) -> None:
        if len(buf) + len(data) > meta.nbytes:
            raise bad_request(
                "shape_mismatch",
                f"the body holds more than the {meta.nbytes:,} bytes that a {meta.dtype.name} volume of shape "
                f"{list(meta.shape)} needs.",
            )
        if budget is not None:
            budget.take(len(data))
        buf.extend(data)
        hasher.update(data)

    async for chunk in stream:
        if not chunk:
            continue
        if decoder is None:
            store(chunk)
            continue
        pending = chunk
        while pending:
            # at most one byte more than still fits (more means too big, or a bomb), and never more than one
            # piece at a time: what a small compressed chunk expands to is stored piece by piece
            room = min(meta.nbytes - len(buf) + 1, _DECODE_PIECE)
            try:
                data = decoder.decompress(pending, room)
            except zlib.error as exc:
                raise bad_request("invalid_body", f"the {encoding} body cannot be decompressed ({exc}).") from None
            store(data)
            pending = decoder.unconsumed_tail
    if decoder is not None and not decoder.eof:
        raise bad_request(
            "invalid_body", f"the {encoding} body ended before its compressed stream did: it was cut off."
        )
    if len(buf) != meta.nbytes:
        raise bad_request(
            "shape_mismatch",
            f"the body held {len(buf):,} bytes of voxels but a {meta.dtype.name} volume of shape {list(meta.shape)} "
            f"needs {meta.nbytes:,}.",
        )
    return buf, hasher.hexdigest()


class UploadBudget:
    """The memory all volume uploads in flight may hold together (``--upload-budget-mb``); thread-safe.

    Why: each upload is bounded on its own (body bytes, decoded bytes), but many at once, or many slow ones, would
    still add up to more than the machine has. An upload takes its decoded bytes as they arrive and gives them back
    when its request ends (the finished volume then belongs to the session and the volume cache)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            if self.used + n > self.limit:
                raise ApiError(
                    503,
                    "upload_budget_exhausted",
                    f"the server is receiving other volumes and has no memory left for this one (its upload budget "
                    f"is {self.limit:,} bytes): try again in a moment.",
                    {"Retry-After": "5"},
                )
            self.used += n

    def give_back(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)

    @contextlib.contextmanager
    def reservation(self) -> Iterator[_Tally]:
        """A tally of what one upload took; all of it is given back when the block ends, however it ends."""
        tally = _Tally(self)
        try:
            yield tally
        finally:
            self.give_back(tally.taken)


class _Tally:
    """One upload's share of the budget: ``take`` counts what it took, so the whole is given back at once."""

    def __init__(self, budget: UploadBudget) -> None:
        self.budget = budget
        self.taken = 0
        self.limit = budget.limit

    def take(self, n: int) -> None:
        self.budget.take(n)
        self.taken += n


def build_volume(buf: bytearray, meta: VolumeMeta, digest: str | None = None) -> Volume:
    """The ``Volume`` from the received bytes, refusing NaN/infinite voxels and a content hash that does not match.

    ``digest``: the content hash computed while receiving (``read_volume_body``), used instead of a second pass.
    """
    array = np.frombuffer(buf, dtype=meta.dtype).reshape(meta.shape)
    if not array.dtype.isnative:  # big-endian hosts: the engine computes in native order (and hashes those bytes)
        array = array.astype(array.dtype.newbyteorder("="))
        digest = None
    volume = Volume(array, meta.geometry, modality=meta.modality, source=_source(meta))
    if digest is not None:
        volume._hash = digest  # Volume.content_hash's own cache slot: the same recipe (content_hasher), one pass
    if meta.content_sha256 is not None and volume.content_hash() != meta.content_sha256:
        raise bad_request(
            "hash_mismatch",
            "the voxels that arrived do not match the content_sha256 sent with them: the upload was damaged "
            "on the way, or the hash was computed differently (docs/wire-format.md); send it again.",
        )
    from ..volume.finite import with_finite_voxels

    try:  # the CLI's rule: NaN/inf voxels become the finite minimum (counted); none finite is refused
        return with_finite_voxels(volume, "the uploaded volume")
    except InputError as exc:
        raise bad_request("invalid_voxels", str(exc)) from None


def _source(meta: VolumeMeta) -> VolumeSource:
    """Uploaded voxels have no path; the series identity the client sent (if any) is kept for the session record."""
    if not meta.dicom:
        return VolumeSource(kind="array", path="")
    info = DicomSeriesInfo(
        study_instance_uid=meta.dicom.get("study_instance_uid", ""),
        series_instance_uid=meta.dicom.get("series_instance_uid", ""),
        frame_of_reference_uid=meta.dicom.get("frame_of_reference_uid", ""),
        sop_class_uid="",
        sop_instance_uids=(),
        files=(),
        modality=meta.modality,
    )
    return VolumeSource(kind="array", path="", dicom=info)


# ---------------------------------------------------------------------------------------------------------------
# Entities and events


def entity_json(entity: Entity, *, with_mask: bool) -> dict:
    """An entity as the wire carries it: everything ``session.json`` has, the mask inline when asked for."""
    data = entity.to_dict(mask_file="")
    data.pop("mask")
    data["name"] = entity.name
    data["bbox"] = list(entity.bbox) if entity.bbox else None
    data["voxels"] = entity.mask.voxel_count
    data["uncertain"] = entity.uncertain
    data["terminology_slicer"] = entity.terminology.to_slicer_string()
    if with_mask:
        data["mask"] = mask_json(entity)
    return data


def mask_json(entity: Entity) -> dict:
    return {**entity.mask.to_json(), "voxels": entity.mask.voxel_count}


def sse(event: str, data: dict, event_id: int) -> bytes:
    """One Server-Sent Event; the data is single-line JSON, so one ``data:`` line always holds it whole."""
    return f"event: {event}\nid: {event_id}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


HEARTBEAT = b": keep-alive\n\n"
