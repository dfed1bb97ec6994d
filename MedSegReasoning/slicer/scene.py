"""Writing a reasoning session into a Slicer scene, and reading the user's changes back.

One segmentation node per session, referencing the input volume as its reference geometry; each entity a segment
(segment ID = entity id, so it survives renaming) with its name, colour and Slicer terminology entry; one markups
point list per entity with a control point at the key-slice centroid (label = entity id, description = findings).

Geometry (the one RAS<->LPS boundary, the same-grid check, masks as labelmaps without resampling) is
``scene_geometry.py``; its names are re-exported here.

Edit detection: each segment carries, in a tag, the SHA-256 of the mask last written or sent back; a segment whose
current voxels hash differently was edited in Slicer (Segment Editor, Ctrl+Z...) and its mask goes back to the
engine as the entity's new ``CompactMask``. Tags are saved in ``.seg.nrrd`` files, so this works across scene reloads.

This module imports ``slicer`` and ``vtk`` only: it runs inside Slicer and against the ``slicer-core`` wheel in tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..wire.geometry import Geometry
from ..wire.masks import CompactMask, mask_voxel_digest
from .scene_geometry import (
    GridMismatch,
    check_same_grid,
    ensure_converter_rules,
    ijk_points_to_ras,
    ijk_to_ras,
    key_slice_centroid_ijk,
    lps_to_ras,
    oriented_labelmap,
    segment_mask,
    segment_tag,
    volume_geometry_lps,
    volume_shape_kji,
)

TAG_ENTITY_ID = "MedSegReasoning.EntityId"
TAG_MASK_SHA256 = "MedSegReasoning.MaskSHA256"
TAG_REVIEW = "MedSegReasoning.Review"
ATTR_SESSION_ID = "MedSegReasoning.SessionId"
ATTR_ENTITY_ID = "MedSegReasoning.EntityId"
ATTR_ROLE = "MedSegReasoning.Role"
ROLE_SEGMENTATION = "segmentation"
ROLE_MARKUP = "entity-markup"
ROLE_CONVERSATION = "conversation"
CONVERSATION_REFERENCE_ROLE = "MedSegReasoningConversation"

REVIEW_STATES = ("proposed", "confirmed", "rejected")

Color = tuple[int, int, int]


@dataclass(frozen=True)
class SceneEntity:
    """What the scene needs of an entity: the wire's view of ``dialogue.Entity`` (no engine import needed).

    ``terminology`` is Slicer's serialised terminology entry (``CodedTerminology.to_slicer_string()``), or None for
    an uncoded label (the segment then keeps Slicer's default entry and shows the name).
    """

    id: str
    name: str
    mask: CompactMask
    color: Color
    key_slice: int
    findings: str = ""
    terminology: str | None = None
    review: str = "proposed"

    @staticmethod
    def adapt(entity: Any, terminology: str | None) -> SceneEntity:
        """Copy the fields the scene needs from any entity-shaped object (``dialogue.Entity``, ``client.Entity``);
        where the terminology string lives differs between the two, so the caller passes it."""
        return SceneEntity(
            id=str(entity.id),
            name=str(entity.name),
            mask=entity.mask,
            color=tuple(int(c) for c in entity.color),  # type: ignore[arg-type]  # an (R, G, B) on both entity kinds; not re-checked here
            key_slice=int(entity.key_slice),
            findings=str(entity.findings),
            terminology=terminology,
            review=str(entity.review),
        )

    @staticmethod
    def from_entity(entity: Any) -> SceneEntity:
        """Adapt a ``dialogue.Entity`` (duck-typed, so this module never imports the dialogue package)."""
        return SceneEntity.adapt(entity, entity.terminology.to_slicer_string())


@dataclass(frozen=True)
class SegmentChange:
    """What the user changed on one entity in Slicer since it was last written (None = unchanged)."""

    entity_id: str
    mask: CompactMask | None = None
    name: str | None = None
    color: Color | None = None

    @property
    def any(self) -> bool:
        return self.mask is not None or self.name is not None or self.color is not None


def _rgb01(color: Color) -> tuple[float, float, float]:
    return (color[0] / 255.0, color[1] / 255.0, color[2] / 255.0)


def _rgb255(color: Iterable[float]) -> Color:
    r, g, b = (round(float(c) * 255.0) for c in color)
    return (int(r), int(g), int(b))


# -- the session in the scene ---------------------------------------------------------------------------------------


@dataclass
class SessionScene:
    """One session's nodes in one scene: its segmentation node, its markups, its saved conversation.

    Build with ``SessionScene.create`` (new session) or ``SessionScene.find`` (after a scene load). All geometry
    checks happen in ``write_entity``; the rest keeps names, colours and review status in step with the backend.
    """

    scene: Any
    volume_node: Any
    segmentation_node: Any
    session_id: str
    geometry: Geometry
    shape_kji: tuple[int, int, int]
    _markups: dict[str, Any] = field(default_factory=dict)

    # construction ----------------------------------------------------------------------------------------------
    @staticmethod
    def create(
        scene: Any,
        volume_node: Any,
        session_id: str,
        geometry: Geometry | None = None,
        shape_kji: Sequence[int] | None = None,
    ) -> SessionScene:
        """A new segmentation node for ``session_id`` on ``volume_node``, placed beside the volume in the hierarchy.

        ``geometry``/``shape_kji`` are what the engine holds for this session (defaults: the node's own, which is
        what was uploaded); they are checked against the node now and before every write.
        """
        ensure_converter_rules()
        geometry = geometry if geometry is not None else volume_geometry_lps(volume_node)
        shape = tuple(int(s) for s in (shape_kji if shape_kji is not None else volume_shape_kji(volume_node)))
        check_same_grid(volume_node, geometry, shape)
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume_node.GetName()} reasoning {session_id}")
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        seg.SetAttribute(ATTR_SESSION_ID, session_id)
        seg.SetAttribute(ATTR_ROLE, ROLE_SEGMENTATION)
        _place_beside(scene, seg, volume_node)
        return SessionScene(scene, volume_node, seg, session_id, geometry, shape)  # type: ignore[arg-type]  # check_same_grid matched it to the node's 3-D shape

    @staticmethod
    def find(scene: Any, session_id: str) -> SessionScene | None:
        """The session's nodes in a (re)loaded scene, or None; geometry is re-read from the reference volume."""
        for seg in _nodes(scene, "vtkMRMLSegmentationNode"):
            if seg.GetAttribute(ATTR_SESSION_ID) != session_id:
                continue
            import slicer

            role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
            volume = seg.GetNodeReference(role)
            if volume is None:
                raise GridMismatch(f"the segmentation of session {session_id} lost its reference volume.")
            ensure_converter_rules()
            out = SessionScene(scene, volume, seg, session_id, volume_geometry_lps(volume), volume_shape_kji(volume))
            for node in _nodes(scene, "vtkMRMLMarkupsFiducialNode"):
                if node.GetAttribute(ATTR_SESSION_ID) == session_id and node.GetAttribute(ATTR_ENTITY_ID):
                    out._markups[node.GetAttribute(ATTR_ENTITY_ID)] = node
            return out
        return None

    @staticmethod
    def session_ids(scene: Any) -> list[str]:
        """Sessions present in a scene (one segmentation node each), for restoring the chat after a scene load."""
        return [
            s.GetAttribute(ATTR_SESSION_ID)
            for s in _nodes(scene, "vtkMRMLSegmentationNode")
            if s.GetAttribute(ATTR_SESSION_ID)
        ]

    # entities --------------------------------------------------------------------------------------------------
    @property
    def segmentation(self) -> Any:
        return self.segmentation_node.GetSegmentation()

    def entity_ids(self) -> list[str]:
        seg = self.segmentation
        return [seg.GetNthSegmentID(n) for n in range(seg.GetNumberOfSegments())]

    def write_entity(self, entity: SceneEntity) -> None:
        """Create or update the entity's segment (voxels, name, colour, terminology, review) and its markup."""
        check_same_grid(self.volume_node, self.geometry, self.shape_kji)
        entity.mask.check_fits(self.shape_kji)
        import slicer

        seg = self.segmentation
        if seg.GetSegment(entity.id) is None:
            seg.AddEmptySegment(entity.id, entity.name, _rgb01(entity.color))
        labelmap = oriented_labelmap(self.volume_node, entity.mask)
        if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            labelmap, self.segmentation_node, entity.id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
        ):
            raise RuntimeError(f"Slicer refused the mask of entity {entity.id}.")
        segment = seg.GetSegment(entity.id)
        segment.SetName(entity.name)
        segment.SetColor(*_rgb01(entity.color))
        if entity.terminology:
            segment.SetTerminology(entity.terminology)
        segment.SetTag(TAG_ENTITY_ID, entity.id)
        segment.SetTag(TAG_MASK_SHA256, mask_voxel_digest(entity.mask))
        self.set_review(entity.id, entity.review)
        self._write_markup(entity)

    def _write_markup(self, entity: SceneEntity) -> None:
        centroid = key_slice_centroid_ijk(entity.mask, entity.key_slice, self.shape_kji)
        node = self._markups.get(entity.id)
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{entity.id} {entity.name}")
            node.CreateDefaultDisplayNodes()
            node.SetAttribute(ATTR_SESSION_ID, self.session_id)
            node.SetAttribute(ATTR_ENTITY_ID, entity.id)
            node.SetAttribute(ATTR_ROLE, ROLE_MARKUP)
            _place_beside(self.scene, node, self.volume_node)
            self._markups[entity.id] = node
        node.SetName(f"{entity.id} {entity.name}")
        node.RemoveAllControlPoints()
        if centroid is not None:
            ras = ijk_points_to_ras(self.volume_node, centroid)[0]
            index = node.AddControlPoint(float(ras[0]), float(ras[1]), float(ras[2]), entity.id)
            node.SetNthControlPointDescription(index, entity.findings)
            node.SetNthControlPointLocked(index, True)
        display = node.GetDisplayNode()
        if display is not None:
            display.SetSelectedColor(*_rgb01(entity.color))
            display.SetColor(*_rgb01(entity.color))

    def markup_node(self, entity_id: str) -> Any | None:
        return self._markups.get(entity_id)

    def set_review(self, entity_id: str, review: str) -> None:
        """Keep the backend's review status on the segment; a rejected entity is hidden, not deleted (the record stays)."""
        if review not in REVIEW_STATES:
            raise ValueError(f"review status {review!r} is not one of {', '.join(REVIEW_STATES)}.")
        segment = self._segment(entity_id)
        segment.SetTag(TAG_REVIEW, review)
        display = self.segmentation_node.GetDisplayNode()
        if display is not None:
            display.SetSegmentVisibility(entity_id, review != "rejected")
        markup = self._markups.get(entity_id)
        if markup is not None and markup.GetDisplayNode() is not None:
            markup.GetDisplayNode().SetVisibility(review != "rejected")

    def review_of(self, entity_id: str) -> str:
        value = segment_tag(self._segment(entity_id), TAG_REVIEW)
        return value if value in REVIEW_STATES else "proposed"

    def rename(self, entity_id: str, name: str) -> None:
        self._segment(entity_id).SetName(name)
        markup = self._markups.get(entity_id)
        if markup is not None:
            markup.SetName(f"{entity_id} {name}")

    def recolor(self, entity_id: str, color: Color) -> None:
        self._segment(entity_id).SetColor(*_rgb01(color))
        markup = self._markups.get(entity_id)
        if markup is not None and markup.GetDisplayNode() is not None:
            markup.GetDisplayNode().SetSelectedColor(*_rgb01(color))

    def remove_entity(self, entity_id: str) -> None:
        """Delete the segment and its markup (the backend's delete, or the undo of the round that made it)."""
        if self.segmentation.GetSegment(entity_id) is not None:
            self.segmentation.RemoveSegment(entity_id)
        markup = self._markups.pop(entity_id, None)
        if markup is not None:
            self.scene.RemoveNode(markup)

    # reading the user's changes --------------------------------------------------------------------------------------
    def current_mask(self, entity_id: str) -> CompactMask:
        self._segment(entity_id)
        return segment_mask(self.segmentation_node, entity_id, self.volume_node)

    def changes(
        self, names: dict[str, str] | None = None, colors: dict[str, Color] | None = None
    ) -> list[SegmentChange]:
        """What the user changed since the last write: edited voxels always; names/colours against the given ones.

        Called before each round so the engine sees edits first. ``names``/``colors`` are the backend's current
        values (the client knows them); without them only mask edits are reported.
        """
        out = []
        for entity_id in self.entity_ids():
            segment = self.segmentation.GetSegment(entity_id)
            if not segment_tag(segment, TAG_ENTITY_ID):
                continue  # a segment the user added by hand: not an entity
            mask = self.current_mask(entity_id)
            edited = mask if mask_voxel_digest(mask) != segment_tag(segment, TAG_MASK_SHA256) else None
            name = segment.GetName()
            color = _rgb255(segment.GetColor())
            change = SegmentChange(
                entity_id,
                mask=edited,
                name=name if names is not None and entity_id in names and names[entity_id] != name else None,
                color=color
                if colors is not None and entity_id in colors and tuple(colors[entity_id]) != color
                else None,
            )
            if change.any:
                out.append(change)
        return out

    def acknowledge(self, entity_id: str, mask: CompactMask) -> None:
        """Record that the backend now holds ``mask`` for the entity, so the edit is not reported twice."""
        self._segment(entity_id).SetTag(TAG_MASK_SHA256, mask_voxel_digest(mask))

    # the conversation, saved with the scene ----------------------------------------------------------------------------
    def store_conversation(self, session_json: str) -> Any:
        """Keep the session record (rounds, reasoning, entities, review) in a text node that the scene saves beside it."""
        node = self.segmentation_node.GetNodeReference(CONVERSATION_REFERENCE_ROLE)
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLTextNode", f"{self.segmentation_node.GetName()} conversation")
            node.SetAttribute(ATTR_SESSION_ID, self.session_id)
            node.SetAttribute(ATTR_ROLE, ROLE_CONVERSATION)
            node.SetForceCreateStorageNode(True)
            self.segmentation_node.SetNodeReferenceID(CONVERSATION_REFERENCE_ROLE, node.GetID())
            _place_beside(self.scene, node, self.volume_node)
        node.SetText(session_json)
        return node

    def rebind(self, session_id: str) -> None:
        """The conversation goes on in a new server session (the old one expired and was restored from its
        archive, keeping entity ids): the same nodes now belong to ``session_id``, so nothing is duplicated."""
        old = self.session_id
        nodes = [self.segmentation_node, *self._markups.values()]
        conversation = self.segmentation_node.GetNodeReference(CONVERSATION_REFERENCE_ROLE)
        if conversation is not None:
            nodes.append(conversation)
        for node in nodes:
            node.SetAttribute(ATTR_SESSION_ID, session_id)
        name = self.segmentation_node.GetName()
        if name.endswith(old):
            self.segmentation_node.SetName(name[: -len(old)] + session_id)
        self.session_id = session_id

    def load_conversation(self) -> str | None:
        node = self.segmentation_node.GetNodeReference(CONVERSATION_REFERENCE_ROLE)
        return None if node is None else node.GetText()

    def _segment(self, entity_id: str) -> Any:
        segment = self.segmentation.GetSegment(entity_id)
        if segment is None:
            raise KeyError(f"no segment for entity {entity_id} in session {self.session_id}.")
        return segment


def _nodes(scene: Any, class_name: str) -> list[Any]:
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(n) for n in range(collection.GetNumberOfItems())]


def _place_beside(scene: Any, node: Any, volume_node: Any) -> None:
    """Put ``node`` under the volume's parent (its study, when loaded from DICOM) in the subject hierarchy."""
    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return
    volume_item = sh.GetItemByDataNode(volume_node)
    item = sh.GetItemByDataNode(node)
    if volume_item and item:
        sh.SetItemParent(item, sh.GetItemParent(volume_item))


__all__ = [  # this module's names, and the geometry it re-exports from scene_geometry
    "ATTR_ENTITY_ID",
    "ATTR_ROLE",
    "ATTR_SESSION_ID",
    "CONVERSATION_REFERENCE_ROLE",
    "REVIEW_STATES",
    "ROLE_CONVERSATION",
    "ROLE_MARKUP",
    "ROLE_SEGMENTATION",
    "Color",
    "GridMismatch",
    "SceneEntity",
    "SegmentChange",
    "SessionScene",
    "TAG_ENTITY_ID",
    "TAG_MASK_SHA256",
    "TAG_REVIEW",
    "check_same_grid",
    "ensure_converter_rules",
    "ijk_points_to_ras",
    "ijk_to_ras",
    "key_slice_centroid_ijk",
    "lps_to_ras",
    "segment_mask",
    "segment_tag",
    "volume_geometry_lps",
    "volume_shape_kji",
]
