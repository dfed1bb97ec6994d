"""Intensity windows and slice rendering: how a volume's values become the 8-bit RGB image a model sees.

A window is part of the identity of a rendered slice (the segmenter's embedding cache is keyed by it), so a
``Window`` is immutable and carries a stable ``key``. For MR and other modalities without calibrated units the
window comes from percentiles computed once over the whole volume: computing them per slice would map the same
tissue to different grey levels on neighbouring slices, which the reasoner and the propagation would see as
contrast changes that are not in the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..wire.errors import InputError
from .core import Volume

PERCENTILE_RANGE = (0.5, 99.5)
# Enough voxels for stable 0.5/99.5 % percentiles; a whole 512x512x500 CT would take ~1 s to sort.
_PERCENTILE_SAMPLES = 2_000_000
# Below this 0.5th percentile a volume of unknown modality holds air in Hounsfield units: it is a CT.
_HU_AIR_THRESHOLD = -900.0


@dataclass(frozen=True)
class Window:
    """A linear grey-level window: ``level`` (centre) and ``width`` in the volume's units, as DICOM defines them."""

    name: str
    level: float
    width: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.level) or not np.isfinite(self.width) or self.width <= 0:
            raise ValueError(f"a window needs a finite level and a positive width, got {self.level}/{self.width}")

    @property
    def lower(self) -> float:
        return self.level - self.width / 2.0

    @property
    def upper(self) -> float:
        return self.level + self.width / 2.0

    @property
    def key(self) -> str:
        """Stable text for cache keys: equal windows give equal keys, whatever float noise produced them."""
        return f"{self.name}:{self.level:.6g}/{self.width:.6g}"


WINDOW_PRESETS: dict[str, Window] = {
    "ct-soft-tissue": Window("ct-soft-tissue", 40.0, 400.0),
    "ct-lung": Window("ct-lung", -600.0, 1500.0),
    "ct-bone": Window("ct-bone", 400.0, 1800.0),
    "ct-brain": Window("ct-brain", 40.0, 80.0),
}
AUTO_WINDOW_NAME = "percentile"


def percentile_window(volume: Volume, percentiles: tuple[float, float] = PERCENTILE_RANGE) -> Window:
    """The window spanning the volume's 0.5-99.5 % intensity range, one for all its slices."""
    sample = _subsample(volume.array)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return Window(AUTO_WINDOW_NAME, 0.0, 1.0)
    lo, hi = (float(x) for x in np.percentile(finite, percentiles))
    if hi <= lo:  # a constant volume (or nearly): any positive width shows it as one grey
        hi = lo + 1.0
    return Window(AUTO_WINDOW_NAME, (lo + hi) / 2.0, hi - lo)


def looks_like_ct(volume: Volume) -> bool:
    """CT when the modality says so; for unlabelled volumes (NIfTI, NRRD), when air sits at about -1000 HU."""
    if volume.modality:
        return volume.modality.upper() == "CT"
    sample = _subsample(volume.array)
    return sample.size > 0 and float(np.percentile(sample, PERCENTILE_RANGE[0])) <= _HU_AIR_THRESHOLD


def default_window(volume: Volume) -> Window:
    """Soft tissue for CT (what most abdominal and thoracic questions are about), percentiles otherwise."""
    if looks_like_ct(volume):
        return WINDOW_PRESETS["ct-soft-tissue"]
    return percentile_window(volume)


def window_by_name(name: str, volume: Volume) -> Window:
    """A preset, ``percentile``, ``default``, or an explicit ``LEVEL,WIDTH`` (e.g. ``50,350``)."""
    key = name.strip().lower()
    if key in WINDOW_PRESETS:
        return WINDOW_PRESETS[key]
    if key == AUTO_WINDOW_NAME:
        return percentile_window(volume)
    if key == "default":
        return default_window(volume)
    custom = _parse_level_width(key)
    if custom is not None:
        return custom
    valid = ", ".join([*WINDOW_PRESETS, AUTO_WINDOW_NAME, "default"])
    raise InputError(f"unknown window '{name}': use one of {valid}, or LEVEL,WIDTH such as 40,400.")


def render_slice(volume: Volume, k: int, window: Window) -> np.ndarray:
    """Slice ``k`` as ``uint8 (nj, ni, 3)``: image row y = volume row j, image column x = volume column i.

    No flipping: the pixel the reasoner points at is exactly voxel ``(i=x, j=y, k)``, whatever the
    anatomical orientation of the series.
    """
    nk = volume.shape[0]
    if not 0 <= k < nk:
        raise InputError(f"slice {k} is outside the volume, which has slices 0 to {nk - 1}.")
    grey = _apply_window(volume.array[k], window)
    return np.stack([grey, grey, grey], axis=-1)


def _apply_window(plane: np.ndarray, window: Window) -> np.ndarray:
    """Linear map [lower, upper] -> [0, 255]; a lookup table for 8/16-bit integers (the common case, ~1 ms)."""
    if plane.dtype in (np.int16, np.uint16, np.int8, np.uint8):
        lut = _lookup_table(plane.dtype.str, window.lower, window.upper)
        unsigned = plane.view(plane.dtype.str.replace("i", "u"))  # two's complement bits index the table
        return np.take(lut, unsigned)
    return _to_uint8(plane, window.lower, window.upper)


def _to_uint8(values: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """The one rounding rule for both paths, so a value renders the same whatever its dtype."""
    out = (values.astype(np.float32) - np.float32(lower)) * np.float32(255.0 / (upper - lower))
    np.clip(out, 0.0, 255.0, out=out)
    np.nan_to_num(out, copy=False, nan=0.0)
    out += np.float32(0.5)
    return out.astype(np.uint8)


@lru_cache(maxsize=32)
def _lookup_table(dtype_str: str, lower: float, upper: float) -> np.ndarray:
    """Indexed by the value's bit pattern read as unsigned: for signed types, negatives sit in the upper half."""
    dtype = np.dtype(dtype_str)
    bits = np.arange(2 ** (8 * dtype.itemsize), dtype=np.uint32).astype(dtype.str.replace("i", "u"))
    return _to_uint8(bits.view(dtype).astype(np.float32), lower, upper)


def _subsample(array: np.ndarray) -> np.ndarray:
    """A regular 3D lattice of about ``_PERCENTILE_SAMPLES`` voxels: deterministic, and never one column only."""
    n = array.size
    if n <= _PERCENTILE_SAMPLES:
        return np.asarray(array).ravel()
    step = max(1, int(round((n / _PERCENTILE_SAMPLES) ** (1.0 / 3.0))))
    return np.asarray(array[::step, ::step, ::step]).ravel()


def _parse_level_width(text: str) -> Window | None:
    parts = text.replace("/", ",").split(",")
    if len(parts) != 2:
        return None
    try:
        level, width = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    if not (np.isfinite(level) and np.isfinite(width)) or width <= 0:
        raise InputError(f"window '{text}' needs a positive width: write LEVEL,WIDTH such as 40,400.")
    return Window("custom", level, width)
