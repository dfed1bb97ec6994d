"""Volumes: reading (DICOM, NIfTI, NRRD), windowing, rendering slices, writing DICOM series.

Importing this package is cheap (numpy only): pydicom, highdicom and SimpleITK are imported inside the
functions that need them, so the Slicer module and the CLI's help start fast.
"""

from __future__ import annotations

from .core import DicomSeriesInfo, Geometry, Volume, VolumeSource
from .dicom_writer import SeriesDescriptors, write_dicom_series
from .loader import load_volume
from .windowing import WINDOW_PRESETS, Window, default_window, render_slice, window_by_name

__all__ = [
    "WINDOW_PRESETS",
    "DicomSeriesInfo",
    "Geometry",
    "SeriesDescriptors",
    "Volume",
    "VolumeSource",
    "Window",
    "default_window",
    "load_volume",
    "render_slice",
    "window_by_name",
    "write_dicom_series",
]
