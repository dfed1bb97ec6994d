"""Keeping a session's scene and its backend session in step: the controller between ``SessionScene`` and the client.

``SessionScene`` knows the scene (segments, markups, edit digests); ``MedSegClient`` knows the server. This module
decides what goes which way, and when:

- before a round, the user's Segment Editor edits go to the backend (``pending_edits`` / ``push_edits``), so the
  round and later exports see the edited masks;
- after a round (or any backend change), an entity is fetched whole (mask, name, colour, code, findings, review) and
  written (``apply_entity``); ``reconcile`` makes the scene's entity segments exactly the backend's entities;
- review / rename / recolour / delete act on the backend first and then write what the backend answered, so the
  scene never shows a state the backend refused; ``pull_user_changes`` sends back names and colours the user changed
  in Slicer's Segmentations module;
- ``undo_round`` undoes on the backend, then removes the round's segments and rewrites the ones it restored;
- ``segment_volumes_ml`` is what Slicer's Segment Statistics reports for each segment (its "Volume [cm3]").

Torch-free and Qt-free: it imports numpy, ``scene`` (Slicer's MRML) and, by duck typing, the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..wire.masks import CompactMask
from .scene import Color, SceneEntity, SessionScene


def scene_entity(entity: Any) -> SceneEntity:
    """The wire's entity (``client.Entity``, fetched with its mask) as what the scene writes."""
    if entity.mask is None:
        raise ValueError(f"entity {entity.id} came without its mask: fetch it with mask=True.")
    return SceneEntity.adapt(entity, entity.data.get("terminology_slicer") or None)


@dataclass
class UndoOutcome:
    """What an undo did to the scene: the round number, segments removed, segments rewritten to their old version."""

    round: int
    removed: list[str]
    restored: list[str]


@dataclass
class SceneSync:
    """One session's scene and its backend session. ``known`` is the backend's last word on each entity
    (``client.Entity`` without mask), the reference that tells a user's rename or recolour from the backend's own."""

    scene: SessionScene
    known: dict[str, Any] = field(default_factory=dict)

    @property
    def session_id(self) -> str:
        return self.scene.session_id

    # -- scene -> backend: the user's edits ---------------------------------------------------------------------------
    def pending_edits(self) -> dict[str, CompactMask]:
        """Entity id -> the segment's current voxels, for every segment edited in Slicer since it was last synced."""
        return {c.entity_id: c.mask for c in self.scene.changes() if c.mask is not None}

    def push_edits(self, client: Any, session_id: str | None = None) -> list[str]:
        """Send every pending edit as the entity's new mask; acknowledge each one the backend took. Returns the ids.

        An edit of an entity the backend no longer has (deleted elsewhere) is not retried forever: its segment is
        left as it is, and the error propagates so the user hears about it.
        """
        sid = session_id or self.session_id
        pushed = []
        for entity_id, mask in self.pending_edits().items():
            self.known[entity_id] = client.replace_mask(sid, entity_id, mask)
            self.scene.acknowledge(entity_id, mask)
            pushed.append(entity_id)
        return pushed

    def pull_user_changes(self, client: Any, session_id: str | None = None) -> list[str]:
        """Names and colours the user changed on segments (Segmentations module) go to the backend. Returns the ids.

        A rename is sent as the entity's new label: the backend maps it to a terminology code again, and the scene
        then shows the backend's name for it (the coded name when the label matched one).
        """
        sid = session_id or self.session_id
        names = {i: e.name for i, e in self.known.items()}
        colors = {i: tuple(e.color) for i, e in self.known.items()}
        changed = []
        for change in self.scene.changes(names=names, colors=colors):
            if change.name is None and change.color is None:
                continue
            updated = client.update_entity(sid, change.entity_id, label=change.name, color=change.color)
            self._write_attributes(updated)
            changed.append(change.entity_id)
        return changed

    # -- backend -> scene ---------------------------------------------------------------------------------------------
    def apply_entity(self, client: Any, session_id: str | None, entity_id: str) -> SceneEntity:
        """Fetch the entity with its mask and write segment + markup (a new round's target, or a refreshed one)."""
        sid = session_id or self.session_id
        return self.write(client.entity(sid, entity_id, mask=True))

    def write(self, entity: Any) -> SceneEntity:
        """Write an entity that already carries its mask (a round's ``target`` event): no request needed."""
        written = scene_entity(entity)
        self.scene.write_entity(written)
        self.known[written.id] = entity
        return written

    def reconcile(self, client: Any, session_id: str | None = None) -> list[str]:
        """Make the scene's entity segments the backend's entities: write the missing or changed, remove the gone.

        "Changed" is decided on what the list endpoint carries without masks (revision, name, colour, review, code),
        so an unchanged scene costs one request. Returns the ids written.
        """
        sid = session_id or self.session_id
        listed = {e.id: e for e in client.entities(sid)}
        for entity_id in [i for i in self.scene.entity_ids() if i not in listed and self._is_entity(i)]:
            self.scene.remove_entity(entity_id)
            self.known.pop(entity_id, None)
        written = []
        present = set(self.scene.entity_ids())
        for entity_id, entity in listed.items():
            old = self.known.get(entity_id)
            if entity_id not in present or old is None or _fingerprint(old) != _fingerprint(entity):
                self.apply_entity(client, sid, entity_id)
                written.append(entity_id)
        return written

    # -- review, rename, recolour, delete: backend first, then the scene ----------------------------------------------
    def sync_review(self, client: Any, session_id: str | None, entity_id: str, review: str) -> None:
        """Confirm / reject / back to proposed. A rejected entity's segment is hidden, not removed."""
        updated = client.update_entity(session_id or self.session_id, entity_id, review=review)
        self._write_attributes(updated)

    def note_review(self, entity_id: str, review: str) -> None:
        """A review the backend already accepted elsewhere (the chat's confirm/reject chips): show it, no request."""
        self.scene.set_review(entity_id, review)
        if entity_id in self.known:
            self.known[entity_id].review = review

    def rename(self, client: Any, session_id: str | None, entity_id: str, name: str) -> None:
        updated = client.update_entity(session_id or self.session_id, entity_id, label=name)
        self._write_attributes(updated)

    def recolor(self, client: Any, session_id: str | None, entity_id: str, color: Color) -> None:
        updated = client.update_entity(session_id or self.session_id, entity_id, color=list(color))
        self._write_attributes(updated)

    def delete(self, client: Any, session_id: str | None, entity_id: str) -> None:
        client.delete_entity(session_id or self.session_id, entity_id)
        self.scene.remove_entity(entity_id)
        self.known.pop(entity_id, None)

    def undo_round(self, client: Any, session_id: str | None = None) -> UndoOutcome:
        """Undo the backend's last round, then make the scene match: its new entities go, those it redid come back.

        The scene is reconciled against the backend's entity list afterwards, so segments the undo touched
        indirectly (a dependant's findings) are rewritten too.
        """
        sid = session_id or self.session_id
        result = client.undo(sid)
        for entity_id in result.get("removed", []):
            self.scene.remove_entity(entity_id)
            self.known.pop(entity_id, None)
        for entity_id in result.get("restored", []):
            self.known.pop(entity_id, None)  # force a re-fetch of the restored mask
        self.reconcile(client, sid)
        return UndoOutcome(
            int(result.get("undone_round", 0)), list(result.get("removed", [])), list(result.get("restored", []))
        )

    # -- measurements ---------------------------------------------------------------------------------------------------
    def segment_volumes_ml(self) -> dict[str, float]:
        """Each entity segment's volume as Slicer's Segment Statistics computes it (LabelmapSegmentStatisticsPlugin):
        the voxels of the segment's own binary labelmap (``GetBinaryLabelmapRepresentation``) times the product of
        that labelmap's spacing, in mL (= cm3)."""
        return {
            entity_id: segment_volume_ml(self.scene.segmentation_node, entity_id)
            for entity_id in self.scene.entity_ids()
        }

    # -- helpers ----------------------------------------------------------------------------------------------------
    def _write_attributes(self, entity: Any) -> None:
        """Write what the backend answered (name, colour, review, code, findings) without fetching the mask again."""
        self.scene.rename(entity.id, entity.name)
        self.scene.recolor(entity.id, tuple(entity.color))
        self.scene.set_review(entity.id, entity.review)
        segment = self.scene.segmentation.GetSegment(entity.id)
        terminology = entity.data.get("terminology_slicer")
        if segment is not None and terminology:
            segment.SetTerminology(terminology)
        markup = self.scene.markup_node(entity.id)
        if markup is not None and markup.GetNumberOfControlPoints():
            markup.SetNthControlPointDescription(0, entity.findings)
        self.known[entity.id] = entity

    def _is_entity(self, segment_id: str) -> bool:
        from .scene import TAG_ENTITY_ID, segment_tag

        segment = self.scene.segmentation.GetSegment(segment_id)
        return segment is not None and bool(segment_tag(segment, TAG_ENTITY_ID))


def segment_volume_ml(segmentation_node: Any, segment_id: str) -> float:
    """Segment Statistics' volume of one segment, in mL.

    Mirrors Slicer's ``LabelmapSegmentStatisticsPlugin.computeStatistics``: the segment's binary labelmap (values
    other than 0 belong to it), voxel count times the product of the labelmap's spacing.
    """
    import slicer
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image)
    scalars = image.GetPointData().GetScalars() if image.GetPointData() is not None else None
    if scalars is None:
        return 0.0
    count = int(np.count_nonzero(numpy_support.vtk_to_numpy(scalars) > 0))
    sx, sy, sz = image.GetSpacing()
    return count * sx * sy * sz / 1000.0


def _fingerprint(entity: Any) -> tuple:
    data = entity.data
    return (
        data.get("revision"),
        entity.name,
        tuple(entity.color),
        entity.review,
        entity.findings,
        data.get("terminology_slicer"),
        tuple(entity.bbox) if entity.bbox else None,
        entity.voxels,
    )


__all__ = ["SceneSync", "UndoOutcome", "scene_entity", "segment_volume_ml"]
