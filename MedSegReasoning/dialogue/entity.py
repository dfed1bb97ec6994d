"""An entity: one segmented structure that outlives its round, so later questions can refer to it by id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..terminology.codes import CodedTerminology
from ..volume.core import PLANE_ORIENTATIONS
from ..wire.errors import InputError
from ..wire.masks import CompactMask
from .findings import Measurements

ReviewState = Literal["proposed", "confirmed", "rejected"]
REVIEW_STATES: tuple[ReviewState, ...] = get_args(ReviewState)
"""Set by the user: a new entity is *proposed*; rejected entities stay in the record but are not referred to."""

Color = tuple[int, int, int]


@dataclass
class Entity:
    """A segmented structure: id (``E1``, ``E2``... never reused in a session), name, codes, mask, findings.

    ``key_slice`` is always an axial slice index (measurements, the SR's key image and Slicer's jump-to use it as
    one), and ``box`` is the mask's ``(i0, j0, i1, j1)`` on it (the reasoner's convention for prompts), ``bbox``
    its 3D box ``[k0, j0, i0, k1, j1, i1]``. ``key_plane`` is the plane the segmenter was prompted on for the
    mask, ``(orientation, index along its normal)``: ``("coronal", 250)`` for a target the reasoner placed on
    coronal slice j = 250 (its ``key_slice`` is then the axial slice where the mask is largest); None for entities
    saved before it was recorded. ``revision`` counts mask changes (a redo round, a user edit);
    ``updated_round`` is the last round that changed it.
    """

    id: str
    label: str
    terminology: CodedTerminology
    mask: CompactMask
    key_slice: int
    box: tuple[int, int, int, int] | None
    findings: str
    round: int
    color: Color
    measurements: Measurements
    edited: bool = False
    review: str = "proposed"
    ref: str | None = None
    relation: str | None = None
    uncertainty: tuple[str, ...] = ()  # why judgment could not accept the mask; empty when it did
    score: float | None = None
    revision: int = 1
    updated_round: int = 0
    key_plane: tuple[str, int] | None = None

    @property
    def uncertain(self) -> bool:
        return bool(self.uncertainty)

    @property
    def bbox(self) -> tuple[int, int, int, int, int, int] | None:
        return self.mask.box

    @property
    def name(self) -> str:
        """The coded name when there is one ("Left kidney"), else the label as given."""
        return self.terminology.display_name if self.terminology.coded else self.label

    def to_dict(self, mask_file: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "terminology": self.terminology.to_dict(),
            "mask": {"file": mask_file, "box": list(self.mask.box) if self.mask.box else None},
            "key_slice": self.key_slice,
            "box": list(self.box) if self.box else None,
            "findings": self.findings,
            "round": self.round,
            "updated_round": self.updated_round,
            "revision": self.revision,
            "color": list(self.color),
            "measurements": self.measurements.to_dict(),
            "edited": self.edited,
            "review": self.review,
            "ref": self.ref,
            "relation": self.relation,
            "uncertainty": list(self.uncertainty),
            "score": self.score,
            "key_plane": key_plane_json(self.key_plane),
        }

    @staticmethod
    def from_dict(d: dict[str, Any], mask: CompactMask) -> Entity:
        return Entity(
            id=str(d["id"]),
            label=str(d["label"]),
            terminology=CodedTerminology.from_dict(d["terminology"]),
            mask=mask,
            key_slice=int(d["key_slice"]),
            box=tuple(d["box"]) if d.get("box") else None,
            findings=str(d["findings"]),
            round=int(d["round"]),
            color=check_color(d["color"]),
            measurements=Measurements.from_dict(d["measurements"]),
            edited=bool(d["edited"]),
            review=check_review(d["review"]),
            ref=d.get("ref"),
            relation=d.get("relation"),
            uncertainty=tuple(str(r) for r in d.get("uncertainty", ())),
            score=None if d.get("score") is None else float(d["score"]),
            revision=int(d.get("revision", 1)),
            updated_round=int(d.get("updated_round", d["round"])),
            key_plane=key_plane_from_json(d.get("key_plane")),
        )


def key_plane_json(plane: tuple[str, int] | None) -> dict[str, Any] | None:
    """``{"orientation": "coronal", "slice": 250}``: the form ``session.json``, the wire and ``result.json`` share."""
    return None if plane is None else {"orientation": plane[0], "slice": int(plane[1])}


def key_plane_from_json(d: object) -> tuple[str, int] | None:
    if d is None:
        return None
    if not isinstance(d, dict) or d.get("orientation") not in PLANE_ORIENTATIONS:
        raise InputError(f"key_plane must be {{'orientation': axial|coronal|sagittal, 'slice': n}}, got {d!r}.")
    return (str(d["orientation"]), int(d["slice"]))


def check_color(color: object) -> Color:
    """An RGB triple of integers 0-255, or InputError saying so."""
    if (
        not isinstance(color, (list, tuple))
        or len(color) != 3
        or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
    ):
        raise InputError(f"a colour is three integers 0-255 (R, G, B), got {color!r}.")
    return (int(color[0]), int(color[1]), int(color[2]))


def check_review(status: object) -> str:
    if status not in REVIEW_STATES:
        raise InputError(f"review status {status!r} is not one of {', '.join(REVIEW_STATES)}.")
    return str(status)


def is_entity_id(text: str) -> bool:
    return len(text) >= 2 and text[0] in "Ee" and text[1:].isdigit()
