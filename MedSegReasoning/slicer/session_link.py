"""The module's backend session and its scene side: ``link_for`` builds the chat's ``BackendLink`` for the input
volume (the volume sent with the first round, the session kept in the parameter node, a saved conversation
continued even when the server forgot it); ``scene_sync_for`` and ``current_sync`` give the ``SceneSync`` that
keeps the session's segmentation node in step with it.

Runs against Slicer's MRML (``slicer.mrmlScene``, read when called); ``slicer-core`` provides it in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .backend_link import BackendLink
from .local_export import series_uids
from .saved_conversation import saved_archive
from .scene import SessionScene, volume_geometry_lps
from .scene_sync import SceneSync


def link_for(
    client: Any, volume: Any, session_id: str | None, saved: dict | None, before_round: Callable[[], dict]
) -> BackendLink:
    """The chat's backend over ``client``: the input volume (sent with the first round), the session kept in the
    parameter node, and the user's segment edits (``before_round``) pushed before each round."""
    import slicer

    link = BackendLink(client, session_id=session_id, before_round=before_round)
    archive = saved_archive(saved)
    if archive is not None:
        link.set_archive(archive)  # continues the chat if the server forgot it
    if volume is not None:
        g = volume_geometry_lps(volume)
        # recorded by the session, so a DICOM-SEG export is checked against them (no database: not from DICOM)
        uids = series_uids(volume, getattr(slicer, "dicomDatabase", None))
        link.set_volume(slicer.util.arrayFromVolume(volume), g.origin, g.spacing, g.direction, dicom=uids)
    return link


def scene_sync_for(volume: Any, session_id: str) -> SceneSync:
    """The session's nodes in the scene (found again, or created beside the volume), kept in step with the backend."""
    import slicer

    scene = SessionScene.find(slicer.mrmlScene, session_id) or SessionScene.create(slicer.mrmlScene, volume, session_id)
    return SceneSync(scene)


def current_sync(link: BackendLink, sync: SceneSync | None, volume: Any) -> SceneSync:
    """The scene side of the link's session. When the link continued an expired session in a restored one (same
    entity ids), the session's nodes are re-bound to the new id rather than duplicated."""
    sid = link.session_id
    if sid is None:
        raise RuntimeError("the backend link has no session yet: start one before showing its entities")
    if sync is not None and sync.session_id != sid and sync.session_id == link.restored_from:
        sync.scene.rebind(sid)
    if sync is None or sync.session_id != sid:
        sync = scene_sync_for(volume, sid)
    return sync
