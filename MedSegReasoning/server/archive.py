"""A session as one zip: the session folder's own files (``session.json`` + ``masks/*.npz``), nothing else.

Why: a client that saved a conversation (Slicer keeps it with the scene) must be able to continue it after the
server forgot the session (idle expiry, a restart without shared state, another server). Shipping the session
folder itself keeps every detail (rounds, the superseded masks undo needs, edits, the next entity number) without a
second format to keep in step with ``docs/session-format.md``.

The zip comes from a client, so it is untrusted: only the two kinds of member names are accepted (no folders, no
``..``, no links), sizes are capped before anything is inflated, and the folder is then read by the same loader
that checks format, version and every mask's content hash. Masks are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

from ..dialogue.store import MASK_DIR, SESSION_FILE
from .errors import bad_request

MEDIA_TYPE = "application/zip"
_MASK_NAME = re.compile(rf"^{MASK_DIR}/[0-9a-f]{{32}}\.npz$")


def pack_session(folder: Path) -> bytes:
    """The saved session in ``folder`` as zip bytes (masks stored as they are: they are compressed already)."""
    folder = Path(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.write(folder / SESSION_FILE, SESSION_FILE, compress_type=zipfile.ZIP_DEFLATED)
        for mask in sorted((folder / MASK_DIR).glob("*.npz")):
            z.write(mask, f"{MASK_DIR}/{mask.name}", compress_type=zipfile.ZIP_STORED)
    return buf.getvalue()


def unpack_session(data: bytes, folder: Path, max_bytes: int) -> None:
    """Write the archive's members into ``folder`` after checking names and sizes (ApiError 400 when refused).

    The caller then loads the folder with ``dialogue.store.load_session``, which checks the content itself.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise bad_request(
            "archive_invalid", "the body is not a zip archive: send the bytes GET /v1/sessions/{id}/archive returned."
        ) from None
    with archive:
        members = archive.infolist()
        names = [m.filename for m in members]
        if SESSION_FILE not in names:
            raise bad_request("archive_invalid", f"the archive holds no {SESSION_FILE}: it is not a saved session.")
        strangers = [n for n in names if n != SESSION_FILE and not _MASK_NAME.match(n)]
        if strangers:
            raise bad_request(
                "archive_invalid",
                f"the archive holds {strangers[0]!r}, which is not part of a saved session "
                f"(only {SESSION_FILE} and {MASK_DIR}/<hash>.npz are).",
            )
        if len(set(names)) != len(names):
            raise bad_request("archive_invalid", "the archive names a file twice.")
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise bad_request(
                "archive_too_large",
                f"the archive unpacks to {total} bytes, more than this server's limit of {max_bytes}.",
            )
        (folder / MASK_DIR).mkdir(parents=True, exist_ok=True)
        for member in members:
            with archive.open(member) as src:
                content = src.read(member.file_size + 1)
            if len(content) != member.file_size:
                raise bad_request("archive_invalid", f"{member.filename} is not the size the archive states.")
            (folder / member.filename).write_bytes(content)
