"""The one rule for voxels that are NaN or infinite, for the CLI and the server alike.

Real NIfTI files often carry a NaN background (resampled or skull-stripped images). Refusing them would refuse
good scans, and passing them on would let NaN reach the window, the segmenter and every measurement. So a volume
is accepted, the non-finite voxels are counted (the front ends say how many) and replaced by the volume's finite
minimum: the background value, for rendering, segmentation and measurement alike. A volume with no finite voxel
at all holds no image, and is bad input.

The volume keeps the content hash of its voxels *as they were given* (NaN included), so a session or an upload
names the same volume whether the CLI read the file or a client sent its array.
"""

from __future__ import annotations

import numpy as np

from ..wire.errors import InputError
from .core import Volume


def with_finite_voxels(volume: Volume, name: str | None = None) -> Volume:
    """``volume`` itself when every voxel is finite; else a copy whose NaN/inf voxels hold the finite minimum,
    with ``non_finite_voxels`` set. ``InputError`` (naming ``name``, default the source) when none is finite."""
    array = volume.array
    if array.dtype.kind not in "fc":
        return volume
    finite = np.isfinite(array)
    bad = int(array.size - np.count_nonzero(finite))
    if bad == 0:
        return volume
    what = name or volume.source.path or "the volume"
    if bad == array.size:
        raise InputError(
            f"{what}: all {bad:,} voxels are NaN or infinite, so there is no image to segment: check the file "
            "(or its scaling, e.g. a NaN RescaleSlope) and give a volume with finite values."
        )
    raw_hash = volume.content_hash()  # the identity of the voxels as given (see the module docstring)
    cleaned = np.where(finite, array, array[finite].min()).astype(array.dtype, copy=False)
    out = Volume(cleaned, volume.geometry, volume.modality, volume.source, non_finite_voxels=bad)
    out._hash = raw_hash
    return out


def non_finite_warning(volume: Volume) -> str | None:
    """The sentence a front end shows for a volume that had non-finite voxels (None when it had none)."""
    if not volume.non_finite_voxels:
        return None
    return (
        f"{volume.non_finite_voxels:,} of {volume.array.size:,} voxels were NaN or infinite: they were treated as "
        "the volume's lowest finite value (background) for display, segmentation and measurement."
    )
