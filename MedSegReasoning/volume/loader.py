"""One entry point from a path to a ``Volume``: the user gives whatever they have, the loader finds out what it is.

Dispatch is by what the path *is* (folder, DICOM content), and only then by extension, because DICOM files
often have no extension or a misleading one.
"""

from __future__ import annotations

from pathlib import Path

from ..wire.errors import InputError
from .core import Volume

_NOT_AN_IMAGE = "give a DICOM folder or file, NIfTI (.nii, .nii.gz) or NRRD (.nrrd, .nhdr)"


def load_volume(path: str | Path, series_uid: str | None = None) -> Volume:
    """Read a DICOM series folder, a DICOM file (single- or multi-frame), NIfTI or NRRD.

    ``series_uid`` picks one series in a folder that holds several (the CLI's ``--series``). An
    ``http(s)://…/studies/{uid}/series/{uid}`` URL is read from a DICOMweb server (``volume.dicomweb``).
    """
    from .finite import with_finite_voxels

    return with_finite_voxels(_read(path, series_uid))


def _read(path: str | Path, series_uid: str | None) -> Volume:
    from . import dicom, dicomweb, itk_io

    if isinstance(path, str) and dicomweb.is_dicomweb_url(path):
        return dicomweb.load_dicomweb_series(path)
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path} does not exist: check the path ({_NOT_AN_IMAGE}).")
    if path.is_dir():
        return dicom.read_dicom_folder(path, series_uid)
    if dicom.is_dicom_file(path):
        return dicom.read_dicom_file(path, series_uid)
    if itk_io.image_kind(path) is not None:
        if series_uid:
            raise InputError(f"--series applies to DICOM input only, and {path.name} is not DICOM: leave it out.")
        return itk_io.read_itk_image(path)
    raise InputError(f"{path} is not an image this tool reads: {_NOT_AN_IMAGE}.")
