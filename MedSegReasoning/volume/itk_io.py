"""NIfTI and NRRD through SimpleITK: it converts NIfTI's RAS header to LPS, so this module never touches RAS.

SimpleITK's image and our ``Geometry`` share one convention (LPS, origin at the first voxel's centre, direction
row-major with columns = i, j, k), and ``GetArrayFromImage`` returns ``[k, j, i]``: conversion is a copy of
numbers, never a reinterpretation.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..wire.errors import InputError
from .core import Geometry, Volume, VolumeSource

READ_SUFFIXES = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd"}
# A detached .nhdr names its data file, which a rename-into-place cannot move along: labels go to single files.
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd")


def image_kind(path: Path) -> str | None:
    """``nifti``, ``nrrd``, or None when the name has neither extension."""
    name = path.name.lower()
    for suffix, kind in READ_SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return None


def read_itk_image(path: Path) -> Volume:
    """Read a 3D scalar NIfTI or NRRD image as a ``Volume`` (modality unknown: these formats do not say)."""
    import SimpleITK as sitk

    kind = image_kind(path)
    if kind is None:
        raise InputError(f"{path} is neither NIfTI (.nii, .nii.gz) nor NRRD (.nrrd, .nhdr): give one of those.")
    try:
        with library_path(path) as name:
            _check_declared_size(path, name, kind)
            image = sitk.ReadImage(name)
    except RuntimeError as exc:
        raise InputError(
            f"{path} could not be read as {kind.upper()} ({_reason(exc)}): check that the file is complete "
            "and really is that format."
        ) from exc
    image = _as_3d_scalar(image, path)
    array = sitk.GetArrayFromImage(image)
    if kind == "nifti":
        array = _with_stored_non_finite(path, array)
    if array.dtype == np.float64:  # model inputs and windows gain nothing from double precision
        array = array.astype(np.float32)
    geometry = checked_geometry(geometry_of(image), path)
    return Volume(array=array, geometry=geometry, modality="", source=VolumeSource(kind=kind, path=str(path)))


# deflate (gzip) cannot expand data more than about 1032-fold: a .nii.gz announcing more is not a complete image
_MAX_DEFLATE_RATIO = 1032


def _check_declared_size(path: Path, name: str, kind: str) -> None:
    """Refuse a NIfTI header that announces more voxels than the file could hold (e.g. 65535 x 65535 x 65535),
    naming the file, before ITK allocates memory for them: that is a damaged file (exit 2), not a lack of memory."""
    import SimpleITK as sitk

    lower = path.name.lower()
    ratio = 1 if lower.endswith(".nii") else _MAX_DEFLATE_RATIO if lower.endswith(".nii.gz") else None
    if kind != "nifti" or ratio is None:
        return
    reader = sitk.ImageFileReader()
    reader.SetFileName(name)
    reader.ReadImageInformation()
    voxels = int(np.prod(reader.GetSize(), dtype=np.float64)) * max(1, reader.GetNumberOfComponents())
    size = path.stat().st_size
    if voxels > size * ratio:  # at least one byte per voxel
        dims = " x ".join(str(n) for n in reader.GetSize())
        raise InputError(
            f"{path} announces {dims} voxels, more than its {size:,} bytes can hold: the header is damaged or the "
            "file truncated; copy it again from its source."
        )


def _with_stored_non_finite(path: Path, array: np.ndarray) -> np.ndarray:
    """``array`` with NaN where the file stores NaN or infinity: ITK's NIfTI reader silently turns them into 0, a
    value that may be tissue, which would hide them from the one rule for non-finite voxels (``volume.finite``).

    nibabel reads the voxels as stored (float images only: an integer image cannot hold NaN).
    """
    if array.dtype.kind != "f":
        return array
    import nibabel

    stored = np.asanyarray(nibabel.load(path).dataobj)  # type: ignore[attr-defined]  # NIfTI images have it; the base stub lacks it
    if stored.size != array.size:  # not the layout assumed below: keep ITK's reading
        return array
    bad = ~np.isfinite(stored.reshape(-1, order="F").reshape(array.shape))  # NIfTI stores i fastest, as [k, j, i]
    if bad.any():
        array = array.copy() if not array.flags.writeable else array
        array[bad] = np.nan
    return array


def checked_geometry(geometry: Geometry, path: Path) -> Geometry:
    """``geometry`` if it places voxels in space (finite origin, positive spacing, invertible direction); else
    an ``InputError`` naming the file, before any model runs: a NaN in a header's matrix would otherwise reach
    the measurements and result.json."""
    origin, spacing = np.asarray(geometry.origin), np.asarray(geometry.spacing)
    direction = geometry.direction_matrix
    finite = np.isfinite(origin).all() and np.isfinite(spacing).all() and np.isfinite(direction).all()
    if not finite or (spacing <= 0).any() or abs(float(np.linalg.det(direction))) < 1e-6:
        raise InputError(
            f"{path} has a header whose geometry is not usable (origin {origin.tolist()}, spacing {spacing.tolist()}, "
            f"direction {direction.round(4).tolist()}): the header is damaged; fix it (e.g. in Slicer) or export the "
            "image again."
        )
    return geometry


def geometry_of(image) -> Geometry:
    """The ``Geometry`` of a 3D SimpleITK image (same convention, so numbers are copied as they are)."""
    return Geometry.from_arrays(image.GetOrigin(), image.GetSpacing(), np.reshape(image.GetDirection(), (3, 3)))


def reorient_to_lps(volume: Volume) -> Volume:
    """The same voxels with axes permuted/flipped so i, j, k run as close as possible to L, P, S.

    Lossless (no resampling): only the array order and the geometry change together. A rendered axial slice
    then shows anterior at the top and the patient's right on the left, as radiologists (and the models
    trained on their images) expect; RAS-stored NIfTI files would otherwise appear upside down.
    """
    import SimpleITK as sitk

    image = sitk.DICOMOrient(_to_sitk(volume.array, volume.geometry), "LPS")
    return Volume(
        array=sitk.GetArrayFromImage(image),
        geometry=geometry_of(image),
        modality=volume.modality,
        source=volume.source,
    )


def write_label_image(path: Path, mask_kji: np.ndarray, geometry: Geometry) -> Path:
    """Write a ``[k, j, i]`` uint8 label map with exactly ``geometry``; atomic, so no reader sees half a file.

    NRRD keeps the geometry to full double precision; NIfTI stores it as float32 (about 1e-5 mm), which is
    the format's limit, not this function's.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.name.lower().endswith(WRITE_SUFFIXES):
        raise InputError(f"cannot write labels to {path.name}: give a file name ending in {', '.join(WRITE_SUFFIXES)}.")
    mask = np.asarray(mask_kji)
    if mask.ndim != 3:
        raise ValueError(f"a label image needs a 3D [k, j, i] array, got shape {mask.shape}")
    image = _to_sitk(np.ascontiguousarray(mask, dtype=np.uint8), geometry)
    from ..atomic import atomic_output

    with atomic_output(path) as tmp, library_path(tmp) as name:
        sitk.WriteImage(image, name, useCompression=True)
    return path


@contextlib.contextmanager
def library_path(path: Path) -> Iterator[str]:
    """A name for ``path`` that ITK's C++ accepts, valid inside the ``with``.

    Why: Linux file names are bytes, and one that is not UTF-8 reaches Python as a string with surrogate escapes,
    which SimpleITK's SWIG layer cannot convert: ITK then *aborts the process* (SIGABRT), beyond any ``except``.
    Such a path is reached through symbolic links in a fresh temporary folder instead: one to the file's folder
    (the file name itself kept, so writers still choose the format by its suffixes) or, where the file name is the
    undecodable part, one to the file under a neutral name with the same suffixes. UTF-8 paths pass unchanged.
    """
    path = Path(path)
    if _utf8(str(path)):
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="medseg-path-") as tmp:
        if _utf8(path.name):
            folder = Path(tmp) / "folder"
            os.symlink(path.parent.absolute(), folder, target_is_directory=True)
            yield str(folder / path.name)
        else:
            suffixes = "".join(s for s in path.suffixes if _utf8(s))
            link = Path(tmp) / f"file{suffixes}"
            os.symlink(path.absolute(), link)
            yield str(link)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _to_sitk(array: np.ndarray, geometry: Geometry):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(tuple(geometry.direction_matrix.ravel()))
    return image


def _as_3d_scalar(image, path: Path):
    """A 3D one-component image: 2D gains a one-slice axis, 4D with one volume is squeezed, the rest refused."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path} holds {image.GetNumberOfComponentsPerPixel()} values per voxel (a vector or colour image): "
            "give a single-channel (scalar) volume."
        )
    dim = image.GetDimension()
    if dim == 2:
        return sitk.JoinSeries(image)
    if dim == 4:
        size = image.GetSize()
        if size[3] == 1:
            return sitk.Extract(image, (*size[:3], 0), (0, 0, 0, 0))
        raise InputError(
            f"{path} is a 4D image with {size[3]} volumes: extract the one 3D volume to segment "
            "(e.g. with Slicer or fslroi) and give that."
        )
    if dim != 3:
        raise InputError(f"{path} is a {dim}D image: give a 3D volume.")
    return image


def _reason(exc: Exception) -> str:
    """SimpleITK's messages start with C++ file paths and line numbers; the last line is the reason."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1].removeprefix("sitk::ERROR:").strip() if lines else type(exc).__name__
