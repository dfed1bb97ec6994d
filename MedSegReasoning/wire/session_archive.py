"""A session as one zip: the session folder's own files (``session.json`` + ``masks/*.npz``), nothing else.

Why: a client that saved a conversation (Slicer keeps it with the scene) must be able to continue it after the
server forgot the session (idle expiry, a restart without shared state, another server), and to export DICOM where
the series is. Shipping the session folder itself keeps every detail (rounds, the superseded masks undo needs,
edits, the next entity number) without a second format to keep in step with ``docs/session-format.md``.

An archive crosses the network, so whoever unpacks it treats it as untrusted: only the two kinds of member names
are accepted (no folders, no ``..``, no links), sizes are capped before anything is inflated, and the folder is
then read by ``dialogue.restore.load_session``, which checks format, version and every mask's content hash (masks
are read with ``allow_pickle=False``). Standard library only: the server and the Slicer side both use it.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

SESSION_FILE = "session.json"
MASK_DIR = "masks"
MEDIA_TYPE = "application/zip"
_MASK_NAME = re.compile(rf"^{MASK_DIR}/[0-9a-f]{{32}}\.npz$")


# What zipfile raises for damaged bytes besides BadZipFile (found by Testing/test_fuzz.py): a bad CRC is a
# BadZipFile too, but only when the member is read; a cut deflate stream is zlib.error or EOFError.
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError, RuntimeError, OSError)


class ArchiveRefused(ValueError):
    """The bytes are not a session archive one may unpack; ``code`` names why (``archive_invalid`` / ``_too_large``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def pack_session(folder: Path) -> bytes:
    """The saved session in ``folder`` as zip bytes (masks stored as they are: they are compressed already)."""
    folder = Path(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.write(folder / SESSION_FILE, SESSION_FILE, compress_type=zipfile.ZIP_DEFLATED)
        for mask in sorted((folder / MASK_DIR).glob("*.npz")):
            z.write(mask, f"{MASK_DIR}/{mask.name}", compress_type=zipfile.ZIP_STORED)
    return buf.getvalue()


def unpack_session(data: bytes, folder: Path, max_bytes: int) -> Path:
    """Write the archive's members into ``folder`` after checking names and sizes; ``ArchiveRefused`` otherwise."""
    folder = Path(folder)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _DAMAGED:
        raise ArchiveRefused(
            "archive_invalid", "the body is not a zip archive: send the bytes GET /v1/sessions/{id}/archive returned."
        ) from None
    with archive:
        members = archive.infolist()
        names = [m.filename for m in members]
        if SESSION_FILE not in names:
            raise ArchiveRefused("archive_invalid", f"the archive holds no {SESSION_FILE}: it is not a saved session.")
        strangers = [n for n in names if n != SESSION_FILE and not _MASK_NAME.match(n)]
        if strangers:
            raise ArchiveRefused(
                "archive_invalid",
                f"the archive holds {strangers[0]!r}, which is not part of a saved session "
                f"(only {SESSION_FILE} and {MASK_DIR}/<hash>.npz are).",
            )
        if len(set(names)) != len(names):
            raise ArchiveRefused("archive_invalid", "the archive names a file twice.")
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise ArchiveRefused(
                "archive_too_large", f"the archive unpacks to {total} bytes, more than the limit of {max_bytes}."
            )
        (folder / MASK_DIR).mkdir(parents=True, exist_ok=True)
        for member in members:
            try:
                with archive.open(member) as src:
                    content = src.read(member.file_size + 1)
            except _DAMAGED as exc:  # a CRC that fails, a cut or undecodable stream, an encrypted member
                raise ArchiveRefused(
                    "archive_invalid", f"{member.filename} in the archive is damaged ({exc})."
                ) from None
            if len(content) != member.file_size:
                raise ArchiveRefused("archive_invalid", f"{member.filename} is not the size the archive states.")
            (folder / member.filename).write_bytes(content)
    return folder


def session_json(archive: bytes) -> dict[str, Any]:
    """The ``session.json`` inside an archive: the conversation's record (what ``ChatPanel.restore`` reads)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return json.loads(z.read(SESSION_FILE))
