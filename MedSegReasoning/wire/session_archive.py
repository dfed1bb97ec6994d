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
import math
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

SESSION_FILE = "session.json"
MASK_DIR = "masks"
MEDIA_TYPE = "application/zip"
_MASK_NAME = re.compile(rf"{MASK_DIR}/[0-9a-f]{{32}}\.npz")  # always with fullmatch: "$" would accept a final "\n"


# What zipfile raises for damaged bytes besides BadZipFile (found by Testing/unit/test_fuzz.py): a bad CRC is a
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
        strangers = [n for n in names if n != SESSION_FILE and not _MASK_NAME.fullmatch(n)]
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
        contents: dict[str, bytes] = {}
        for member in members:
            try:
                with archive.open(member) as src:
                    content = src.read(member.file_size + 1)
            except _DAMAGED as exc:  # a CRC that fails, a cut or undecodable stream, an encrypted member
                raise ArchiveRefused(
                    "archive_invalid", f"{member.filename} in the archive cannot be read ({exc}): it is damaged."
                ) from None
            if len(content) != member.file_size:
                raise ArchiveRefused("archive_invalid", f"{member.filename} is not the size the archive states.")
            contents[member.filename] = content
        check_session_record(contents[SESSION_FILE])
        (folder / MASK_DIR).mkdir(parents=True, exist_ok=True)
        for name, content in contents.items():
            (folder / name).write_bytes(content)
    return folder


def check_session_record(raw: bytes) -> None:
    """Refuse a ``session.json`` whose structure a session cannot be built from (``ArchiveRefused``): not UTF-8 or
    not JSON, a missing or mistyped part, or a volume no round could run on (shape not three positive integers;
    spacing, origin or direction not finite, spacing not positive). The reader (``dialogue.restore``) then checks
    the format version and every mask; this check exists so that an archive is refused on arrival, not by every
    later round."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ArchiveRefused("archive_invalid", f"the archive's {SESSION_FILE} is not UTF-8 text.") from None
    except ValueError as exc:
        raise ArchiveRefused("archive_invalid", f"the archive's {SESSION_FILE} is not valid JSON ({exc}).") from None
    if not isinstance(doc, dict):
        raise ArchiveRefused("archive_invalid", f"the archive's {SESSION_FILE} is not a JSON object.")
    if "format" not in doc or "version" not in doc:
        return  # not a session file at all: the reader names the format it expected
    for key, kind in (("volume", dict), ("entities", list), ("rounds", list), ("edits", list)):
        if not isinstance(doc.get(key), kind):
            raise _refused(f"its {key!r} is missing or not a JSON {'object' if kind is dict else 'list'}")
    volume = doc["volume"]
    shape = volume.get("shape_kji")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(n) and n >= 1 for n in shape)):
        raise _refused(f"its volume shape_kji must be three positive integers, got {shape!r}")
    spacing = _finite_numbers(volume.get("spacing_mm"), 3, "spacing_mm")
    if min(spacing) <= 0:
        raise _refused(f"its volume spacing_mm must be positive, got {spacing}")
    _finite_numbers(volume.get("origin_lps_mm"), 3, "origin_lps_mm")
    direction = volume.get("direction")
    rows = direction if isinstance(direction, list) and all(isinstance(r, list) for r in direction) else None
    _finite_numbers([x for r in rows for x in r] if rows is not None else None, 9, "direction")
    if not _is_int(doc.get("next_entity_number")):
        raise _refused("its next_entity_number is not an integer")


def _refused(reason: str) -> ArchiveRefused:
    return ArchiveRefused("archive_invalid", f"the archive's {SESSION_FILE} is damaged: {reason}.")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite_numbers(value: object, count: int, name: str) -> list[float]:
    if not (
        isinstance(value, list)
        and len(value) == count
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value)
    ):
        raise _refused(f"its volume {name} must be {count} finite numbers, got {value!r}")
    return [float(x) for x in value]


def session_json(archive: bytes) -> dict[str, Any]:
    """The ``session.json`` inside an archive: the conversation's record (what ``ChatPanel.restore`` reads)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return json.loads(z.read(SESSION_FILE))
