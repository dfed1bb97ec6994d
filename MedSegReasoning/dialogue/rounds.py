"""One round of the dialogue: question -> references -> plan (the reasoner's targets) -> segment, judge, correct ->
entities -> save.

Front ends do not call ``run_round`` directly: they call ``ask.ask_round``, which plans with the reasoner (or the
user's prompts) and re-asks it during correction; the stages of a round, with their files, are listed there.

The reasoner is a hook: ``run_round`` takes either a ready ``RoundPlan`` (tests, a user's own prompts) or a
``Planner`` callable that receives the question and ``Session.reasoning_context()`` and returns one
(``ask.ReasonerPlanning.plan``): targets with prompts already in the volume's voxel indices, a label, and the
``ref`` it gave (an entity id, or a phrase such as "that lesion").
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..pipeline import VoxelPrompt, check_prompt, segment_prompt
from ..propagation import DEFAULT_PROPAGATION, ProgressCallback, PropagationConfig, segment_slice
from ..reasoning.base import ReasoningContext
from ..segmentation.base import Segmenter, embedding_mark, work_since
from ..volume.core import Volume
from ..volume.windowing import Window
from ..wire.errors import InputError
from ..wire.masks import CompactMask
from .correction_loop import AskAgainFn, judge_and_correct
from .judgment import DEFAULT_JUDGMENT, RELATIONS, Candidate, Expectation, Judgment, JudgmentConfig, judge
from .reasoner_correction import ProposalFn, reasoner_proposals
from .records import Round, TargetRecord
from .references import Clarification, Resolution, infer_relation
from .session import Session


@dataclass(frozen=True)
class TargetSpec:
    """One target of a plan, in voxel indices. ``ref``: entity id or phrase; ``redo``: the entity it replaces."""

    label: str
    prompt: VoxelPrompt
    ref: str | None = None
    relation: str | None = None  # inside | contains | adjacent | disjoint; None: taken from the question
    redo: str | None = None
    propagate: bool = True

    def __post_init__(self) -> None:
        if self.relation is not None and self.relation not in RELATIONS:
            raise InputError(f"relation {self.relation!r} is not one of {', '.join(RELATIONS)}.")


@dataclass(frozen=True)
class RoundPlan:
    """What the reasoner answered: its reasoning text, and either targets or a question back (clarification)."""

    reasoning: str = ""
    targets: tuple[TargetSpec, ...] = ()
    clarification: str | None = None


_REDO = re.compile(r"\b(redo|re-do|re-segment|resegment|again|fix|correct|replace)\b", re.IGNORECASE)


def plan_from_answer(answer: Any, question: str = "") -> RoundPlan:
    """A reasoner ``Answer`` (``reasoning.answer.Answer``, or anything shaped like it) as a ``RoundPlan``.

    Targets keep their label and ``ref``. When the question asks to redo or fix something ("redo the second one")
    and the answer has a single target with a ``ref``, that target replaces the referenced entity (``redo``)
    instead of making a new one next to it.
    """
    targets = tuple(
        TargetSpec(label=t.label or "structure", prompt=t.to_voxel_prompt(), ref=t.ref) for t in answer.targets
    )
    if len(targets) == 1 and targets[0].ref and _REDO.search(question):
        targets = (TargetSpec(targets[0].label, targets[0].prompt, redo=targets[0].ref),)
    return RoundPlan(reasoning=answer.reasoning or "", targets=targets, clarification=answer.clarification)


Planner = Callable[[str, ReasoningContext], RoundPlan]
"""``(question, context) -> RoundPlan``: the reasoner hook. ``context`` is ``Session.reasoning_context()`` for the
round being asked (the references found in the question are in the round's ``references``)."""
ProgressFn = Callable[[str, float], None]
"""``(stage, fraction of the round done)``: what the server streams as ``progress`` events."""


@dataclass(frozen=True)
class RoundConfig:
    propagation: PropagationConfig = DEFAULT_PROPAGATION
    judgment: JudgmentConfig = DEFAULT_JUDGMENT
    max_corrections: int = 2
    # Targets segmented per answer (docs/reasoning.md): each costs a propagation and judgment, so an answer listing
    # hundreds would run for many minutes; the rest are recorded as refused, and the user asks for them again.
    max_targets: int = 20


DEFAULT_ROUND = RoundConfig()


def segment_candidate(
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    prompt: VoxelPrompt,
    propagate_3d: bool = True,
    strategy: str = "initial",
    config: PropagationConfig = DEFAULT_PROPAGATION,
    progress: ProgressCallback | None = None,
) -> Candidate:
    """One attempt: key-slice mask, then (optionally) propagation. An empty key-slice mask is a candidate too
    (judgment rejects it and correction can retry), not an error; a prompt outside the volume is (InputError).

    The key slice may be coronal or sagittal (``prompt.orientation``): ``segment_prompt`` segments and propagates
    on the re-sliced view and hands the masks back on the volume's grid, so judgment sees an ordinary 3D mask."""
    check_prompt(volume, prompt)  # bounds only: a box on a uniform region is left to the segmenter and judgment
    if prompt.is_axial and not propagate_3d:  # the common cheap case, without a full-volume array
        prediction = segment_slice(volume, segmenter, window, prompt.k, prompt.to_prompt2d())
        return Candidate(slice_to_compact(prompt.k, prediction.mask), prediction.score, prompt, False, strategy)
    seg = segment_prompt(volume, segmenter, window, prompt, propagate_3d=propagate_3d, config=config, progress=progress)
    if seg.empty:
        return Candidate(CompactMask.empty(), seg.score, prompt, propagate_3d, strategy)
    if seg.propagation is None:
        return Candidate(CompactMask.from_dense(seg.key_mask), seg.score, prompt, False, strategy)
    segmented, interpolated = seg.slice_counts
    return Candidate(
        CompactMask.from_dense(seg.propagation.mask),
        seg.score,
        prompt,
        True,
        strategy,
        dict(seg.propagation.stop_reasons),
        segmented,
        interpolated,
    )


def slice_to_compact(k: int, mask2d: np.ndarray) -> CompactMask:
    """A 2D mask on slice ``k`` as a compact 3D mask, without building the full volume."""
    flat = CompactMask.from_dense(mask2d[None])
    if flat.box is None:
        return flat
    _, j0, i0, _, j1, i1 = flat.box
    return CompactMask((k, j0, i0, k, j1, i1), flat.bits)


def run_round(
    session: Session,
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    question: str,
    plan: RoundPlan | Planner,
    *,
    config: RoundConfig = DEFAULT_ROUND,
    ask_again: Callable[[TargetSpec, list[str]], VoxelPrompt | None] | None = None,
    progress: ProgressFn | None = None,
    reasoner_identity: Mapping[str, Any] | None = None,
) -> Round:
    """Run one round and save it. Ambiguous references end the round with a clarification and no target.

    ``reasoner_identity`` (``ReasonerIdentity.to_dict()``) is recorded with the segmenter's identity in the round
    and the session, so an export can say (and check) which models made the masks.
    """
    session.check_volume(volume)
    t_round = time.perf_counter()
    rnd = session.begin_round(question)
    rnd.models = round_models(segmenter, reasoner_identity)
    try:
        references = session.find_references(question)
        rnd.references = [r.to_dict() for r in references]
        unclear = [r for r in references if isinstance(r, Clarification)]
        if unclear:
            rnd.clarification = unclear[0].to_dict()
            return _finish(session, rnd, t_round)
        if not isinstance(plan, RoundPlan):
            t0 = time.perf_counter()
            plan = plan(question, session.reasoning_context(rnd.index))
            rnd.timings["reason_s"] = time.perf_counter() - t0
        rnd.reasoning = plan.reasoning
        if plan.clarification:
            rnd.clarification = {"text": "", "question": plan.clarification, "candidates": []}
            return _finish(session, rnd, t_round)
        implicit = _single_reference(references)
        # a relation word in the question belongs to the target only when there is one target to give it to
        asked_relation = infer_relation(question) if len(plan.targets) == 1 else None
        for n, target in enumerate(plan.targets):
            if n >= config.max_targets:
                rnd.targets.append(_refused(target, len(plan.targets), config.max_targets))
                continue
            stage = f"target {n + 1} of {len(plan.targets)}: {target.label}"
            if progress:
                progress(stage, n / max(len(plan.targets), 1))
            on_slices = _slice_progress(progress, stage, n, len(plan.targets))
            record = _run_target(
                session, volume, segmenter, window, rnd, target, implicit, asked_relation, config, ask_again, on_slices
            )
            rnd.targets.append(record)
            if record.status == "clarification":
                break
        if progress:
            progress("done", 1.0)
        return _finish(session, rnd, t_round)
    except BaseException:
        session.abort_round(rnd)
        raise


def _refused(target: TargetSpec, named: int, cap: int) -> TargetRecord:
    """A target beyond the cap: kept in the round's record (status ``refused``), never segmented."""
    return TargetRecord(
        label=target.label,
        prompt=target.prompt.to_dict(),
        ref_text=target.ref,
        status="refused",
        error=f"the answer named {named} targets and at most {cap} are segmented per answer: ask for this one again",
    )


def _slice_progress(
    progress: ProgressFn | None, stage: str, n: int, count: int
) -> Callable[[str], ProgressCallback] | None:
    """Propagation's ``(done, total)`` as round progress, per attempt (``strategy``): the stage "<target>:
    propagating slice 12 of 40" (a correction's attempt is named: "<target>: retry-...: propagating ..."), the
    round's fraction moving through target ``n``'s share. Why: a 2-minute propagation must not read "[0%]"."""
    if progress is None:
        return None
    share = 1.0 / max(count, 1)

    def for_attempt(strategy: str) -> ProgressCallback:
        head = stage if strategy == "initial" else f"{stage}: {strategy}"

        def on_slice(done: int, total: int) -> None:
            progress(f"{head}: propagating slice {done} of {total}", share * (n + done / max(total, 1)))

        return on_slice

    return for_attempt


def round_models(segmenter: Segmenter, reasoner_identity: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The identities of the models a round uses, as plain JSON (role -> identity)."""
    models: dict[str, dict[str, Any]] = {}
    identity = getattr(segmenter, "identity", None)
    if identity is not None:
        is_record = dataclasses.is_dataclass(identity) and not isinstance(identity, type)
        models["segmenter"] = dataclasses.asdict(identity) if is_record else dict(identity)
    if reasoner_identity is not None:
        models["reasoner"] = dict(reasoner_identity)
    return models


def _finish(session: Session, rnd: Round, t0: float) -> Round:
    rnd.timings["total_s"] = time.perf_counter() - t0
    return session.finish_round(rnd)


def _single_reference(references: Sequence[object]) -> str | None:
    """The one entity a question referred to, if exactly one: targets without their own ``ref`` relate to it."""
    ids = {i for r in references if isinstance(r, Resolution) for i in r.entity_ids}
    return next(iter(ids)) if len(ids) == 1 else None


def _resolve(session: Session, text: str | None, record: TargetRecord, rnd: Round) -> tuple[str | None, bool]:
    """An entity id for ``text`` (id or phrase); False when the round must ask back instead."""
    if text is None:
        return None, True
    ref = session.resolve_reference(text)
    if isinstance(ref, Clarification):
        record.status = "clarification"
        record.error = ref.question
        rnd.clarification = ref.to_dict()
        return None, False
    if isinstance(ref, Resolution) and ref.entity_ids:
        return ref.entity_ids[0], True
    record.status = "clarification"
    record.error = f"'{text}' does not name an entity of this session."
    rnd.clarification = {"text": text, "question": record.error + " Which one do you mean?", "candidates": []}
    return None, False


def _run_target(
    session: Session,
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    rnd: Round,
    target: TargetSpec,
    implicit_ref: str | None,
    asked_relation: str | None,
    config: RoundConfig,
    ask_again: Callable[[TargetSpec, list[str]], VoxelPrompt | None] | None,
    on_slices: Callable[[str], ProgressCallback] | None = None,
) -> TargetRecord:
    record = TargetRecord(label=target.label, prompt=target.prompt.to_dict(), ref_text=target.ref)
    ref, ok = _resolve(session, target.ref, record, rnd)
    if not ok:
        return record
    redo, ok = _resolve(session, target.redo, record, rnd)
    if not ok:
        return record
    record.redo = redo
    if ref is None and redo is None and implicit_ref is not None:
        ref = implicit_ref
    record.ref = ref
    record.relation = target.relation or (asked_relation if ref else None)

    t0 = time.perf_counter()
    coded = session.entity(redo).terminology if redo else session.terminology.match(target.label)
    term = session.terminology.type_of(coded)
    expectation = Expectation(
        term=term,
        modifier=coded.modifier.value if coded.modifier else None,
        reference=session.entity(ref).mask if ref else None,
        reference_id=ref,
        relation=record.relation,
        whole_structure=target.propagate,
    )
    record.timings["terminology_s"] = time.perf_counter() - t0

    def segment(prompt: VoxelPrompt, prop: bool, strategy: str) -> Candidate:
        on_slice = on_slices(strategy) if on_slices else None
        return segment_candidate(volume, segmenter, window, prompt, prop, strategy, config.propagation, on_slice)

    def judge_fn(candidate: Candidate, attempt: int) -> Judgment:
        return judge(candidate, session.geometry, session.shape, expectation, config.judgment, attempt)

    t1 = time.perf_counter()
    mark = embedding_mark(segmenter)
    try:
        outcome = judge_and_correct(
            target.prompt,
            segment,
            judge_fn,
            session.shape,
            propagate=target.propagate,
            max_corrections=config.max_corrections,
            ask_again=_bind(ask_again, target),
            propose=_proposals(ask_again, target, volume, segmenter, window, config.propagation),
        )
    except InputError as exc:
        record.status = "failed"
        record.error = str(exc)
        return record
    record.timings["segment_and_judge_s"] = time.perf_counter() - t1
    record.judgments = outcome.judgments
    best = outcome.best
    # every attempt's embeddings count (a re-prompt costs encoder calls too); the slices are the kept mask's
    record.work = work_since(segmenter, mark, best.segmented_slices, best.interpolated_slices).to_dict()
    if best.mask.is_empty:
        record.status = "failed"
        record.error = f"no mask after {len(outcome.judgments)} attempt(s): the segmenter found nothing."
        return record
    t2 = time.perf_counter()
    score = float(best.score) if best.score == best.score else None
    # key_slice is axial for every reader; a coronal/sagittal prompt's plane is kept in key_plane instead
    key_slice = best.prompt.k if best.prompt.is_axial else None
    key_plane = (best.prompt.orientation, best.prompt.k)
    if redo:
        entity = session.redo_entity(
            rnd,
            redo,
            best.mask,
            key_slice=key_slice,
            uncertain=outcome.uncertainty(),
            score=score,
            key_plane=key_plane,
        )
    else:
        entity = session.add_entity(
            rnd,
            target.label,
            best.mask,
            key_slice=key_slice,
            terminology=coded,
            ref=ref,
            relation=record.relation,
            uncertain=outcome.uncertainty(),
            score=score,
            key_plane=key_plane,
        )
    record.timings["entity_s"] = time.perf_counter() - t2
    record.entity_id = entity.id
    record.status = "accepted" if outcome.accepted else "uncertain"
    return record


def _proposals(
    ask_again: Callable[[TargetSpec, list[str]], VoxelPrompt | None] | None,
    target: TargetSpec,
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    config: PropagationConfig,
) -> ProposalFn | None:
    """The reasoner's corrections during judgment, when the hook offers them: an ``ask_again`` with a
    ``propose_correction(target, views, reasons) -> Correction | None`` method (``reasoner_correction.py``); a plain
    ``ask_again`` function keeps its meaning."""
    offer = getattr(ask_again, "propose_correction", None)
    if offer is None:
        return None
    return reasoner_proposals(
        volume, segmenter, window, lambda views, reasons: offer(target, views, reasons), config=config
    )


def _bind(
    ask_again: Callable[[TargetSpec, list[str]], VoxelPrompt | None] | None, target: TargetSpec
) -> AskAgainFn | None:
    if ask_again is None:
        return None
    return lambda reasons: ask_again(target, reasons)
