"""Server-side sessions: who owns them, their volume, their dialogue, idle expiry, and the cap on how many.

A server session wraps one ``dialogue.Session`` and saves it in the dialogue's own folder format
(``docs/session-format.md``) under ``<state>/sessions/<uuid>/``, so a crash mid-round loses at most that round,
and replicas that share the state folder can pick up each other's sessions (the client re-sends the volume, which
is checked against the session's content hash). Ids are uuid4 strings made here; an id from a request is parsed
as a UUID before it is ever used as a folder name, so no client text reaches the file system.

Each session belongs to the token (name) that created it: another token gets "not found", never a hint that the
session exists. Volumes are kept in memory per token and content hash, so the same volume sent again (a new session
on the same series, a reconnect) is attached without a transfer.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

from ..dialogue.records import now_iso
from ..dialogue.restore import load_session
from ..dialogue.session import Session
from ..reasoning.base import Reasoner
from ..terminology import Terminology
from ..volume.core import Volume
from ..wire.errors import MedSegError
from ..wire.session_archive import SESSION_FILE
from .errors import ApiError, bad_request, conflict, not_found
from .wire import entity_json

SIDECAR = "server.json"  # owner and creation time; beside session.json, ignored by the dialogue's loader
_TOUCH_EVERY_S = 10.0


@dataclass
class ActiveRound:
    """The round running in a session (at most one): its id, and how to stop it."""

    id: str
    index: int
    cancel: threading.Event
    started: float = field(default_factory=time.monotonic)


@dataclass
class ServerSession:
    """One client's session. ``dialogue`` exists once a volume has arrived (the dialogue is tied to its volume)."""

    id: str
    owner: str
    folder: Path
    created: str
    volume: Volume | None = None
    volume_hash: str | None = None
    dialogue: Session | None = None
    reasoner: Reasoner | None = None
    active: ActiveRound | None = None
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _touched: float = 0.0

    def touch(self) -> None:
        """Mark the session used (idle expiry); also the sidecar's mtime, for replicas sharing the folder."""
        self.last_used = time.monotonic()
        if self.last_used - self._touched > _TOUCH_EVERY_S:
            self._touched = self.last_used
            try:
                os.utime(self.folder / SIDECAR)
            except OSError:
                pass

    @property
    def busy(self) -> bool:
        return self.active is not None

    def summary(self) -> dict:
        d = self.dialogue
        return {
            "id": self.id,
            "created": self.created,
            "volume": None
            if self.volume_hash is None
            else {
                "content_sha256": self.volume_hash,
                "attached": self.volume is not None,
                "shape": list(d.shape) if d else (list(self.volume.shape) if self.volume is not None else None),
            },
            "rounds": len(d.rounds) if d else 0,
            "entities": len(d.entities) if d else 0,
            "running_round": None if self.active is None else {"id": self.active.id, "round": self.active.index},
        }


class VolumeCache:
    """Uploaded volumes by (owner, content hash), bounded in bytes; volumes in use by a session are never dropped."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], Volume] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, owner: str, digest: str) -> Volume | None:
        with self._lock:
            volume = self._items.get((owner, digest))
            if volume is not None:
                self._items.move_to_end((owner, digest))
            return volume

    def put(self, owner: str, volume: Volume, in_use: set[tuple[str, str]]) -> None:
        with self._lock:
            self._items[(owner, volume.content_hash())] = volume
            self._items.move_to_end((owner, volume.content_hash()))
            total = sum(v.array.nbytes for v in self._items.values())
            for key in list(self._items):
                if total <= self.max_bytes:
                    break
                if key in in_use or key == (owner, volume.content_hash()):
                    continue
                total -= self._items.pop(key).array.nbytes

    def drop_unused(self, in_use: set[tuple[str, str]]) -> None:
        with self._lock:
            total = sum(v.array.nbytes for v in self._items.values())
            for key in list(self._items):
                if total <= self.max_bytes:
                    break
                if key not in in_use:
                    total -= self._items.pop(key).array.nbytes


class SessionStore:
    """All sessions of this server process; thread-safe."""

    def __init__(
        self,
        root: Path,
        max_sessions: int,
        idle_s: float,
        volume_cache_bytes: int,
        terminology: Terminology | None,
        *,
        max_per_owner: int | None = None,
        evict_idle_s: float | None = None,
        on_evict: Callable[[ServerSession], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_sessions = max_sessions
        self.max_per_owner = min(max_per_owner or max_sessions, max_sessions)
        self.idle_s = idle_s
        self.evict_idle_s = min(idle_s, evict_idle_s if evict_idle_s is not None else idle_s)
        self.on_evict = on_evict
        self.volumes = VolumeCache(volume_cache_bytes)
        self.terminology = terminology
        self._sessions: dict[str, ServerSession] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    # -- create / find / delete ---------------------------------------------------------------------------------
    def create(self, owner: str) -> ServerSession:
        """A new session for ``owner``. At the server's or the owner's limit, the longest-idle session (the owner's
        own, at the owner's limit) makes room if it has been idle ``evict_idle_s``; otherwise 503 / 429."""
        evicted: list[ServerSession] = []
        try:
            with self._lock:
                self._make_room(owner, evicted)
                return self._new_session(owner)
        finally:
            for gone in evicted:
                self._discard(gone)

    def _make_room(self, owner: str, evicted: list[ServerSession]) -> None:
        """Evict (into ``evicted``) or refuse so that one more session of ``owner`` fits. The owner's quota is
        checked first, so a refusal never follows an eviction."""
        if self.max_per_owner < self.max_sessions and self._count(owner) >= self.max_per_owner:
            victim = self._longest_idle(owner)
            if victim is None:
                retry = self._seconds_until_a_slot(owner)
                raise ApiError(
                    429,
                    "session_quota_reached",
                    f"this token already holds {self.max_per_owner} sessions, the most one token may hold on this "
                    f"server: close one you no longer need, or try again in about {retry} s.",
                    {"Retry-After": str(retry)},
                )
            evicted.append(self._sessions.pop(victim.id))
        if len(self._sessions) >= self.max_sessions:
            victim = self._longest_idle(None)
            if victim is None:
                retry = self._seconds_until_a_slot(None)
                raise ApiError(
                    503,
                    "too_many_sessions",
                    f"the server already holds its maximum of {self.max_sessions} sessions: try again in about "
                    f"{retry} s, or close a session you no longer need.",
                    {"Retry-After": str(retry)},
                )
            evicted.append(self._sessions.pop(victim.id))

    def _count(self, owner: str) -> int:
        return sum(s.owner == owner for s in self._sessions.values())

    def _longest_idle(self, owner: str | None) -> ServerSession | None:
        """The session idle longest (of ``owner``, or of the owner holding the most), if idle ``evict_idle_s``."""
        now = time.monotonic()
        counts: dict[str, int] = {}
        for s in self._sessions.values():
            counts[s.owner] = counts.get(s.owner, 0) + 1
        candidates = [
            s
            for s in self._sessions.values()
            if not s.busy and now - s.last_used >= self.evict_idle_s and (owner is None or s.owner == owner)
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda s: (-counts[s.owner], s.last_used))

    def _discard(self, session: ServerSession) -> None:
        """An evicted session: its folder goes (its client holds the archive), the audit log says so."""
        shutil.rmtree(session.folder, ignore_errors=True)
        self.volumes.drop_unused(self.volumes_in_use())
        if self.on_evict is not None:
            self.on_evict(session)

    def _new_session(self, owner: str) -> ServerSession:
        sid = str(uuid.uuid4())
        folder = self.root / sid
        folder.mkdir(mode=0o700)
        created = now_iso()
        (folder / SIDECAR).write_text(json.dumps({"owner": owner, "created": created}) + "\n", encoding="utf-8")
        session = ServerSession(sid, owner, folder, created)
        self._sessions[sid] = session
        return session

    def restore(self, owner: str, archive: bytes, max_bytes: int) -> ServerSession:
        """A new session (new id) holding the conversation in ``archive`` (``session_archive.py``); its volume must be sent
        again, and only the volume the conversation was held on is accepted. Nothing is kept when it is refused."""
        from ..wire.session_archive import ArchiveRefused, unpack_session

        session = self.create(owner)
        try:
            try:
                unpack_session(archive, session.folder, max_bytes)
            except ArchiveRefused as exc:
                raise bad_request(exc.code, str(exc)) from None
            try:
                dialogue = load_session(session.folder, terminology=self.terminology)
            except MemoryError:
                raise
            except Exception as exc:  # anything the untrusted archive's content makes the reader trip over
                raise _damaged_archive(exc, session.folder) from None
        except BaseException:
            self.delete(session)
            raise
        with session.lock:
            session.dialogue = dialogue
            session.volume_hash = dialogue.volume.content_hash
            session.volume = self.volumes.get(owner, session.volume_hash)
        return session

    @overload
    def get(self, sid: str, owner: str, *, load: Literal[True] = True) -> ServerSession: ...
    @overload
    def get(self, sid: str, owner: str, *, load: bool) -> ServerSession | None: ...

    def get(self, sid: str, owner: str, *, load: bool = True) -> ServerSession | None:
        """The caller's session ``sid`` (from memory, else from the shared state folder), or 404.

        ``load=False``: None instead of reading the folder (the event loop asks this way first, and reads the
        folder, rarely needed and slow, on a worker thread)."""
        key = _canonical_uuid(sid)
        with self._lock:
            session = self._sessions.get(key) if key else None
            if session is None and key is not None:
                if not load:
                    return None
                session = self._load(key)
            if session is None or session.owner != owner:
                raise not_found(
                    "session",
                    f"there is no session {sid!r} for this token: it was closed, expired after "
                    f"{self.idle_s / 60:.0f} minutes without use, or never existed; start a new one.",
                )
            session.touch()
            return session

    def delete(self, session: ServerSession) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)
        if session.active is not None:
            session.active.cancel.set()
        shutil.rmtree(session.folder, ignore_errors=True)
        self.volumes.drop_unused(self.volumes_in_use())

    def owned_by(self, owner: str) -> list[ServerSession]:
        with self._lock:
            return [s for s in self._sessions.values() if s.owner == owner]

    def volumes_in_use(self) -> set[tuple[str, str]]:
        with self._lock:
            return {(s.owner, s.volume_hash) for s in self._sessions.values() if s.volume_hash and s.volume is not None}

    # -- expiry ---------------------------------------------------------------------------------------------------
    def expired(self) -> list[ServerSession]:
        """Remove and return the sessions idle longer than ``idle_s`` (never one with a running round)."""
        now = time.monotonic()
        gone: list[ServerSession] = []
        with self._lock:
            for sid, session in list(self._sessions.items()):
                if session.busy or now - session.last_used < self.idle_s:
                    continue
                if _recently_touched_elsewhere(session.folder, self.idle_s):
                    continue  # a replica sharing the folder still uses it
                del self._sessions[sid]
                gone.append(session)
        for session in gone:
            shutil.rmtree(session.folder, ignore_errors=True)
        if gone:
            self.volumes.drop_unused(self.volumes_in_use())
        return gone

    def _seconds_until_a_slot(self, owner: str | None) -> int:
        now = time.monotonic()
        idle = [
            self.evict_idle_s - (now - s.last_used)
            for s in self._sessions.values()
            if not s.busy and (owner is None or s.owner == owner)
        ]
        return max(1, int(min(idle, default=self.evict_idle_s)) + 1)

    # -- volumes ----------------------------------------------------------------------------------------------------
    def attach_volume(self, session: ServerSession, volume: Volume) -> bool:
        """Give ``session`` its volume; True if it changed anything. Caller holds ``session.lock``."""
        digest = volume.content_hash()
        if session.volume is not None and session.volume_hash == digest:
            return False
        if session.dialogue is not None and session.dialogue.rounds and session.dialogue.volume.content_hash != digest:
            raise conflict(
                "session_has_other_volume",
                "this session already has rounds on another volume: start a new session for this volume.",
            )
        if session.dialogue is not None and session.dialogue.volume.content_hash == digest:
            session.volume, session.volume_hash = volume, digest  # re-attached after a restart or on another replica
        else:
            for stale in (session.folder / SESSION_FILE, session.folder / "masks"):
                if stale.is_dir():
                    shutil.rmtree(stale)
                else:
                    stale.unlink(missing_ok=True)
            session.dialogue = Session.for_volume(volume, folder=session.folder, terminology=self.terminology)
            session.volume, session.volume_hash = volume, digest
        self.volumes.put(session.owner, volume, self.volumes_in_use())
        return True

    def _load(self, sid: str) -> ServerSession | None:
        """A session saved by another replica (or before a restart) in the shared state folder; its volume must be
        sent again."""
        folder = self.root / sid
        try:
            side = json.loads((folder / SIDECAR).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        session = ServerSession(sid, str(side.get("owner")), folder, str(side.get("created", "")))
        if (folder / SESSION_FILE).is_file():
            try:
                session.dialogue = load_session(folder, terminology=self.terminology)
            except MemoryError:
                raise
            except Exception:  # a damaged folder is a session that no longer exists, never a 500
                return None
            session.volume_hash = session.dialogue.volume.content_hash
            cached = self.volumes.get(session.owner, session.volume_hash)
            if cached is not None:
                session.volume = cached
        if len(self._sessions) >= self.max_sessions:
            return None
        self._sessions[sid] = session
        return session


def _damaged_archive(exc: Exception, folder: Path) -> ApiError:
    """400 ``archive_invalid`` for a session archive the reader refused or tripped over: the archive is the
    client's input, so its damage is never a 500. The server's own folders never appear in the message."""
    detail = str(exc).replace(str(folder / SESSION_FILE), f"the archive's {SESSION_FILE}")
    detail = detail.replace(str(folder) + os.sep, "the archive's ").replace(str(folder), "the archive")
    if not isinstance(exc, MedSegError):
        detail = f"the archive's session cannot be read ({type(exc).__name__}: {detail or 'no detail'})"
    detail = detail.rstrip(".")
    return bad_request("archive_invalid", f"{detail}; send an archive that GET /v1/sessions/{{id}}/archive returned.")


def _canonical_uuid(text: str) -> str | None:
    try:
        value = uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return None
    canonical = str(value)
    return canonical if canonical == text.lower() else None


def _recently_touched_elsewhere(folder: Path, idle_s: float) -> bool:
    try:
        return time.time() - (folder / SIDECAR).stat().st_mtime < idle_s
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# what the routes do with a session: wait for its lock, refuse while a round runs, undo its last round


def idle_dialogue(session: ServerSession):
    if session.dialogue is None:
        raise conflict("volume_missing", "this session has no volume yet: send it with PUT /v1/sessions/{id}/volume.")
    if session.busy:
        raise conflict("round_running", "a round is running in this session: try again when it has finished.")
    return session.dialogue


def locked(session: ServerSession, fn):
    """Run ``fn`` holding the session's lock (a thread-pool thread waits, never the event loop).

    A running round holds the lock for its whole length, so a busy session is refused at once instead of waiting.
    """
    if session.busy:
        raise conflict("round_running", "a round is running in this session: try again when it has finished.")
    if not session.lock.acquire(timeout=30):
        raise conflict("session_busy", "the session is busy with another request: try again in a moment.")
    try:
        return fn()
    finally:
        session.lock.release()


def undo_last_round(session: ServerSession) -> dict:
    """Undo the session's last round (call it holding the lock): entities it made go, entities it redid get their
    previous version back. The answer of ``POST /v1/sessions/{id}/undo``."""
    dialogue = idle_dialogue(session)
    if not dialogue.rounds:
        raise conflict("nothing_to_undo", "there is no round to undo in this session.")
    rnd = dialogue.undo_last_round()
    return {
        "undone_round": rnd.index,
        "removed": list(rnd.created),
        "restored": [e.id for e in rnd.superseded],
        "entities": [entity_json(e, with_mask=False) for e in dialogue.entities.values()],
    }
