"""Loading a saved session folder back (``store.py`` writes it and explains why every state on disk is complete).

``load_session`` refuses a folder of another format or version and checks every mask's content hash
(``store._read_mask``); ``open_session`` is ``--session DIR``: continue the session there, or start one.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from ..terminology.matcher import Terminology
from ..volume.core import Volume
from ..wire.errors import InputError, MedSegError
from ..wire.masks import CompactMask
from ..wire.session_archive import SESSION_FILE
from .entity import Entity
from .records import EditRecord, VolumeRecord
from .session import Session
from .store import FORMAT, FORMAT_VERSION, _read_mask, _round_from_dict


def load_session(folder: str | Path, *, terminology: Terminology | None = None) -> Session:
    """The session saved in ``folder``, identical to the one that was saved (``==`` holds).

    A damaged folder (a field missing or of the wrong type, text that is not UTF-8, a mask file that is not a
    complete ``.npz``) is an ``InputError`` naming the folder, never an internal error.
    """
    folder = Path(folder)
    path = folder / SESSION_FILE
    if not path.is_file():
        raise InputError(f"{folder} holds no {SESSION_FILE}: it is not a MedSegReasoning session folder.")
    try:
        return _load(folder, path, terminology)
    except MedSegError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, EOFError, zipfile.BadZipFile) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:160]
        raise InputError(
            f"the session folder {folder} is damaged ({type(exc).__name__}: {what}): restore it from a copy or an "
            "exported session archive, or start a new session in another folder."
        ) from None


def _load(folder: Path, path: Path, terminology: Terminology | None) -> Session:
    try:
        doc = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}): the session folder is damaged.") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{path} is not a {FORMAT} file.")
    if doc.get("version") != FORMAT_VERSION:
        raise InputError(
            f"{path} uses session format version {doc.get('version')}, but this MedSegReasoning reads version "
            f"{FORMAT_VERSION}: open it with the MedSegReasoning that wrote it, or upgrade."
        )
    masks: dict[str, CompactMask] = {}

    def mask_of(d: dict[str, Any]) -> CompactMask:
        name = d["mask"]["file"]
        if name not in masks:
            masks[name] = _read_mask(folder, name)
        return masks[name]

    session = Session(
        VolumeRecord.from_dict(doc["volume"]), folder=folder, terminology=terminology, created=doc["created"]
    )
    session.next_number = int(doc["next_entity_number"])
    session.models = {str(role): dict(identity) for role, identity in (doc.get("models") or {}).items()}
    for d in doc["entities"]:
        entity = Entity.from_dict(d, mask_of(d))
        session.entities[entity.id] = entity
    session.rounds = [_round_from_dict(r, mask_of) for r in doc["rounds"]]
    session.edits = [EditRecord.from_dict(e) for e in doc["edits"]]
    return session


def open_session(
    folder: str | Path, volume: Volume, *, path: str | Path | None = None, terminology: Terminology | None = None
) -> Session:
    """``--session DIR``: continue the session in ``folder``, or start one there if it does not exist yet.

    Refuses (InputError, exit 2) a volume whose content differs from the session's, and a non-empty folder that is
    not a session.
    """
    folder = Path(folder)
    if (folder / SESSION_FILE).is_file():
        session = load_session(folder, terminology=terminology)
        session.check_volume(volume)
        return session
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder} is not empty and holds no {SESSION_FILE}: give a new or a session folder.")
    return Session.for_volume(volume, path=path, folder=folder, terminology=terminology)
