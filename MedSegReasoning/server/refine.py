"""``POST /v1/sessions/{id}/entities/{eid}/refine``: correct an existing entity from one box, streamed as a round.

Why its own module: the request (an add or erase box on one plane, optional clicks) and its checks differ from a
question's, but everything after them is a round's (``rounds.RoundRun``): the same thread, model queues, events,
cancel, saving and undo. The work is ``dialogue.refine.refine_entity``, the one step behind the CLI's
``ask --refine`` and the interactive evaluation, so what the server does is what they measure.

The body mirrors the CLI's options (docs/wire-format.md), in voxel indices of the box's plane::

    {"box":   [u0, v0, u1, v1, slice],                 add: that slice segmented again from the box, propagated
                                                       until it rejoins the mask (exactly one of box / erase)
     "erase": [u0, v0, u1, v1, slice],                 erase: what lies in the box goes, with what grew from it
     "points": [[u, v, slice], [u, v, slice, 0]],      optional clicks on the box's slice (1 inside, 0 outside)
     "view": {"orientation": "coronal", "slice": 250}, optional plane (default axial: (u, v) = (i, j), slice k;
                                                       coronal: (i, k) on plane j; sagittal: (j, k) on plane i)
     "window": "ct-soft-tissue"}                       optional, as for a round
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ..correction import Correction
from ..dialogue.records import Round
from ..dialogue.refine import refine_entity
from ..pipeline import VoxelPrompt, check_prompt
from ..wire.errors import InputError
from ..wire.geometry import Orientation
from .errors import bad_request, from_engine_error, not_found
from .rounds import RoundRun, named_window

MAX_POINTS = 32
"""Clicks per correction: a correction is one box and a few clicks; more is a mistake in the client."""

_BOX = "[u0, v0, u1, v1, slice]: inclusive corners in the plane's axes ((i, j) axial, (i, k) coronal, (j, k) sagittal)"


class PlaneIn(BaseModel):
    """The plane the box was drawn on (as a round's ``current_view``)."""

    model_config = ConfigDict(extra="forbid")
    orientation: Orientation
    slice: int = Field(ge=0, description="the plane's index along its normal: k axial, j coronal, i sagittal")


class RefineIn(BaseModel):
    """A correction of the entity: exactly one of ``box`` (add) and ``erase``, optional clicks, on one plane."""

    model_config = ConfigDict(extra="forbid")
    box: Annotated[list[int], Field(min_length=5, max_length=5)] | None = Field(
        None, description=f"add: segment that slice again from this box; {_BOX}"
    )
    erase: Annotated[list[int], Field(min_length=5, max_length=5)] | None = Field(
        None, description=f"erase: remove the mask inside this box and what grew from it; {_BOX}"
    )
    points: list[Annotated[list[int], Field(min_length=3, max_length=4)]] = Field(
        default_factory=list, description="[[u, v, slice(, label)]]: clicks on the box's slice; label 1 (default) or 0"
    )
    view: PlaneIn | None = Field(None, description="the box's plane; default axial, slice = the box's last value")
    window: str | None = Field(
        None, description="ct-soft-tissue, ct-lung, ct-bone, ct-brain, percentile, or LEVEL,WIDTH"
    )


@dataclass(frozen=True)
class RefineRequest:
    """A validated refine request: which entity, the correction, and the window (``None``: the volume's default)."""

    entity_id: str
    correction: Correction
    window: str | None


def parse_refine_request(body: RefineIn, entity_id: str) -> RefineRequest:
    """Check what the schema cannot (one of box/erase, clicks and view on the box's slice) and build the engine's
    ``Correction``. Bounds against the volume are checked in ``RefineRun.check_request``."""
    if (body.box is None) == (body.erase is None):
        raise bad_request(
            "invalid_correction",
            "a refine needs exactly one of box (add: [u0, v0, u1, v1, slice], segment that slice again) and erase "
            "(remove what lies in the box).",
        )
    erase = body.erase is not None
    drawn = body.erase if body.erase is not None else body.box
    assert drawn is not None  # exactly one of box and erase is set: checked just above
    u0, v0, u1, v1, k = drawn
    if len(body.points) > MAX_POINTS:
        raise bad_request("invalid_correction", f"a refine takes at most {MAX_POINTS} points, got {len(body.points)}.")
    points, labels = [], []
    for n, point in enumerate(body.points, 1):
        label = point[3] if len(point) == 4 else 1
        if label not in (0, 1):
            raise bad_request("invalid_correction", f"point {n} ends in {label}: 1 (inside) or 0 (outside).")
        if point[2] != k:
            raise bad_request(
                "invalid_correction",
                f"point {n} is on slice {point[2]} but the box on slice {k}: clicks must be on the box's slice.",
            )
        points.append((point[0], point[1]))
        labels.append(label)
    orientation: Orientation = "axial"
    if body.view is not None:
        if body.view.slice != k:
            raise bad_request(
                "invalid_correction",
                f"the view is {body.view.orientation} slice {body.view.slice} but the box is on slice {k}: give the "
                "view's slice as the box's last value.",
            )
        orientation = body.view.orientation
    prompt = VoxelPrompt(k=k, box=(u0, v0, u1, v1), points=tuple(points), labels=tuple(labels), orientation=orientation)
    return RefineRequest(entity_id, Correction(prompt, erase=erase), body.window)


class RefineRun(RoundRun):
    """A refine as a round: ``RoundRun``'s thread, events and undo; checks and work of its own."""

    request: RefineRequest

    def check_request(self) -> None:
        """Unknown entity: 404; a box or click outside the volume, or a bad window name: 400 (before the stream)."""
        s = self.session
        assert s.dialogue is not None and s.volume is not None  # checked by ``prepare``
        if self.request.entity_id.upper() not in s.dialogue.entities:
            known = ", ".join(s.dialogue.entities) or "none yet"
            raise not_found(
                "entity",
                f"there is no entity {self.request.entity_id!r} in this session to refine (entities: {known}).",
            )
        try:
            self.window = named_window(self.request.window, s.volume)
            check_prompt(s.volume, self.request.correction.prompt)
        except InputError as exc:
            raise from_engine_error(exc) from None

    def execute(self, models: dict[str, str]) -> Round:
        """``refine_entity`` on the round's thread, its segmenter calls queued like a round's. An add that finds
        nothing or an erase box that holds none of the mask fails the round (``error`` event, status 400); the
        session is then as before."""
        s = self.session
        assert s.dialogue is not None and s.volume is not None and self.window is not None  # set by ``prepare``
        entity_id = self.request.entity_id.upper()
        self.audit.record(
            "round.start", self.token, session=s.id, round=self.index, round_id=self.id, entity=entity_id, **models
        )
        self._progress("erasing" if self.request.correction.erase else "segmenting", 0.05)
        with s.lock:
            return refine_entity(
                s.dialogue,
                s.volume,
                self.queued_segmenter(),
                self.window,
                entity_id,
                self.request.correction,
                config=self.engine.round_config.propagation,
            )

    def _done_data(self, status: str, t0: float, rnd: Round | None = None, reason: str = "") -> dict:
        """A round's ``done``, plus what the correction changed (``refine``), so a client can say it in words."""
        data = super()._done_data(status, t0, rnd=rnd, reason=reason)
        if rnd is not None and rnd.targets:
            data["refine"] = refine_summary(rnd)
        return data


def refine_summary(rnd: Round) -> dict[str, Any]:
    """The refine round's record as ``done`` carries it: entity, kind, plane, slices changed, why each side ended."""
    target = rnd.targets[0]
    prompt = target.prompt or {}
    return {
        "entity_id": target.entity_id,
        "kind": prompt.get("kind"),
        "orientation": prompt.get("orientation", "axial"),
        "slice": prompt.get("slice"),
        "changed_slices": list(prompt.get("changed_slices") or []),
        "stopped": dict(prompt.get("stopped") or {}),
    }
