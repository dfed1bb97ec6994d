"""Saving a session folder: versioned ``session.json`` plus content-addressed ``masks/*.npz`` (``restore.py`` loads it).

Crash safety without a journal: mask files are named by the SHA-256 of their content and written (atomically)
before ``session.json`` is replaced in one rename, and a mask file is deleted only after the ``session.json`` that
stopped naming it is in place. So whenever the process dies, the folder holds one complete state: the old one or
the new one. Unchanged masks are never rewritten, which keeps a save after each round cheap however many entities
there are. Masks are loaded with ``allow_pickle=False``; nothing in a session folder is executable.

The format is documented in ``docs/session-format.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..atomic import atomic_output, write_text_atomic
from ..wire.errors import InputError
from ..wire.masks import CompactMask, mask_file_digest
from ..wire.session_archive import MASK_DIR, SESSION_FILE
from .entity import Entity
from .records import Round, TargetRecord, now_iso

if TYPE_CHECKING:  # annotation only: the session imports this module to save itself
    from .session import Session

FORMAT = "medseg-reasoning/session"
FORMAT_VERSION = 1


def save_session(session: Session, folder: str | Path) -> None:
    """Write the session's complete state to ``folder`` (see the module docstring for why it is crash-safe)."""
    folder = Path(folder)
    (folder / MASK_DIR).mkdir(parents=True, exist_ok=True)
    referenced: set[str] = set()

    def mask_file(mask: CompactMask) -> str:
        name = f"{MASK_DIR}/{mask_file_digest(mask)}.npz"
        if name not in referenced:
            referenced.add(name)
            path = folder / name
            if not path.exists():
                _write_mask(path, mask)
        return name

    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "software": {"medseg_reasoning": __version__},
        "created": session.created,
        "saved": now_iso(),
        "volume": session.volume.to_dict(),
        "models": session.models,
        "next_entity_number": session.next_number,
        "entities": [e.to_dict(mask_file(e.mask)) for e in session.entities.values()],
        "rounds": [_round_to_dict(r, mask_file) for r in session.rounds],
        "edits": [e.to_dict() for e in session.edits],
    }
    write_text_atomic(folder / SESSION_FILE, json.dumps(doc, indent=1, allow_nan=False, default=_plain) + "\n")
    for stale in (folder / MASK_DIR).glob("*.npz"):
        if f"{MASK_DIR}/{stale.name}" not in referenced:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def rolled_back_on_failure(folder: str | Path | None) -> Iterator[None]:
    """Whatever is saved to the session ``folder`` inside the ``with`` is undone if the block raises.

    Why: a round is saved when it finishes, but its outputs (``--out``) are written after it; if writing them
    fails, the round must not stay in the session, or a retry would add it twice (round and entity). The saved
    state is the ``session.json`` before the block (its bytes, put back atomically) and the mask files it names;
    mask files the block added are removed again. ``None`` (no session folder) does nothing.
    """
    if folder is None:
        yield
        return
    folder = Path(folder)
    doc = folder / SESSION_FILE
    before = doc.read_bytes() if doc.is_file() else None
    masks_before = {p.name for p in (folder / MASK_DIR).glob("*.npz")}
    try:
        yield
    except BaseException:
        if before is None:
            doc.unlink(missing_ok=True)
        else:
            with atomic_output(doc) as tmp:
                tmp.write_bytes(before)
        for added in (folder / MASK_DIR).glob("*.npz"):
            if added.name not in masks_before:
                with contextlib.suppress(OSError):
                    os.unlink(added)
        raise


# ---------------------------------------------------------------------------------------------------------------
def _write_mask(path: Path, mask: CompactMask) -> None:
    box = np.asarray(mask.box if mask.box is not None else (), dtype=np.int64)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, box=box, bits=np.frombuffer(mask.bits, dtype=np.uint8))


def _read_mask(folder: Path, name: str) -> CompactMask:
    path = folder / name
    if Path(name).parent.as_posix() != MASK_DIR or not path.is_file():
        raise InputError(f"the session names a mask file {name!r} that is missing: the session folder is damaged.")
    with np.load(path, allow_pickle=False) as z:
        box = z["box"]
        bits = z["bits"].tobytes()
    mask = CompactMask(tuple(int(v) for v in box) if box.size else None, bits)  # type: ignore[arg-type]  # CompactMask checks it is 6 ints
    if mask_file_digest(mask) != path.stem:
        raise InputError(f"{path} does not hold the mask its name promises: the session folder is damaged.")
    return mask


def _round_to_dict(r: Round, mask_file: Callable[[CompactMask], str]) -> dict[str, Any]:
    return {
        "index": r.index,
        "question": r.question,
        "reasoning": r.reasoning,
        "references": r.references,
        "clarification": r.clarification,
        "targets": [t.to_dict() for t in r.targets],
        "created": r.created,
        "superseded": [e.to_dict(mask_file(e.mask)) for e in r.superseded],
        "timings": r.timings,
        "started": r.started,
        "finished": r.finished,
        "models": r.models,
    }


def _round_from_dict(d: dict[str, Any], mask_of: Callable[[dict[str, Any]], CompactMask]) -> Round:
    return Round(
        index=int(d["index"]),
        question=d["question"],
        reasoning=d.get("reasoning", ""),
        targets=[TargetRecord.from_dict(t) for t in d.get("targets", [])],
        references=list(d.get("references", [])),
        clarification=d.get("clarification"),
        created=list(d.get("created", [])),
        superseded=[Entity.from_dict(e, mask_of(e)) for e in d.get("superseded", [])],
        timings=dict(d.get("timings", {})),
        started=d.get("started", ""),
        finished=d.get("finished", ""),
        models={str(role): dict(identity) for role, identity in (d.get("models") or {}).items()},
    )


def _plain(value: object) -> object:
    """numpy scalars (a reasoner adapter may hand them in) as plain JSON values."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"{type(value).__name__} cannot be saved in a session")
