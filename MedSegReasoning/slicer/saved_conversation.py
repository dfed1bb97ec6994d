"""The conversation kept with the scene: the chat's record (rounds, reasoning, entities, review) for showing it
again without a server, and the server's archive of the session, so that a reloaded scene continues the
conversation even after the server forgot the session (``BackendLink.set_archive`` restores it there).

Both live in one JSON document, the archive's own ``session.json`` plus the archive itself (base64) under
``"archive"``, stored in the session's text node (``SessionScene.store_conversation``), which is saved with the scene.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ..wire.session_archive import session_json
from .scene import SessionScene


def save_conversation(link: Any, sync: Any) -> None:
    """Keep the conversation with the scene: the chat's record (rounds, reasoning, entities, review) for showing
    it again, and the server's archive of it, so a reloaded scene continues even after the session expired."""
    if link is None or sync is None or link.session_id is None:
        return
    archive = link.fetch_archive()  # one request: the archive's session.json is the chat's record too
    doc = session_json(archive)
    doc["archive"] = base64.b64encode(archive).decode("ascii")
    sync.scene.store_conversation(json.dumps(doc))


def saved_conversation(session_id: str) -> dict | None:
    """The conversation saved with the scene for the session (a dict), or None."""
    import slicer

    scene = SessionScene.find(slicer.mrmlScene, session_id) if session_id else None
    text = scene.load_conversation() if scene is not None else None
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def saved_archive(saved: dict | None) -> bytes | None:
    """The server's session archive inside a saved conversation, if it has one."""
    if saved and saved.get("archive"):
        return base64.b64decode(saved["archive"])
    return None
