"""A dialogue over one volume: rounds (what was asked, answered, judged) and the entities they made.

The session records its volume by path and content hash, never by copy, so a session folder stays small and a
different volume under the same path is refused. Entities keep compact masks (box + packed bits); a round that
changes an existing entity (a redo) keeps the previous version in the round, which is what makes ``undo`` exact.
User actions between rounds (rename, recolour, review, delete, edited mask) are applied at once and logged in
``edits``. With a folder, the session saves itself after every round and every user action (``store.py``; loading is
``restore.py``). The records a round and an edit leave are ``records.py``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..reasoning.base import EntityRef, ReasoningContext, bind_slice_mask
from ..terminology.codes import CodedTerminology
from ..terminology.matcher import Terminology, default_terminology
from ..volume.core import Geometry, Volume
from ..wire.errors import InputError
from ..wire.masks import CompactMask
from .entity import Color, Entity, check_color, check_review
from .findings import Measurements, RelatedEntity, findings_text, measure
from .records import PALETTE, EditRecord, Round, VolumeRecord, now_iso
from .references import Reference, find_references, resolve_reference
from .spatial import spatial_relation
from .store import save_session


class Session:
    """Rounds and entities over one volume. See the module docstring; ``store.py`` saves it, ``restore.py`` loads it."""

    def __init__(
        self,
        volume: VolumeRecord,
        *,
        folder: str | Path | None = None,
        terminology: Terminology | None = None,
        created: str | None = None,
    ) -> None:
        self.volume = volume
        self.folder = Path(folder) if folder is not None else None
        self.created = created or now_iso()
        self.entities: dict[str, Entity] = {}
        self.rounds: list[Round] = []
        self.edits: list[EditRecord] = []
        self.next_number = 1
        # role (segmenter, reasoner) -> identity of the model that last answered: export checks what made the masks
        self.models: dict[str, dict[str, Any]] = {}
        self._terminology = terminology
        self._open_round: Round | None = None
        self._decoded: tuple[CompactMask, np.ndarray] | None = None  # the last entity mask unpacked for drawing

    @classmethod
    def for_volume(
        cls,
        volume: Volume,
        *,
        path: str | Path | None = None,
        folder: str | Path | None = None,
        terminology: Terminology | None = None,
    ) -> Session:
        session = cls(VolumeRecord.of(volume, path), folder=folder, terminology=terminology)
        if session.folder is not None:
            session.save()
        return session

    @property
    def terminology(self) -> Terminology:
        if self._terminology is None:
            self._terminology = default_terminology()
        return self._terminology

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.volume.shape

    @property
    def geometry(self) -> Geometry:
        return self.volume.geometry

    def check_volume(self, volume: Volume) -> None:
        """Refuse to continue this session on another volume (same path or not: the content decides)."""
        if volume.content_hash() != self.volume.content_hash:
            raise InputError(
                f"this session belongs to another volume (content {self.volume.content_hash[:12]}... from "
                f"{self.volume.path or 'an array'}), but the given volume's content is "
                f"{volume.content_hash()[:12]}...: start a new session folder for it."
            )

    # -- entities ---------------------------------------------------------------------------------------------------
    def entity(self, entity_id: str) -> Entity:
        try:
            return self.entities[entity_id.upper()]
        except KeyError:
            known = ", ".join(self.entities) or "none yet"
            raise InputError(f"there is no entity {entity_id!r} in this session (entities: {known}).") from None

    def dense_mask(self, entity_id: str) -> np.ndarray:
        """The entity's current mask (the user's edit, if any) on the full ``[k, j, i]`` grid."""
        return self.entity(entity_id).mask.to_dense(self.shape)

    def add_entity(
        self,
        rnd: Round,
        label: str,
        mask: CompactMask,
        *,
        key_slice: int | None = None,
        terminology: CodedTerminology | None = None,
        ref: str | None = None,
        relation: str | None = None,
        uncertain: list[str] | None = None,
        score: float | None = None,
        key_plane: tuple[str, int] | None = None,
    ) -> Entity:
        """A new entity made by round ``rnd``; its id is the next ``E<n>`` (ids are never reused).

        ``key_slice`` is axial (None: the slice where the mask is largest); ``key_plane`` the prompt's plane,
        ``(orientation, index)``, default the axial key slice.
        """
        self._require_open(rnd)
        mask = self._checked_mask(mask)
        coded = terminology or self.terminology.match(label)
        entity_id = f"E{self.next_number}"
        self.next_number += 1
        m, text = self._describe(coded, mask, key_slice, ref, uncertain or [])
        assert m.key_slice is not None
        entity = Entity(
            id=entity_id,
            label=label,
            terminology=coded,
            mask=mask,
            key_slice=m.key_slice,
            box=_slice_box(mask, m.key_slice, self.shape),
            findings=text,
            round=rnd.index,
            color=self._pick_color(coded.color),
            measurements=m,
            ref=ref,
            relation=relation,
            uncertainty=tuple(uncertain or ()),
            score=score,
            updated_round=rnd.index,
            key_plane=key_plane or ("axial", m.key_slice),
        )
        self.entities[entity_id] = entity
        rnd.created.append(entity_id)
        return entity

    def redo_entity(
        self,
        rnd: Round,
        entity_id: str,
        mask: CompactMask,
        *,
        key_slice: int | None = None,
        uncertain: list[str] | None = None,
        score: float | None = None,
        key_plane: tuple[str, int] | None = None,
    ) -> Entity:
        """A round replaces an entity's mask (same id); the previous version stays in the round for undo."""
        self._require_open(rnd)
        old = self.entity(entity_id)
        mask = self._checked_mask(mask)
        if all(e.id != old.id for e in rnd.superseded):
            rnd.superseded.append(old)
        m, text = self._describe(old.terminology, mask, key_slice, old.ref, uncertain or [])
        assert m.key_slice is not None
        new = replace(
            old,
            mask=mask,
            key_slice=m.key_slice,
            box=_slice_box(mask, m.key_slice, self.shape),
            findings=text,
            measurements=m,
            uncertainty=tuple(uncertain or ()),
            score=score,
            edited=False,
            revision=old.revision + 1,
            updated_round=rnd.index,
            key_plane=key_plane or ("axial", m.key_slice),
        )
        self.entities[old.id] = new
        self._refresh_dependants(old.id)
        return new

    def replace_mask(self, entity_id: str, mask: np.ndarray | CompactMask) -> Entity:
        """The user edited the entity's mask (e.g. in Slicer's Segment Editor): later rounds and exports use it."""
        self._require_idle()
        old = self.entity(entity_id)
        compact = mask if isinstance(mask, CompactMask) else self._dense_to_compact(mask)
        compact = self._checked_mask(compact)
        m, text = self._describe(old.terminology, compact, old.key_slice, old.ref, [])
        assert m.key_slice is not None
        self.entities[old.id] = replace(
            old,
            mask=compact,
            key_slice=m.key_slice,
            box=_slice_box(compact, m.key_slice, self.shape),
            findings=text,
            measurements=m,
            edited=True,
            uncertainty=(),  # the user's mask is the user's judgment
            revision=old.revision + 1,
        )
        self._refresh_dependants(old.id)
        self._log("mask", old.id, {"voxels_before": old.mask.voxel_count, "voxels_after": compact.voxel_count})
        return self.entities[old.id]

    def rename(self, entity_id: str, label: str, terminology: CodedTerminology | None = None) -> Entity:
        """New name; its terminology is mapped again unless the caller gives the codes (Slicer's selector)."""
        self._require_idle()
        if not label.strip():
            raise InputError("an entity's name cannot be empty.")
        old = self.entity(entity_id)
        coded = terminology or self.terminology.match(label)
        _, text = self._describe(coded, old.mask, old.key_slice, old.ref, list(old.uncertainty))
        self.entities[old.id] = replace(old, label=label, terminology=coded, findings=text)
        self._refresh_dependants(old.id)
        self._log("rename", old.id, {"from": old.label, "to": label})
        return self.entities[old.id]

    def recolor(self, entity_id: str, color: Any) -> Entity:
        self._require_idle()
        old = self.entity(entity_id)
        rgb = check_color(list(color) if isinstance(color, tuple) else color)
        self.entities[old.id] = replace(old, color=rgb)
        self._log("recolor", old.id, {"from": list(old.color), "to": list(rgb)})
        return self.entities[old.id]

    def set_review(self, entity_id: str, status: str) -> Entity:
        self._require_idle()
        old = self.entity(entity_id)
        self.entities[old.id] = replace(old, review=check_review(status))
        self._log("review", old.id, {"from": old.review, "to": status})
        return self.entities[old.id]

    def delete(self, entity_id: str) -> None:
        """Remove an entity; its id is not reused. Rounds keep their record of it."""
        self._require_idle()
        old = self.entity(entity_id)
        del self.entities[old.id]
        self._log("delete", old.id, {"label": old.label})

    # -- rounds -----------------------------------------------------------------------------------------------------
    def begin_round(self, question: str) -> Round:
        if self._open_round is not None:
            raise InputError(f"round {self._open_round.index} is still running: finish it before asking again.")
        self._open_round = Round(index=len(self.rounds) + 1, question=question, started=now_iso())
        return self._open_round

    def finish_round(self, rnd: Round) -> Round:
        """Close the round, append it, and save (one round = one save: a crash loses at most the open round)."""
        self._require_open(rnd)
        rnd.finished = now_iso()
        self.rounds.append(rnd)
        self.models.update(rnd.models)
        self._open_round = None
        self.save()
        return rnd

    def abort_round(self, rnd: Round) -> None:
        """Undo what an unfinished round already changed (an exception mid-round must not leave half of it)."""
        self._require_open(rnd)
        self._revert(rnd)
        self._open_round = None

    def undo_last_round(self) -> Round:
        """Remove the last round: entities it made go, entities it redid get their previous version back.

        Ids stay unused after an undo (the user may have seen E3 before undoing it; a new E3 would be a different
        structure under a known name). User actions after the round stay in ``edits``.
        """
        if not self.rounds:
            raise InputError("there is no round to undo.")
        rnd = self.rounds.pop()
        self._revert(rnd)
        self.save()
        return rnd

    def _revert(self, rnd: Round) -> None:
        for entity_id in rnd.created:
            self.entities.pop(entity_id, None)
        for previous in rnd.superseded:
            if previous.id in self.entities:
                self.entities[previous.id] = previous
                self._refresh_dependants(previous.id)

    # -- references and context for the reasoner ----------------------------------------------------------------------
    def resolve_reference(self, text: str) -> Reference | None:
        """An entity id or a plain-language reference -> Resolution, Clarification (ambiguous) or None."""
        return resolve_reference(text, list(self.entities.values()), self.terminology)

    def find_references(self, question: str) -> list[Reference]:
        return find_references(question, list(self.entities.values()), self.terminology)

    def reasoning_context(self, round_number: int | None = None) -> ReasoningContext:
        """What the reasoner is told about earlier entities: ids, names, codes, key slices, boxes (voxel indices),
        colours and spans, with their outlines on demand (``entity_slice_mask``), for round ``round_number``
        (default: the round being asked, ``len(rounds) + 1``).

        Rejected entities are left out. Boxes are in the volume's voxel indices; each reasoner adapter converts
        them to its own image coordinates, as it converts its answers back.
        """
        refs = []
        for e in self.entities.values():
            if e.review == "rejected":
                continue
            bbox, box, color = e.bbox, e.box, e.color
            refs.append(
                EntityRef(
                    id=e.id,
                    label=e.name,
                    slice=e.key_slice,
                    box=(int(box[0]), int(box[1]), int(box[2]), int(box[3])) if box else None,
                    color=(int(color[0]), int(color[1]), int(color[2])),
                    slices=(bbox[0], bbox[3]) if bbox else None,
                    slice_mask=bind_slice_mask(self.entity_slice_mask, e.id),
                    given_label=e.label if e.label != e.name else None,
                    code=None
                    if e.terminology.type is None
                    else f"{e.terminology.type.scheme} {e.terminology.type.value}",
                    volume_ml=round(e.measurements.volume_ml, 1),
                    edited=e.edited,
                    uncertain=e.uncertain,
                )
            )
        number = round_number if round_number is not None else len(self.rounds) + 1
        return ReasoningContext(entities=tuple(refs), round=number)

    def entity_slice_mask(self, entity_id: str, k: int) -> np.ndarray | None:
        """Entity ``entity_id`` on axial slice ``k`` as a (nj, ni) bool mask, None where it does not reach.

        Bound into ``reasoning_context``'s entities so the views can outline entities on the slices they show,
        decoding only the slices actually drawn.
        """
        e = self.entities.get(entity_id)
        if e is None or e.bbox is None or not e.bbox[0] <= k <= e.bbox[3]:
            return None
        # a coronal/sagittal view asks for every slice of an entity in turn: unpack its bits once, not per slice
        decoded = self._decoded  # one read: another thread may replace it meanwhile
        if decoded is None or decoded[0] is not e.mask:
            decoded = self._decoded = (e.mask, e.mask.crop())
        k0, j0, i0, _, j1, i1 = e.bbox
        out = np.zeros(self.shape[1:], dtype=bool)
        out[j0 : j1 + 1, i0 : i1 + 1] = decoded[1][k - k0]
        return out

    def entities_on_slice(self, k: int) -> list[dict[str, Any]]:
        """Entities visible on slice ``k`` with their 2D masks: for drawing tagged outlines on what the reasoner sees."""
        out = []
        for e in self.entities.values():
            if e.review == "rejected" or e.bbox is None or not e.bbox[0] <= k <= e.bbox[3]:
                continue
            out.append({"id": e.id, "label": e.label, "color": e.color, "mask": e.mask.slice_mask(k, self.shape)})
        return out

    # -- saving ---------------------------------------------------------------------------------------------------
    def save(self) -> None:
        """Save to the session folder, if there is one (atomic; see ``store.py``)."""
        if self.folder is not None:
            save_session(self, self.folder)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Session):
            return NotImplemented
        return (
            self.volume == other.volume
            and self.created == other.created
            and list(self.entities.items()) == list(other.entities.items())
            and self.rounds == other.rounds
            and self.edits == other.edits
            and self.next_number == other.next_number
            and self.models == other.models
        )

    __hash__ = None  # type: ignore[assignment]  # Python's way to say unhashable (mutable, with __eq__)

    # -- helpers ------------------------------------------------------------------------------------------------------
    def _require_idle(self) -> None:
        """User actions wait for the running round: saving them mid-round would store half a round."""
        if self._open_round is not None:
            raise InputError(
                f"round {self._open_round.index} is running: edit entities after it finishes (or cancel it)."
            )

    def _require_open(self, rnd: Round) -> None:
        if self._open_round is not rnd:
            raise InputError(f"round {rnd.index} is not the open round of this session.")

    def _checked_mask(self, mask: CompactMask) -> CompactMask:
        mask.check_fits(self.shape)
        if mask.is_empty:
            raise InputError("an entity needs a non-empty mask: to remove an entity, delete it.")
        return mask.tight()

    def _dense_to_compact(self, mask: np.ndarray) -> CompactMask:
        mask = np.asarray(mask)
        if mask.shape != self.shape:
            raise InputError(f"the mask has shape {mask.shape} but the session's volume is {self.shape} [k, j, i].")
        return CompactMask.from_dense(mask)

    def _describe(
        self, coded: CodedTerminology, mask: CompactMask, key_slice: int | None, ref: str | None, uncertain: list[str]
    ) -> tuple[Measurements, str]:
        m = measure(mask, self.geometry, key_slice)
        related = []
        if ref and ref in self.entities and not self.entities[ref].mask.is_empty:
            other = self.entities[ref]
            related.append(RelatedEntity(ref, other.name, spatial_relation(mask, other.mask, self.geometry)))
        return m, findings_text(coded, m, related, uncertain)

    def _refresh_dependants(self, entity_id: str) -> None:
        """Findings of entities placed relative to ``entity_id`` quote its mask: recompute them."""
        for e in list(self.entities.values()):
            if e.ref == entity_id and e.id != entity_id:
                m, text = self._describe(e.terminology, e.mask, e.key_slice, e.ref, list(e.uncertainty))
                self.entities[e.id] = replace(e, findings=text, measurements=m)

    def _pick_color(self, preferred: Color | None) -> Color:
        used = {e.color for e in self.entities.values()}
        if preferred is not None and tuple(preferred) not in used:
            return tuple(preferred)  # type: ignore[return-value]  # a copy of the Color given, same length
        for c in PALETTE:
            if c not in used:
                return c
        return PALETTE[len(self.entities) % len(PALETTE)]

    def _log(self, kind: str, entity_id: str, detail: dict[str, Any]) -> None:
        self.edits.append(EditRecord(kind, entity_id, len(self.rounds), now_iso(), detail))
        self.save()


def _slice_box(mask: CompactMask, k: int, shape: tuple[int, int, int]) -> tuple[int, int, int, int] | None:
    """``(i0, j0, i1, j1)`` of the mask on slice ``k`` (the prompt convention)."""
    m2 = mask.slice_mask(k, shape)
    rows, cols = np.flatnonzero(m2.any(axis=1)), np.flatnonzero(m2.any(axis=0))
    if rows.size == 0:
        return None
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))
