"""The source image of an ``ExportSet`` read again and checked against the record before a DICOM export.

DICOM output must reference the very images the masks were drawn on, so ``load_checked_source`` reads the source
again and refuses (``InputError``) a source that is gone, is not DICOM, or changed: other voxels or geometry
(content hash), or other Study/Series/Frame of Reference UIDs than the ones recorded.

A series given explicitly (``export --series``: a session made from voxels a client uploaded records no path, or
the series moved) is held to the same record, with one allowance for uploads. Its grid must match the session's
(shape, and every corner voxel within ``GRID_TOLERANCE_VOXELS`` of a voxel), its recorded UIDs must match, and its
voxels must be the ones segmented: the same content hash, or, for an uploaded volume only, the same hash once the
re-read voxels are cast losslessly to one of the wire's voxel types, or computed in float64 from the files (what
Slicer's reader makes of a fractional rescale slope, where this reader keeps float32). Only for fractional values
that no recipe reproduces does the Series Instance UID the client sent with the volume (recorded by the session,
checked above) plus the matching grid stand in for the voxels; integer voxels read the same in every reader. Why the
allowance: Slicer applies rescale slope/intercept into a short, float or double volume while the engine's reader
keeps int16 where exact and float32 elsewhere, so the same images arrive under another dtype. A session the engine
read itself (it records a path) still needs the exact hash.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..volume.core import DicomSeriesInfo, Geometry, Volume
from ..wire.errors import InputError
from ..wire.filelinks import link_files
from ..wire.hashing import content_hasher
from .model import ExportSet
from .sources import _UID_NAMES

# A given series' grid matches the session's when every corner voxel centre lies within this fraction of the
# smallest voxel spacing of where the session has it: the masks then land on the voxels they were drawn on, while
# the last digits of positions (Slicer's RAS round trip, readers that average slice distances) do not matter.
GRID_TOLERANCE_VOXELS = 0.05
# The voxel types the upload wire accepts (docs/wire-format.md): the dtypes an uploaded volume can have had.
WIRE_DTYPES = ("int16", "uint16", "float32", "int32", "uint32", "uint8", "int8", "float64")


# ---------------------------------------------------------------------------------------------------------------
# The source, read again


def load_checked_source(
    export_set: ExportSet, series: Sequence[str | Path] | None = None, notes: list[str] | None = None
) -> Volume:
    """Read the image the masks were drawn on again, and refuse it if it is not what was segmented.

    ``series``: the DICOM series (one folder, or its files) to use instead of the recorded path; ``notes`` gets a
    line saying how a given series was matched."""
    from ..volume.dicomweb import is_dicomweb_url, load_dicomweb_series
    from ..volume.loader import load_volume

    if series:
        volume = _load_given_series([Path(p).expanduser() for p in series], export_set, load_volume, notes)
        how = _check_given_series(export_set, volume)
        export_set.volume = volume
        if notes is not None:
            notes.append(f"source series {volume.source.path}: {how}")
        return volume
    path = export_set.source_path
    if not path or path == "synthetic":
        raise InputError(
            f"{export_set.origin} does not record where its image came from (a session made from voxels a client "
            "uploaded, e.g. from Slicer): DICOM-SEG and SR need the source series; give it with --series DIR, or "
            "export seg-nrrd or nifti instead."
        )
    if is_dicomweb_url(path):
        volume = load_dicomweb_series(path)
    else:
        if not Path(path).exists():
            raise InputError(
                f"the source image {path} of {export_set.origin} no longer exists: restore it there (DICOM-SEG and "
                "SR must reference it), or export seg-nrrd or nifti, which need no source."
            )
        volume = _load_local(path, export_set, load_volume, notes)
    _check_same_source(export_set, volume)
    export_set.volume = volume
    return volume


def _load_local(path: str, export_set: ExportSet, load_volume, notes: list[str] | None = None) -> Volume:
    try:
        return load_volume(path)
    except InputError:
        uid = export_set.recorded_uids.get("series_instance_uid")
        if not uid:
            raise
        volume = load_volume(path, series_uid=uid)  # a folder with several series: the recorded one, said aloud
        if notes is not None:
            notes.append(f"{path} holds several series: used {uid}, the one {export_set.origin} was segmented on.")
        return volume


def _check_same_source(export_set: ExportSet, volume: Volume) -> None:
    path = export_set.source_path
    if volume.source.dicom is None:
        raise InputError(
            f"DICOM-SEG and SR need a DICOM source, but {path} is {volume.source.kind}: give the DICOM series it "
            "was made from with --series DICOM_DIR (its voxels must match), or export seg-nrrd or nifti instead "
            "(--format seg-nrrd,nifti)."
        )
    mismatch = _uid_mismatch(export_set, volume.source.dicom)
    if mismatch is not None:
        name, now, recorded = mismatch
        raise InputError(
            f"the source series at {path} changed since it was segmented: its {name} is now {now}, but "
            f"{export_set.origin} recorded {recorded}; export against the series the masks were made on, or segment "
            "the current series again."
        )
    if volume.shape != export_set.shape or (
        export_set.content_hash is not None and volume.content_hash() != export_set.content_hash
    ):
        raise InputError(
            f"the source image at {path} changed since it was segmented (its voxels or geometry differ from the "
            f"ones {export_set.origin} recorded): export against the image the masks were made on, or segment the "
            "current one again."
        )


# ---------------------------------------------------------------------------------------------------------------
# A series given with --series


def _load_given_series(paths: list[Path], export_set: ExportSet, load_volume, notes: list[str] | None = None) -> Volume:
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise InputError(f"--series {missing[0]} does not exist: give the DICOM series folder, or its files.")
    if len(paths) == 1:
        return _load_local(str(paths[0]), export_set, load_volume, notes)
    folders = [p for p in paths if p.is_dir()]
    if folders:
        raise InputError(
            f"--series takes one folder, or the files of one series, not a mix ({folders[0]} is a folder): "
            "give the folder alone, or only its files."
        )
    return _load_local(str(_linked_folder(paths)), export_set, load_volume)


def _linked_folder(files: list[Path]) -> Path:
    """The given files in a folder of their own, so the folder reader (series split, sorting, consistency checks)
    reads exactly them. The folder must outlive the export (the SEG is built from these files), so it is removed
    when the process ends."""
    parent = Path(tempfile.mkdtemp(prefix="medseg-series-"))
    atexit.register(shutil.rmtree, parent, True)
    return link_files(files, parent / "series")


def _uid_mismatch(export_set: ExportSet, info: DicomSeriesInfo) -> tuple[str, str, str] | None:
    """The first recorded UID the DICOM volume does not carry: (its name, the volume's value, the recorded one)."""
    now = {
        "study_instance_uid": info.study_instance_uid,
        "series_instance_uid": info.series_instance_uid,
        "frame_of_reference_uid": info.frame_of_reference_uid,
    }
    for key, recorded in export_set.recorded_uids.items():
        if now.get(key) != recorded:
            return _UID_NAMES[key], now.get(key) or "(none)", recorded
    return None


def _check_given_series(export_set: ExportSet, volume: Volume) -> str:
    """Refuse a given series that is not the one segmented; say how it matched."""
    where = volume.source.path
    if volume.source.dicom is None:
        raise InputError(
            f"--series {where} is {volume.source.kind}, not DICOM: give the DICOM series the masks were made on."
        )
    mismatch = _uid_mismatch(export_set, volume.source.dicom)
    if mismatch is not None:
        name, now, recorded = mismatch
        raise InputError(
            f"the series at {where} is not the one {export_set.origin} was segmented on: its {name} is {now}, but "
            f"the session recorded {recorded}; give the series the masks were made on."
        )
    difference = grid_difference(export_set.shape, export_set.geometry, volume)
    if difference:
        raise InputError(
            f"the series at {where} does not lie on the grid of the volume {export_set.origin} was segmented on "
            f"({difference}): give the series the masks were made on."
        )
    if export_set.content_hash is None or volume.content_hash() == export_set.content_hash:
        return "same grid, same voxels"
    uploaded = not export_set.source_path or export_set.source_path == "synthetic"
    dtype = _uploaded_dtype(volume, export_set) if uploaded else None
    if dtype is not None:
        return f"same grid, same voxels (uploaded as {dtype})"
    fractional = volume.array.dtype.kind == "f"  # this reader keeps int16 wherever the values are integers
    if uploaded and fractional and _float64_match(volume, export_set):
        return "same grid, same voxels (uploaded as float64)"
    if uploaded and fractional and export_set.recorded_uids.get("series_instance_uid"):
        # fractional values that another reader rounded differently than both recipes above: no hash can match,
        # but the recorded series and the grid (every slice position) do. Integers are the same in every reader, so
        # an integer series that differs is refused below.
        return "same grid, same Series Instance UID (the uploaded voxels were rounded differently)"
    if uploaded:
        raise InputError(
            f"the series at {where} lies on the session's grid but its voxels differ from the ones uploaded to "
            f"{export_set.origin}, and the session records no Series Instance UID to recognise the series by: give "
            "the series the masks were made on (not another phase or reconstruction of it), or segment this one "
            "again from a client that sends the series' UIDs with the volume."
        )
    raise InputError(
        f"the series at {where} lies on the session's grid but its voxels differ from the ones "
        f"{export_set.origin} was segmented on: give the series the masks were made on (not another phase or "
        "reconstruction of it), or segment this one again."
    )


def grid_difference(shape: tuple[int, int, int], geometry: Geometry, volume: Volume) -> str | None:
    """What differs between the grid ``shape`` + ``geometry`` and ``volume``'s, in words; None when they match
    (same shape, every corner voxel centre within ``GRID_TOLERANCE_VOXELS`` of the smallest spacing)."""
    if tuple(volume.shape) != tuple(shape):
        return f"shape [k, j, i] {list(volume.shape)} instead of {list(shape)}"
    corners = np.array([[i, j, k] for k in (0, shape[0] - 1) for j in (0, shape[1] - 1) for i in (0, shape[2] - 1)])
    distance = np.linalg.norm(geometry.index_to_physical(corners) - volume.geometry.index_to_physical(corners), axis=1)
    tolerance = GRID_TOLERANCE_VOXELS * min(geometry.spacing)
    if float(distance.max()) <= tolerance:
        return None
    mine, theirs = volume.geometry, geometry
    parts = [f"corner voxels up to {distance.max():.3g} mm apart, tolerance {tolerance:.3g} mm"]
    if not np.allclose(mine.origin, theirs.origin, atol=tolerance):
        parts.append(f"origin {_mm(mine.origin)} instead of {_mm(theirs.origin)}")
    if not np.allclose(mine.spacing, theirs.spacing, rtol=1e-4):
        parts.append(f"spacing {_mm(mine.spacing)} instead of {_mm(theirs.spacing)}")
    if not np.allclose(mine.direction_matrix, theirs.direction_matrix, atol=1e-4):
        parts.append("other axis directions")
    return "; ".join(parts)


def _mm(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _uploaded_dtype(volume: Volume, export_set: ExportSet) -> str | None:
    """The wire dtype under which ``volume``'s voxels, on the session's recorded geometry, have the session's
    content hash (``Volume.content_hash``'s recipe, computed slice by slice, without a full-size copy); None when
    no lossless cast matches. Only types that hold every value exactly are tried."""
    array = volume.array
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    integral = array.dtype.kind in "iub" or all(np.array_equal(s, np.round(s)) for s in array)
    for name in WIRE_DTYPES:
        dtype = np.dtype(name)
        if dtype.kind in "iu":
            limits = np.iinfo(dtype)
            if not integral or low < limits.min or high > limits.max:
                continue
        h = content_hasher(name, export_set.shape, export_set.geometry.affine)
        exact = True
        for plane in array:
            cast = plane.astype(dtype)
            if dtype.kind == "f" and not np.array_equal(cast, plane):
                exact = False
                break
            h.update(np.ascontiguousarray(cast).tobytes())
        if exact and h.hexdigest() == export_set.content_hash:
            return name
    return None


def _float64_match(volume: Volume, export_set: ExportSet) -> bool:
    """Whether the files, through their modality transform computed in float64 (as Slicer's reader does for a
    fractional rescale slope, where this reader keeps float32), give the session's content hash."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    info = volume.source.dicom
    if info is None or info.is_multiframe or len(info.files) != volume.shape[0]:
        return False
    h = content_hasher("float64", export_set.shape, export_set.geometry.affine)  # the session's recorded grid
    for path in info.files:  # files[k] is slice k
        ds = pydicom.dcmread(path)
        values = np.ascontiguousarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
        if values.shape != volume.shape[1:]:
            return False
        h.update(values.tobytes())
    return h.hexdigest() == export_set.content_hash
