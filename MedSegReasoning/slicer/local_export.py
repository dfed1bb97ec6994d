"""DICOM-SEG and SR of a server session, written on this computer against the series Slicer loaded.

Why here and not on the server: the server only ever received voxels and geometry (``PUT .../volume``); the DICOM
series, which a SEG must reference instance by instance, stays on the Slicer machine. So the module fetches the
session (``MedSegClient.session_archive``: ``session.json`` + ``masks/*.npz``, docs/session-format.md), unpacks it
into a temporary session folder, and runs the backend environment's own ``medseg-reasoning export`` on it with
``--series`` (the files of the loaded series) as a child process. That keeps highdicom and pydicom out of Slicer's
Python (the backend venv has them) and gives the export exactly the checks the CLI makes: the series must lie on
the session's grid, carry the UIDs the session records and hold the voxels that were segmented.

Order: push the user's pending Segment Editor edits (so the SEG holds what the user sees), fetch the archive,
unpack (only the two kinds of member names a saved session has), put the series' files into one folder (links
where possible: a command line of 300 file paths would pass Windows' 32k limit), run the export (no shell,
output captured), map its exit code to an error whose message is the command's own sentence, return the files.

Standard library only: this runs in Slicer's Python.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..wire.childenv import child_environment
from ..wire.errors import EXIT_BAD_INPUT, EXIT_SERVICE, InputError, MedSegError, ServiceError
from ..wire.filelinks import link_files
from ..wire.session_archive import ArchiveRefused, unpack_session

DICOM_FORMATS = ("seg", "sr")
FILE_NAMES = {"seg": "seg.dcm", "sr": "sr.dcm"}  # as ``export.command`` names them
MAX_ARCHIVE_BYTES = 4 << 30  # unpacked; a session's masks are packed bits, far below this
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"  # DICOMScalarVolumePlugin: slice k's SOP Instance UID, in k order
SERIES_UID_TAG = "0020,000E"
# What the session records of the source series (wire: X-MedSeg-Volume "dicom"), and the tags that hold it
UID_TAGS = {
    "study_instance_uid": "0020,000D",
    "series_instance_uid": SERIES_UID_TAG,
    "frame_of_reference_uid": "0020,0052",
}
DEFAULT_TIMEOUT_S = 900.0


class LocalExportFailed(MedSegError):
    """The export command could not run or failed for another reason than bad input or a refusing PACS."""


@dataclass(frozen=True)
class LocalExport:
    """What an export wrote (``files``, empty when stored on a PACS) and the command's own report lines."""

    files: list[Path]
    notes: list[str] = field(default_factory=list)
    stored: bool = False


def export_session_locally(
    client: Any,
    session_id: str,
    series_files: Sequence[str | Path],
    python: str | Path,
    *,
    out_dir: str | Path | None = None,
    dicomweb: str | None = None,
    formats: Iterable[str] = DICOM_FORMATS,
    verifier: str | None = None,
    organization: str | None = None,
    scene_sync: Any = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> LocalExport:
    """Write the session's DICOM-SEG (and SR) into ``out_dir``, or store them on ``dicomweb`` (STOW-RS).

    ``series_files``: the DICOM files of the series the session's volume was loaded from (``series_files`` below);
    ``python``: the backend environment's interpreter (``backend_setup.venv_python``); ``verifier``: the user's
    name (Last^First), so confirmed findings are marked VERIFIED in the SR; ``scene_sync``: a ``SceneSync`` whose
    pending edits are pushed first. Files already in ``out_dir`` with the same names are replaced.
    """
    formats = [f.strip().lower() for f in formats if f.strip()]
    wrong = [f for f in formats if f not in DICOM_FORMATS]
    if wrong or not formats:
        raise InputError(
            f"only DICOM-SEG and SR are exported on this computer ({', '.join(wrong) or 'nothing'} asked for): "
            "export .seg.nrrd and NIfTI through the server."
        )
    if (out_dir is None) == (dicomweb is None):
        raise InputError("give an output folder or a DICOMweb address (one of them).")
    python = Path(python)
    if not python.exists():
        raise LocalExportFailed(
            f"DICOM-SEG and SR are written on this computer by the backend's Python ({python}), which is not "
            "installed: press Install in the module's Server section, or export .seg.nrrd or NIfTI instead."
        )
    if not series_files:
        raise InputError(
            "the input volume names no DICOM files: load the series through the DICOM module, or export "
            ".seg.nrrd or NIfTI instead."
        )
    missing = [str(f) for f in series_files if not Path(f).is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} file(s) of the loaded series are gone (e.g. {missing[0]}): import the series into "
            "Slicer's DICOM database again, or export .seg.nrrd or NIfTI instead."
        )
    if scene_sync is not None:
        scene_sync.push_edits(client, session_id)
    archive = client.session_archive(session_id)
    with tempfile.TemporaryDirectory(prefix="medseg-local-export-") as work:
        session_dir = Path(work) / "session"
        unpack_session_archive(archive, session_dir)
        series_dir = link_files(series_files, Path(work) / "series")
        argv = [str(python), "-m", "MedSegReasoning.cli", "export", str(session_dir), "--series", str(series_dir)]
        argv += ["--format", ",".join(formats)]
        if dicomweb is not None:
            argv += ["--dicomweb", dicomweb]
        else:
            assert out_dir is not None  # exactly one of out_dir and dicomweb is given: checked above
            out = Path(out_dir)
            argv += ["--to", str(out), "--force"]
        if verifier:
            argv += ["--verifier", verifier]
            if organization:
                argv += ["--organization", organization]
        names = {str(session_dir): "the session", str(series_dir): "the loaded series"}
        stdout = _run(argv, timeout_s, names)
    notes = [_friendly(line, names) for line in stdout.splitlines() if line.strip()]
    if dicomweb is not None:
        return LocalExport(files=[], notes=notes, stored=True)
    files = [out / FILE_NAMES[f] for f in formats if (out / FILE_NAMES[f]).is_file()]
    return LocalExport(files=files, notes=notes)


def series_files(volume_node: Any, dicom_database: Any) -> list[str]:
    """The DICOM files a volume node was loaded from, in its slice order, from Slicer's DICOM database.

    ``DICOM.instanceUIDs`` (set by Slicer's DICOMScalarVolumePlugin) lists the SOP Instance UID of every slice;
    ``fileForInstance`` finds each file. Where an instance is not in the database any more, the whole series is
    taken by its Series Instance UID (``filesForSeries``), and the export's own checks decide whether it fits.
    """
    uids = (volume_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split() if volume_node is not None else []
    if not uids or dicom_database is None:
        return []
    files = [dicom_database.fileForInstance(uid) for uid in uids]
    if all(files):
        return [str(f) for f in files]
    series_uid = next(
        (dicom_database.instanceValue(uid, SERIES_UID_TAG) for uid, f in zip(uids, files, strict=True) if f), ""
    )
    return [str(f) for f in dicom_database.filesForSeries(series_uid)] if series_uid else []


def series_uids(volume_node: Any, dicom_database: Any) -> dict[str, str]:
    """The Study, Series and Frame of Reference UIDs of the series a volume node was loaded from (empty for a
    volume not loaded from DICOM): sent with the volume so the session records which series it was made on."""
    uids = (volume_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split() if volume_node is not None else []
    if not uids or dicom_database is None:
        return {}
    found = {key: str(dicom_database.instanceValue(uids[0], tag) or "").strip() for key, tag in UID_TAGS.items()}
    return {key: uid for key, uid in found.items() if uid}


def unpack_session_archive(data: bytes, folder: Path) -> Path:
    """Write a session archive (``session_archive``'s zip) into ``folder`` after ``session_archive``'s member checks;
    the export's loader then checks every mask's hash."""
    try:
        return unpack_session(data, folder, MAX_ARCHIVE_BYTES)
    except ArchiveRefused as exc:
        raise LocalExportFailed(
            f"the server's session archive cannot be unpacked ({exc}): update the backend, then export again."
        ) from None


def _run(argv: list[str], timeout_s: float, names: dict[str, str]) -> str:
    # Slicer's launcher puts its own Python home and site-packages in the environment, which would make the backend
    # venv's interpreter load Slicer's (another numpy under highdicom): the export runs on the venv's own paths.
    env = child_environment({"PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"})
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise LocalExportFailed(
            f"the export took longer than {timeout_s:.0f} s and was stopped: try again, or export from a terminal "
            "with medseg-reasoning export."
        ) from None
    except OSError as exc:
        raise LocalExportFailed(f"the backend's Python could not be started ({exc.strerror or exc}).") from None
    if done.returncode == 0:
        return done.stdout
    message = _friendly(_error_sentence(done.stderr), names)
    if done.returncode == EXIT_BAD_INPUT:
        raise InputError(message)
    if done.returncode == EXIT_SERVICE:
        raise ServiceError(message)
    raise LocalExportFailed(f"the export failed (exit code {done.returncode}): {message}")


def _error_sentence(stderr: str) -> str:
    """The CLI's ``medseg-reasoning: error: <sentence>`` line, else the last line it printed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if ": error: " in line:
            return line.split(": error: ", 1)[1]
    return lines[-1] if lines else "no message"


def _friendly(text: str, names: dict[str, str]) -> str:
    """Temporary folder paths replaced by what they are to the user; the CLI's option advice dropped where the
    module already gave the option."""
    for path, name in names.items():
        text = text.replace(path, name)
    text = text.replace("the series at the loaded series", "the loaded series")
    text = text.replace("source series the loaded series:", "the loaded series:")
    return text.replace("give it with --series DIR, or ", "")


__all__ = [
    "LocalExport",
    "LocalExportFailed",
    "export_session_locally",
    "link_files",
    "series_files",
    "series_uids",
    "unpack_session_archive",
]
