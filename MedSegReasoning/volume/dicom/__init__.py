"""DICOM readers: a series folder, a single-frame file, or an enhanced multi-frame object, as a ``Volume``.

A series folder is read in two passes: headers only (``stop_before_pixels``) to find the series, check that
its slices form one regular grid and sort them, then pixels, only for the files of the chosen series. Every
way a folder can fail to be one clean volume (several series, missing or duplicated slices, mixed
orientations, damaged files) is an ``InputError`` that says where the problem is, because a silently wrong
geometry would put every mask in the wrong place.

Geometry of a series is what ITK's ``ImageSeriesReader`` gives (SimpleITK default, orthogonal direction):
slices sorted along the normal ``row x column`` of ImageOrientationPatient, origin at the first sorted slice,
slice spacing ``|last - first| / (n - 1)``. Enhanced multi-frame objects go through highdicom, which knows
their functional groups; the result is then turned to the same convention (k along the normal).

Modules: ``scan`` (entry points, folder scan and series selection), ``header`` (one file's header and what
kind of object it is), ``geometry`` (checks and sorting of a single-frame series, its ``Geometry``), ``pixels``
(decodability and decoding), ``multiframe`` (enhanced objects through highdicom).
"""

from .header import is_dicom_file
from .multiframe import read_multiframe
from .scan import SeriesSummary, list_series, read_dicom_file, read_dicom_folder

__all__ = [
    "SeriesSummary",
    "is_dicom_file",
    "list_series",
    "read_dicom_file",
    "read_dicom_folder",
    "read_multiframe",
]
