"""The export hook: a server session written out through the interop exporters, when they are installed.

Two ways in, tried in this order, so the server neither duplicates the exporters nor breaks when they change:

1. ``MedSegReasoning.export.export_session(session, volume, format, out_dir) -> list[Path]``: the contract the
   server prefers (one call, any format the exporters know);
2. the folder-based exporters (``export.sources.load_export_set`` on the session's saved folder, then the
   ``.seg.nrrd`` and NIfTI writers): the formats that need only the masks and the grid. DICOM-SEG and SR also need
   the DICOM series itself, which stays with the client (only voxels and geometry are uploaded), so they are
   refused with a sentence saying to export them where the series is.

Neither available: 501, with a sentence saying so.
"""

from __future__ import annotations

import importlib
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi.responses import Response

from .errors import ApiError, bad_request

NEEDS_DICOM_SOURCE = ("seg", "sr", "dicom-seg")


@dataclass(frozen=True)
class Exporter:
    """``run(server_session, format, out_dir) -> files``; ``formats`` empty means: whatever the exporter accepts."""

    run: Callable[[object, str, Path], list[Path]]
    formats: tuple[str, ...] = ()


def find_exporter() -> Exporter | None:
    try:
        package = importlib.import_module("MedSegReasoning.export")
    except ImportError:
        return None
    export_session = getattr(package, "export_session", None)
    if callable(export_session):

        def run_contract(session, fmt: str, out: Path) -> list[Path]:
            return [Path(p) for p in export_session(session.dialogue, session.volume, fmt, out)]

        return Exporter(run_contract, tuple(getattr(package, "EXPORT_FORMATS", ())))
    try:
        sources = importlib.import_module("MedSegReasoning.export.sources")
        slicer_seg = importlib.import_module("MedSegReasoning.export.slicer_seg")
        nifti = importlib.import_module("MedSegReasoning.export.nifti")
        load_export_set = sources.load_export_set
        write_seg_nrrd = slicer_seg.write_seg_nrrd
        write_nifti_labels = nifti.write_nifti_labels
    except (ImportError, AttributeError):
        return None

    def run_folder(session, fmt: str, out: Path) -> list[Path]:
        export_set = load_export_set(session.folder)
        if fmt == "seg-nrrd":
            return [Path(write_seg_nrrd(export_set, out / "segmentation.seg.nrrd"))]
        return [Path(p) for p in write_nifti_labels(export_set, out, "labels", True)]

    return Exporter(run_folder, ("seg-nrrd", "nifti"))


def check_format(exporter: Exporter, fmt: str) -> str:
    fmt = fmt.strip().lower()
    if fmt in NEEDS_DICOM_SOURCE and fmt not in exporter.formats:
        raise bad_request(
            "export_needs_source",
            f"{fmt} references the DICOM series the masks were made on, which stays on the client: export it where "
            "the series is (Slicer, or medseg-reasoning export on the workstation), or ask the server for seg-nrrd or "
            "nifti.",
        )
    if exporter.formats and fmt not in exporter.formats:
        raise bad_request(
            "unknown_format", f"export format {fmt!r} is not available here: use one of {', '.join(exporter.formats)}."
        )
    return fmt


def unavailable() -> ApiError:
    return ApiError(
        501,
        "export_unavailable",
        "this server has no session exporter installed (MedSegReasoning.export): export from Slicer instead, which "
        "writes DICOM-SEG and NIfTI from the entities it received.",
    )


def files_response(files: list[Path], root: Path) -> Response:
    """The exported files under ``root`` as the answer: one file as itself, several as one zip."""
    files = [f for f in files if f.is_file() and root in f.resolve().parents]
    if not files:
        raise ApiError(500, "export_failed", "the exporter wrote no file.")
    if len(files) == 1:
        name = files[0].name
        return Response(
            files[0].read_bytes(),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{_safe_name(name)}"'},
        )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, f.relative_to(root).as_posix())
    return Response(
        buf.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="export.zip"'},
    )


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100] or "export"
