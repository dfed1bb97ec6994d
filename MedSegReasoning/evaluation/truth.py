"""What the truth gives the runs: the oracle's box, the simulated user's first box (``interactive.py``), and the
dialogue as it stands when every earlier round was segmented as its truth (``truth_fed_rounds``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .layouts import Case, Turn

if TYPE_CHECKING:
    from ..dialogue import Session


def truth_prompt(truth: np.ndarray):
    """The oracle prompt: the truth's bounding box (inclusive voxel indices) on its largest axial slice."""
    from ..pipeline import VoxelPrompt

    areas = truth.reshape(truth.shape[0], -1).sum(axis=1)
    k = int(np.argmax(areas))
    jj, ii = np.nonzero(truth[k])
    return VoxelPrompt(k=k, box=(int(ii.min()), int(jj.min()), int(ii.max()), int(jj.max())))


def add_truth_entity(session: Session, turn: Turn, entity_id: str | None) -> str:
    """Feed the truth: the round's entity takes the true mask (as a user's edit would), or, when the round made
    none, a new entity carries it, so later questions can refer to it either way. Returns the entity's id."""
    from ..wire.masks import CompactMask

    if entity_id is not None:
        session.replace_mask(entity_id, turn.truth)
        return entity_id
    rnd = session.begin_round(turn.question)
    k = int(np.argmax(turn.truth.reshape(turn.truth.shape[0], -1).sum(axis=1)))
    label = turn.label or f"round {turn.round} target"
    entity = session.add_entity(rnd, label, CompactMask.from_dense(turn.truth), key_slice=k)
    session.finish_round(rnd)
    return entity.id


class FedRound(NamedTuple):
    """One round of a case with its session as the reasoner finds it: ``number`` is the 1-based position (the round
    number the reasoner is told), ``entities`` maps each earlier round (its ``Turn.round``, else its position) whose
    truth was fed to the id of the entity that carries it."""

    number: int
    turn: Turn
    session: Session
    entities: dict[int, str]


def truth_fed_rounds(case: Case) -> Iterator[FedRound]:
    """The rounds of ``case`` on one session, each earlier round of a dialogue fed as its truth (teacher forcing).

    The ``reasoner`` eval mode asks each round on this session (``session.reasoning_context(number)``), and
    ``train`` builds each round's prompt from it, so the two cannot drift apart. A round's truth is fed after the
    caller is done with the round; a round with an empty truth makes no entity.
    """
    from ..dialogue import Session

    session = Session.for_volume(case.volume)
    entities: dict[int, str] = {}
    for number, turn in enumerate(case.turns, 1):
        yield FedRound(number, turn, session, dict(entities))
        if case.dialogue and turn.truth.any():
            entities[turn.round if turn.round is not None else number] = add_truth_entity(session, turn, None)
