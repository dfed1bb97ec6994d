"""The chat panel's ``ChatBackend`` over the HTTP client: one server session, its volume, rounds as ``RoundEvent``s.

Why a separate object: the panel knows widgets, the client knows HTTP, and this link knows what a *round in
Slicer* needs between them. It keeps the server session (creating a new one when the old one expired, and
sending the volume again when the server lost it), sends the user's edited masks before a question, turns the
panel's ``context`` (current view, clicks/boxes from markups) into the round request, and translates the
client's Server-Sent Events into the panel's ``RoundEvent``s.

Threads: ``ask`` is called on the panel's worker thread. The client's ``ask`` delivers events to callbacks and
blocks, so it runs on a second thread here and its events are handed over by a queue: that is what lets ``ask``
be a generator the panel iterates. ``cancel`` (any thread) sets the round's cancel flag; the client then posts
``.../rounds/current/cancel`` and the server stops the round at its next model call (a queued one at once).

The context (built by the panel on the GUI thread, see ``ChatPanel``)::

    {"view": {"orientation": "axial" | "coronal" | "sagittal", "slice": 57},            # optional
     "prompts": {"points": [[i, j, k], [i, j, k, 0]],                                     # optional; label 1
                 "boxes": [[i0, j0, k0, i1, j1, k1]]},                                    # (default) or 0
     "edits": {"E2": CompactMask},        # optional; the panel fills it from ``before_round`` on the GUI thread
     "propagate": True, "window": "ct-soft-tissue"}                                       # optional

Everything is in voxel indices of the uploaded ``[k, j, i]`` array (the Slicer module converts RAS to IJK).
What the server does with prompts (docs/wire-format.md): they are segmented as given and the reasoner is not
asked; the question becomes the structure's label. The server has no "hint" form that sends clicks *to the
reasoner*; this link does not pretend otherwise.

``refine(entity_id, context, erase)`` is the same kind of round for a correction of an existing entity: the context's
one box (and the clicks on its slice) become ``MedSegClient.refine``'s request (``refine_request``), the server runs
the engine's ``refine_entity``, and the ``target`` event carries the entity under its own id, so the scene writer
replaces that segment's voxels in place.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..wire.client import MedSegClient
from ..wire.errors import ClientError, Conflict, InputError, NotFound, RoundCancelled
from ..wire.events import Entity
from ..wire.geometry import PLANE_ORIENTATIONS, plane_ijk_axes
from ..wire.masks import CompactMask
from .chat_panel import RoundEvent, answer_text

ORIENTATIONS = PLANE_ORIENTATIONS
_END = object()  # the end of one round's event stream on the hand-over queue

BeforeRound = Callable[[], Mapping[str, CompactMask]]


@dataclass(frozen=True)
class _Work:
    """What one round asks the server: a question, or (``entity_id`` set) a correction of that entity."""

    question: str = ""
    entity_id: str | None = None
    erase: bool = False


class BackendLink:
    """A ``ChatBackend`` over one ``MedSegClient`` (see the module docstring for threads and the context).

    ``before_round``: set by the Slicer module; returns the masks the user edited since the last round (entity id
    -> ``CompactMask`` on the uploaded grid). The panel calls it on the GUI thread (it reads the scene) and puts
    the result in ``context["edits"]``; called without the panel, ``ask`` calls it itself.
    ``on_target``: optional, called on the link's thread with each target's ``client.Entity`` (mask decoded) before
    the event goes to the panel; whatever it returns travels in the event as ``data["prepared"]``, so heavy work
    (a dense mask, a labelmap) is done off the GUI thread and only applied there.
    """

    def __init__(
        self,
        client: Any,
        *,
        session_id: str | None = None,
        before_round: BeforeRound | None = None,
        on_target: Callable[[Any], Any] | None = None,
        propagate: bool = True,
        window: str | None = None,
    ) -> None:
        self.client = client
        self.before_round = before_round
        self.on_target = on_target
        self.propagate = propagate
        self.window = window
        self._session_id = session_id
        self._archive: bytes | None = None  # the conversation as the server last gave it (see ``fetch_archive``)
        self.restored_from: str | None = None  # the expired session a restored one continues
        self._expired_id: str | None = None
        self._volume: tuple | None = None  # (array, origin, spacing, direction, modality, dicom)
        self._sent_to: str | None = None  # the session that has the current volume
        self._lock = threading.Lock()
        self._cancel: threading.Event | None = None

    # -- session and volume -------------------------------------------------------------------------------------------
    @property
    def session_id(self) -> str | None:
        return self._session_id

    def set_volume(
        self,
        array: Any,
        origin: Sequence[float],
        spacing: Sequence[float],
        direction: Any,
        modality: str = "",
        dicom: Mapping[str, str] | None = None,
    ) -> None:
        """The volume questions are about: ``array`` is ``[k, j, i]``, geometry LPS (direction columns = i, j, k).
        ``dicom``: the source series' UIDs (``local_export.series_uids``), recorded by the session for export.

        Nothing is sent now (this runs on the GUI thread); the next round sends it, by content hash when the
        server already holds it (``MedSegClient.upload_volume``).
        """
        with self._lock:
            self._volume = (array, tuple(origin), tuple(spacing), direction, modality, dict(dicom or {}))
            self._sent_to = None

    def ensure_session(self) -> str:
        """The session to ask in: the known one while the server still has it, else a new one; volume attached."""
        client = self.client
        sid = self._session_id
        if sid is not None:
            try:
                summary = client.session(sid)
                volume = summary.get("volume") or {}
                if not volume or volume.get("attached") is False:
                    self._sent_to = None  # the server restarted or never had it: send (by hash first) again
            except NotFound:
                self._forget_session()
                sid = None
        if sid is None:
            sid = self._restored_session() or client.create_session()
            self._session_id, self._sent_to = sid, None
        if self._volume is not None and self._sent_to != sid:
            array, origin, spacing, direction, modality, dicom = self._volume
            if dicom:
                client.upload_volume(sid, array, origin, spacing, direction, modality, dicom=dicom)
            else:  # as before: clients (and test doubles) without the dicom keyword keep working
                client.upload_volume(sid, array, origin, spacing, direction, modality)
            self._sent_to = sid
        return sid

    def set_archive(self, archive: bytes | None) -> None:
        """The saved conversation (``fetch_archive``'s bytes, kept with the scene): if the server forgot the session,
        the next round continues it in a restored one (same entity ids, masks and history) instead of starting over."""
        with self._lock:
            self._archive = archive

    def fetch_archive(self) -> bytes | None:
        """The conversation as the server holds it now (``GET …/archive``), remembered for ``set_archive``'s use.
        Blocks: call it after a round, off the GUI thread where possible."""
        if self._session_id is None:
            return None
        archive = self.client.session_archive(self._session_id)
        with self._lock:
            self._archive = archive
        return archive

    def _forget_session(self) -> None:
        """The server no longer knows the session: remember which one it was (a restore continues it)."""
        with self._lock:
            if self._session_id is not None:
                self._expired_id = self._session_id
            self._session_id = None

    def _restored_session(self) -> str | None:
        """A new server session continuing the saved conversation, or None when there is none or it is refused
        (then the conversation starts over; the scene keeps the old segments)."""
        with self._lock:
            archive, expired = self._archive, self._expired_id
        if archive is None:
            return None
        try:
            sid = self.client.restore_session(archive)
        except ClientError:
            return None
        self.restored_from = expired
        return sid

    # -- ChatBackend ------------------------------------------------------------------------------------------------------
    def ask(self, question: str, context: dict) -> Iterator[RoundEvent]:
        """One round, started now; the iterator yields reasoning/progress/target events, then exactly one ``done``
        (after an ``error`` when it failed). Closing the iterator early cancels *this* round (not a later one)."""
        return self._start(_Work(question=question), context)

    def refine(self, entity_id: str, context: dict, erase: bool = False) -> Iterator[RoundEvent]:
        """Correct entity ``entity_id`` from the box (and clicks) in ``context["prompts"]``, as a round on the server
        (``MedSegClient.refine``): the same events as ``ask``, its ``target`` the refined entity (same id), so the
        scene writer updates that segment in place. ``erase``: remove what lies in the box instead of adding."""
        return self._start(_Work(entity_id=entity_id, erase=erase), context)

    def _start(self, work: _Work, context: dict) -> Iterator[RoundEvent]:
        cancel = threading.Event()
        with self._lock:
            self._cancel = cancel
        events: queue.Queue[Any] = queue.Queue()
        threading.Thread(
            target=self._round, args=(work, dict(context), cancel, events), name="medseg-link-round", daemon=True
        ).start()
        return _drain(events, cancel)

    def cancel(self) -> None:
        with self._lock:
            if self._cancel is not None:
                self._cancel.set()

    def set_review(self, entity_id: str, review: str) -> None:
        if self._session_id is None:
            raise InputError("there is no server session yet: ask a question first.")
        self.client.update_entity(self._session_id, entity_id, review=review)

    # -- the round (link thread) ------------------------------------------------------------------------------------------
    def _round(self, work: _Work, context: dict, cancel: threading.Event, events: queue.Queue) -> None:
        def done(data: dict) -> None:
            events.put(RoundEvent("done", {"session_id": self._session_id, **data}))

        try:
            if work.entity_id is None:
                request = round_request(context, propagate=self.propagate, window=self.window)
            else:
                request = refine_request(context, erase=work.erase, window=self.window)
            edits = context["edits"] if "edits" in context else (self.before_round() if self.before_round else {})
            if self._volume is None and self._session_id is None:
                raise InputError("no volume to ask about: choose the input volume first.")
            events.put(RoundEvent("progress", {"stage": "connecting", "fraction": 0.0}))
            result = None
            for attempt in (0, 1):
                sid = self.ensure_session()
                try:
                    for entity_id, mask in (edits or {}).items():
                        if cancel.is_set():
                            raise RoundCancelled("the round was cancelled before it started.", code="cancelled")
                        self.client.replace_mask(sid, entity_id, mask)
                    if cancel.is_set():
                        raise RoundCancelled("the round was cancelled before it started.", code="cancelled")
                    result = self._call(sid, work, request, lambda e: self._forward(e, events), cancel)
                    break
                except (Conflict, NotFound) as exc:
                    lost = isinstance(exc, NotFound) and exc.code == "session_not_found"
                    if attempt or not (lost or exc.code == "volume_missing"):
                        raise
                    self._sent_to = None  # the server lost the session or its volume meanwhile: once more
                    if lost:
                        self._forget_session()
            assert result is not None
            names = {e.id: e.name for e in result.entities}
            done(
                {
                    "status": result.status,
                    "round": result.round,
                    "round_id": result.round_id,
                    "targets": result.targets,
                    "clarification": result.clarification,
                    "reasoning": result.reasoning,
                    "timings": result.timings,
                    "answer": refine_answer(result.refine, names)
                    if work.entity_id is not None
                    else answer_text(result.targets, result.clarification, names),
                }
            )
        except RoundCancelled as exc:
            done({"status": "cancelled", "answer": "Cancelled.", "reason": str(exc)})
        except (ClientError, InputError) as exc:
            events.put(RoundEvent("error", {"message": str(exc), "code": getattr(exc, "code", None)}))
            done({"status": "failed", "answer": ""})
        except Exception as exc:  # a bug must not leave the panel waiting forever: say it, end the round
            events.put(RoundEvent("error", {"message": f"unexpected failure: {type(exc).__name__}: {exc}"}))
            done({"status": "failed", "answer": ""})
        finally:
            events.put(_END)

    def _call(self, sid: str, work: _Work, request: dict, on_event: Callable, cancel: threading.Event) -> Any:
        """The client call for ``work``: a question (``ask``) or a refine of an entity (``refine``)."""
        if work.entity_id is None:
            return self.client.ask(sid, work.question, on_event=on_event, cancel=cancel, **request)
        return self.client.refine(sid, work.entity_id, on_event=on_event, cancel=cancel, **request)

    def _forward(self, event: Any, events: queue.Queue) -> None:
        """Client SSE event -> panel event. ``error`` and ``done`` are not forwarded: the client turns them into
        its result or a typed exception, which ``_round`` reports once."""
        if event.name == "reasoning":
            events.put(RoundEvent("reasoning", {"text": event.data.get("text", "")}))
        elif event.name == "progress":
            events.put(RoundEvent("progress", dict(event.data)))
        elif event.name == "target":
            entity = Entity.from_json(event.data["entity"])
            data = {**event.data, "entity_object": entity}
            if self.on_target is not None:
                data["prepared"] = self.on_target(entity)
            events.put(RoundEvent("target", data))


def _drain(events: queue.Queue, cancel: threading.Event) -> Iterator[RoundEvent]:
    finished = False
    try:
        while True:
            item = events.get()
            if item is _END:
                finished = True
                return
            yield item
    finally:
        if not finished:
            cancel.set()  # the reader went away (panel cancelled): the server round must not run on unseen


def round_request(context: Mapping[str, Any], *, propagate: bool = True, window: str | None = None) -> dict:
    """The keyword arguments of ``MedSegClient.ask`` for a panel context (see the module docstring).

    Boxes go to the slice of their centre (a markups ROI drawn in an axial view is one slice thick or a few);
    points on that slice join the box, points on other slices make a prompt of their own, one per slice.
    """
    request: dict[str, Any] = {"propagate": bool(context.get("propagate", propagate))}
    win = context.get("window", window)
    if win:
        request["window"] = str(win)
    view = context.get("view")
    orientation = None
    if view:
        orientation = str(view.get("orientation", "")).lower()
        if orientation not in ORIENTATIONS:
            raise InputError(f"the current view's orientation {orientation!r} is not one of {', '.join(ORIENTATIONS)}.")
        index = _index(view.get("slice"), "the current view's slice")
        request["current_view"] = {"orientation": orientation, "slice": index}
    request["prompts"] = _prompts(context.get("prompts") or {}, orientation)
    return request


def refine_request(context: Mapping[str, Any], *, erase: bool = False, window: str | None = None) -> dict:
    """The keyword arguments of ``MedSegClient.refine`` for a panel context: its one box, on the current view's plane
    (else the plane the box is thinnest across), at the box's centre slice, with the clicks on that slice.

    Refused (``InputError``, shown in the chat) when there is no box or several, or a click lies on another slice:
    a correction is one box on one slice, and a click elsewhere would be silently lost otherwise."""
    prompts = context.get("prompts") or {}
    boxes = prompts.get("boxes") or []
    if len(boxes) != 1:
        raise InputError(
            f"a correction takes one box on the slice to correct, and {len(boxes)} are placed: "
            + ("place a box with the Box button first." if not boxes else "remove all but one.")
        )
    view = context.get("view")
    orientation = None
    if view:
        orientation = str(view.get("orientation", "")).lower()
        if orientation not in ORIENTATIONS:
            raise InputError(f"the current view's orientation {orientation!r} is not one of {', '.join(ORIENTATIONS)}.")
    planes = _prompts(prompts, orientation)
    (plane,) = [p for p in planes if "box" in p]
    stray = [p for p in planes if "box" not in p]
    if stray:
        raise InputError(
            f"the box is on {plane['orientation']} slice {plane['slice']} but clicks are on {stray[0]['orientation']} "
            f"slice {stray[0]['slice']}: a correction takes clicks on the box's slice only."
        )
    k = plane["slice"]
    labels = plane.get("point_labels", [])
    request: dict[str, Any] = {
        ("erase" if erase else "box"): [*plane["box"], k],
        "points": [[u, v, k, label] for (u, v), label in zip(plane.get("points", []), labels, strict=True)],
        "view": {"orientation": plane["orientation"], "slice": k},
    }
    win = context.get("window", window)
    if win:
        request["window"] = str(win)
    return request


def refine_answer(summary: Mapping[str, Any] | None, names: Mapping[str, str]) -> str:
    """The chat's answer line for a refine, from ``done``'s ``refine`` part: what was done to which entity, where,
    and how many slices changed (the reviewer's cue to scroll through them)."""
    if not summary:
        return "Refined."
    eid = str(summary.get("entity_id") or "?")
    what = f"{eid} ({names[eid]})" if names.get(eid) else eid
    verb = "Erased from" if summary.get("kind") == "erase" else "Added to"
    changed = list(summary.get("changed_slices") or [])
    where = f"{summary.get('orientation', 'axial')} slice {summary.get('slice')}"
    slices = ", ".join(str(n) for n in changed) or "none"
    return f"{verb} {what} from the box on {where}: {len(changed)} slice(s) changed ({slices})."


def _box_plane(corners: tuple[int, ...], view_orientation: str | None) -> str:
    """The plane a box was drawn on: the current view's, else the axis along which the box is thinnest (a markups
    ROI drawn in a slice view is one or a few voxels thick along that view's normal; ties go to axial)."""
    if view_orientation is not None:
        return view_orientation

    def thickness(name: str) -> int:
        normal = plane_ijk_axes(name)[0]
        return abs(corners[normal + 3] - corners[normal])

    return min(ORIENTATIONS, key=thickness)


def _prompts(prompts: Mapping[str, Any], view_orientation: str | None = None) -> list[dict]:
    """Boxes and clicks grouped per plane: the plane of the view they were placed in (points: axial when no view is
    given), at the box's centre along the plane's normal; clicks on that plane join its box."""
    by_plane: dict[tuple[str, int], dict] = {}
    for n, box in enumerate(prompts.get("boxes") or [], 1):
        if len(box) != 6:
            raise InputError(f"box {n} must be [i0, j0, k0, i1, j1, k1] (voxel indices), got {list(box)}.")
        corners = tuple(_index(v, f"box {n}") for v in box)
        orientation = _box_plane(corners, view_orientation)
        normal, u, v = plane_ijk_axes(orientation)
        index = (min(corners[normal], corners[normal + 3]) + max(corners[normal], corners[normal + 3])) // 2
        if (orientation, index) in by_plane:
            raise InputError(
                f"two boxes on {orientation} slice {index}: the server takes one box per slice and question."
            )
        lo = [min(corners[a], corners[a + 3]) for a in (u, v)]
        hi = [max(corners[a], corners[a + 3]) for a in (u, v)]
        by_plane[(orientation, index)] = {
            "orientation": orientation,
            "slice": index,
            "box": [lo[0], lo[1], hi[0], hi[1]],
            "points": [],
        }
    point_plane = view_orientation or "axial"
    normal, u, v = plane_ijk_axes(point_plane)
    for n, point in enumerate(prompts.get("points") or [], 1):
        if len(point) not in (3, 4):
            raise InputError(f"point {n} must be [i, j, k] or [i, j, k, label] (voxel indices), got {list(point)}.")
        ijk = tuple(_index(c, f"point {n}") for c in point[:3])
        label = int(point[3]) if len(point) == 4 else 1
        if label not in (0, 1):
            raise InputError(f"point {n}: the label is 1 (inside the structure) or 0 (outside), got {label}.")
        key = (point_plane, ijk[normal])
        prompt = by_plane.setdefault(key, {"orientation": point_plane, "slice": ijk[normal], "points": []})
        prompt["points"].append([ijk[u], ijk[v]])
        prompt.setdefault("point_labels", []).append(label)
    out = []
    for key in sorted(by_plane):
        prompt = by_plane[key]
        if "box" not in prompt and 1 not in prompt.get("point_labels", []):
            raise InputError(
                f"{key[0]} slice {key[1]} has only points marked outside: add a box or a point inside the structure."
            )
        if not prompt["points"]:
            del prompt["points"]
        out.append(prompt)
    return out


def _index(value: Any, what: str) -> int:
    try:
        index = int(round(float(value)))
    except (TypeError, ValueError):
        raise InputError(f"{what}: {value!r} is not a voxel index.") from None
    if index < 0:
        raise InputError(f"{what}: {index} lies outside the volume (voxel indices start at 0).")
    return index


def chat_backend(url: str, token: str, **kw: Any) -> BackendLink:
    """The chat panel's backend for the server at ``url``: a ``BackendLink`` over a new ``MedSegClient``.

    ``ca_file``, ``timeout`` and ``affinity`` go to ``MedSegClient``; the rest (``session_id``, ``before_round``,
    ``on_target``, ``propagate``, ``window``) to the link. It lives here, not in the wire, because the wire knows
    nothing of the Slicer side; the panel knows only the ``ChatBackend`` protocol this link fulfils."""
    client_kw = {key: kw.pop(key) for key in ("ca_file", "timeout", "affinity") if key in kw}
    return BackendLink(MedSegClient(url, token, **client_kw), **kw)


__all__ = ["BackendLink", "chat_backend", "refine_answer", "refine_request", "round_request"]
