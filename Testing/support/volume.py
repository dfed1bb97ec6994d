"""Shared builders for the volume tests: small synthetic series with a geometry known exactly.

Plain builders, imported as ``support.volume``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from MedSegReasoning.volume.core import Geometry
from MedSegReasoning.volume.dicom_writer import SeriesDescriptors, write_dicom_series

SHAPE_KJI = (8, 40, 48)  # small, and with nj != ni so a swapped row/column axis cannot pass


def rotation(deg_x: float, deg_z: float) -> np.ndarray:
    """Rotation about x then z, degrees; a proper rotation (det +1)."""
    ax, az = np.radians(deg_x), np.radians(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def oblique_flipped_geometry() -> Geometry:
    """Rotated ~20 deg about two axes, and i and k flipped (still right-handed: k = i x j)."""
    direction = rotation(20.0, 25.0) @ np.diag([-1.0, 1.0, -1.0])
    return Geometry.from_arrays((12.5, -30.25, 41.0), (0.8, 0.9, 2.5), direction)


def left_handed_geometry() -> Geometry:
    """Oblique with k pointing against i x j: DICOM can only store it as slices in the opposite order."""
    direction = rotation(20.0, 25.0) @ np.diag([1.0, 1.0, -1.0])
    return Geometry.from_arrays((-5.0, 7.5, 20.0), (0.7, 0.7, 3.0), direction)


def distinct_array(shape: tuple[int, int, int] = SHAPE_KJI) -> np.ndarray:
    """int16 values that differ at every voxel and span negative HU, so any reordering shows."""
    n = int(np.prod(shape))
    return (np.arange(n, dtype=np.int32) % 3000 - 1000).astype(np.int16).reshape(shape)


def write_series(
    folder: Path, geometry: Geometry | None = None, array: np.ndarray | None = None, **kwargs
) -> list[Path]:
    """A shuffled-name CT series of ``array`` (default: distinct values) on ``geometry`` (default: oblique)."""
    kwargs.setdefault("shuffle_names", True)
    kwargs.setdefault("rng", np.random.default_rng(7))
    return write_dicom_series(
        distinct_array() if array is None else array,
        oblique_flipped_geometry() if geometry is None else geometry,
        folder,
        **kwargs,
    )


def second_series_descriptors(uid: str = "1.2.826.0.1.3680043.8.498.424242") -> SeriesDescriptors:
    return SeriesDescriptors(series_description="second", series_number=2, series_instance_uid=uid)


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy prints for one file (it writes its findings to stderr)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def dciodvfy_warnings(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Warning")]
