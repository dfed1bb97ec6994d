"""The one volume content hash: SHA-256 of dtype name, shape, rounded affine and voxel bytes.

It names a volume in caches, sessions and uploads, whatever its path: the engine's ``Volume.content_hash``, the
server hashing an upload as it streams in, the client checking what the server received (and offering a volume by
hash instead of sending it again) and the export checking that a DICOM series is the session's volume all call
these functions, so the four can never drift apart (docs/wire-format.md states the recipe). Numpy only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .geometry import Geometry


def content_hasher(dtype: Any, shape: Sequence[int], affine: np.ndarray) -> hashlib._Hash:
    """A SHA-256 primed with everything but the voxels (dtype name, shape, affine rounded to 6 decimals): feed it
    the C-order voxel bytes (all at once, or as they arrive over the network) and take ``hexdigest()``."""
    h = hashlib.sha256()
    h.update(str(np.dtype(dtype)).encode())
    h.update(np.asarray(shape, dtype=np.int64).tobytes())
    h.update(np.asarray(affine, dtype=np.float64).round(6).tobytes())
    return h


def content_sha256(array: np.ndarray, affine: np.ndarray) -> str:
    """The content hash of a ``[k, j, i]`` array on the grid of ``affine`` (4x4, ``(i, j, k, 1)`` to LPS)."""
    array = np.ascontiguousarray(array)
    h = content_hasher(array.dtype, array.shape, affine)
    h.update(memoryview(array).cast("B"))  # type: ignore[arg-type]  # numpy arrays are buffers; its stubs lack Buffer
    return h.hexdigest()


def volume_content_sha256(
    array: np.ndarray,
    origin: Sequence[float],
    spacing: Sequence[float],
    direction: Sequence[Sequence[float]] | np.ndarray,
) -> str:
    """The content hash from the wire's pieces (what ``Volume.content_hash`` and the server compute)."""
    return content_sha256(array, Geometry.from_arrays(origin, spacing, direction).affine)
