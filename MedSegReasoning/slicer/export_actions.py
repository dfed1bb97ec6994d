"""The module's export buttons: check the scene first (``export_check``), then write the session into a folder,
Slicer's DICOM database or a PACS.

DICOM-SEG and SR are written on this machine against the loaded series (``local_export``: the server has only the
voxels); ``.seg.nrrd`` and NIfTI come from the backend's export endpoint. The database and the PACS get the DICOM
files of a folder export, imported or sent with Slicer's own DICOM tools (``DICOMLib``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .export_check import ExportProblem, check_scene, save_export
from .local_export import DICOM_FORMATS, export_session_locally, series_files


def export_problems(client: Any, sync: Any, formats: Sequence[str]) -> list:
    """Why the session cannot be exported in ``formats`` yet (empty: it can). The user's edits are sent first, so
    what is checked, and exported, is what the user sees."""
    if sync is None or client is None:
        return [ExportProblem("no_session", "There is no session to export: connect and ask a question first.")]
    sync.push_edits(client)  # export what the user sees
    return check_scene(sync.scene, formats)


def export_to_folder(
    client: Any,
    sync: Any,
    formats: Sequence[str],
    folder: str,
    *,
    backend_python: Callable[[], Any],
    verifier: Callable[[], str | None],
) -> list[Path]:
    """DICOM-SEG and SR are written here, against the loaded series (``local_export``: the server has only the
    voxels); .seg.nrrd and NIfTI come from the backend's export endpoint. All saved into ``folder``.
    ``backend_python`` and ``verifier`` are asked only when a DICOM format is written."""
    import slicer

    dicom = [f for f in formats if f in DICOM_FORMATS]
    files: list[Path] = []
    if dicom:
        volume = sync.scene.volume_node
        files += export_session_locally(
            client,
            sync.session_id,
            series_files(volume, getattr(slicer, "dicomDatabase", None)),
            backend_python(),
            out_dir=folder,
            formats=dicom,
            verifier=verifier(),
            scene_sync=sync,
        ).files
    for fmt in formats:
        if fmt not in dicom:
            files += save_export(client.export(sync.session_id, fmt), fmt, folder)
    return files


def export_to_dicom_database(export_to: Callable[[str], list[Path]]) -> list[Path]:
    """Export (``export_to(folder)``) into a temporary folder and import it into Slicer's DICOM database (as the DICOM
    module would)."""
    import DICOMLib
    import slicer

    folder = tempfile.mkdtemp(prefix="medseg-export-")
    files = [f for f in export_to(folder) if f.suffix == ".dcm"]
    DICOMLib.DICOMUtils.importDicom(folder, slicer.dicomDatabase, copyFiles=True)
    return files


def export_to_pacs(export_to: Callable[[str], list[Path]], url: str) -> list[str]:
    """Export (``export_to(folder)``), then store on the PACS with Slicer's own sender (DICOMweb STOW-RS)."""
    import DICOMLib

    folder = tempfile.mkdtemp(prefix="medseg-export-")
    files = [str(f) for f in export_to(folder) if f.suffix == ".dcm"]
    DICOMLib.DICOMSender(files, url, protocol="DICOMweb")
    return files
