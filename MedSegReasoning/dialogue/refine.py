"""A correction of an existing entity as a round of its session: the step the CLI's ``--refine``, the server and the
Slicer panel share.

Why a round: it is saved like one (crash-safe), undone like one (``Session.undo_last_round`` gives the entity its
previous mask back) and recorded like one (what was drawn, on which plane, what changed), and the entity keeps its
id, name, terminology and history. The mask work itself is ``correction.correct_mask``.
"""

from __future__ import annotations

import time

from ..correction import Correction, correct_mask
from ..propagation import DEFAULT_PROPAGATION, PropagationConfig
from ..segmentation.base import Segmenter, embedding_mark, work_since
from ..volume.core import Volume
from ..volume.windowing import Window
from ..wire.masks import CompactMask
from .records import Round, TargetRecord
from .rounds import round_models
from .session import Session

REFINE_KINDS = ("add", "erase")


def refine_question(entity_id: str, correction: Correction) -> str:
    """The round's text: what the user did, in words (the session's history reads as a conversation)."""
    p = correction.prompt
    verb = "erase inside" if correction.erase else "add from"
    return f"refine {entity_id}: {verb} box {list(p.box or ())} on {p.orientation} slice {p.k}"


def refine_entity(
    session: Session,
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    entity_id: str,
    correction: Correction,
    *,
    config: PropagationConfig = DEFAULT_PROPAGATION,
) -> Round:
    """Correct entity ``entity_id`` from one box and finish the round (saved where the session has a folder).

    Raises ``InputError`` (nothing in the session changes) for another volume, an unknown entity, a box outside the
    volume, an add the segmenter finds nothing for, an erase box that holds none of the mask, or an erase that would
    leave the entity empty (delete it instead).
    """
    session.check_volume(volume)
    entity = session.entity(entity_id)
    mask = entity.mask.to_dense(volume.shape)
    locked = corrected_slices(session, entity.id, correction.prompt.orientation)
    if correction.prompt.orientation == "axial" and entity.key_slice is not None:
        locked.add(int(entity.key_slice))
    locked.discard(correction.prompt.k)
    rnd = session.begin_round(refine_question(entity.id, correction))
    try:
        t0, mark = time.perf_counter(), embedding_mark(segmenter)
        outcome = correct_mask(
            volume, segmenter, window, mask, correction, key_slice=entity.key_slice, config=config, locked=locked
        )
        record = TargetRecord(
            label=entity.label,
            prompt=correction.to_dict(),
            redo=entity.id,
            status="accepted",
            entity_id=entity.id,
            timings={"refine_s": time.perf_counter() - t0},
        )
        work = work_since(segmenter, mark, len(outcome.segmented_slices))
        record.work = work.to_dict()
        record.prompt["changed_slices"] = outcome.changed_slices
        record.prompt["stopped"] = outcome.stop_reasons
        record.prompt["encoder_calls"] = work.encoder_calls
        session.redo_entity(
            rnd,
            entity.id,
            CompactMask.from_dense(outcome.mask),
            key_slice=entity.key_slice,
            score=entity.score,
            key_plane=entity.key_plane,
        )
        rnd.targets.append(record)
        rnd.models = round_models(segmenter, None)
        rnd.timings["refine_s"] = record.timings["refine_s"]
    except BaseException:
        session.abort_round(rnd)
        raise
    return session.finish_round(rnd)


def corrected_slices(session: Session, entity_id: str, orientation: str) -> set[int]:
    """Slices of ``orientation`` that earlier corrections of the entity drew on: a new correction never overwrites
    them (two corrections cannot undo each other)."""
    slices: set[int] = set()
    for rnd in session.rounds:
        for target in rnd.targets:
            prompt = target.prompt or {}
            if target.entity_id == entity_id and prompt.get("kind") in REFINE_KINDS:
                if prompt.get("orientation", "axial") == orientation and isinstance(prompt.get("slice"), int):
                    slices.add(int(prompt["slice"]))
    return slices
