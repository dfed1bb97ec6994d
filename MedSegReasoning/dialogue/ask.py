"""One round, as every front end runs it: ``ask_round`` (CLI ``ask``, the server's ``POST …/rounds``, ``eval``'s full
mode, the benchmarks). A front end supplies only its I/O (``RoundIO``: streamed text, progress, cancel, where a
warning goes) and writes its own outputs from the ``AskedRound`` it gets back.

The data path of a round, top to bottom, with the file of each stage:

1. **Question in, references resolved**: ``dialogue/references.py`` (``Session.find_references``, in
   ``rounds.run_round``); an ambiguous one ends the round with a question back.
2. **Context for the reasoner**: ``dialogue/session.py`` (``Session.reasoning_context``: entities with ids,
   boxes, colours and outlines).
3. **Reasoner**: ``reasoning/views/`` renders what it sees, ``reasoning/run.py`` (``run_reasoning``) asks it,
   ``reasoning/parser.py`` and ``reasoning/coords.py`` read its answer back into voxel prompts
   (``ReasonerPlanning.plan`` here; ``segmentation/encode_ahead.py`` encodes the shown slices meanwhile).
4. **Plan**: ``dialogue/rounds.py`` (``plan_from_answer``): targets, their refs and redos. Or the user's own
   prompts (``prompts=``), without a reasoner.
5. **Segment the key slice, propagate**: ``dialogue/rounds.py`` (``segment_candidate``) → ``pipeline.py``
   (``segment_prompt``, any orientation) → ``propagation.py`` (``segment_slice``, ``propagate``).
6. **Judge and correct**: ``dialogue/judgment.py`` and ``dialogue/correction_loop.py``: the segmenter's own
   re-prompts, then the reasoner asked again with the reasons (``ReasonerPlanning.ask_again`` here), then, for a
   mask still refused, the reasoner shown its outline on the worst slices to add or erase a part
   (``ReasonerPlanning.propose_correction`` here, ``dialogue/reasoner_correction.py``).
7. **Entities**: ``dialogue/session.py`` (``add_entity``, ``redo_entity``; terminology, findings).
8. **Save**: ``dialogue/store.py`` (``Session.finish_round``; a failed or cancelled round is undone instead).
9. **Out** (the front end's): CLI ``conversation.write_round_outputs`` → ``output.py``; server
   ``server/rounds.py`` ``target``/``done`` events; eval ``evaluation/modes.py`` scores.

The explicit-prompt short path (``ask --box`` without ``--session``, ``demo``: ``pipeline.segment_target``) takes the
user's box as given, without judgment, but segments and propagates with the same ``pipeline.segment_prompt``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..correction import Correction
from ..pipeline import VoxelPrompt
from ..reasoning.answer import Answer, ReasonerOutputError
from ..reasoning.base import ReasoningContext, TextCallback
from ..reasoning.run import run_reasoning
from ..reasoning.views import DEFAULT_STRATEGY, CurrentView, ReasoningStrategy
from ..reasoning.views.model import ViewSet
from ..segmentation.base import Segmenter
from ..segmentation.encode_ahead import encoding_ahead
from ..volume.core import Volume
from ..volume.windowing import Window
from ..wire.errors import InputError
from .reasoner_correction import OutlineView
from .records import Round
from .rounds import DEFAULT_ROUND, ProgressFn, RoundConfig, RoundPlan, TargetSpec, plan_from_answer, run_round
from .session import Session


@dataclass(frozen=True)
class RoundIO:
    """What a front end plugs into a round; every hook is optional.

    ``on_text``: the reasoner's text as it streams. ``on_answer``: each complete answer (the plan's, then each
    re-ask's). ``on_reasoning``: ``"started"`` before the reasoner is asked for the plan, ``"answered"`` after.
    ``progress``: ``run_round``'s per-target stages. ``cancel``: set it to stop the reasoner (``ReasoningCancelled``;
    the segmenter's own cancellation is the front end's, e.g. the server's queued segmenter). ``on_warning``: a
    sentence when a re-ask gave nothing usable (the round keeps its best attempt, marked uncertain).
    """

    on_text: TextCallback | None = None
    on_answer: Callable[[Answer], None] | None = None
    on_reasoning: Callable[[str], None] | None = None
    progress: ProgressFn | None = None
    cancel: threading.Event | None = None
    on_warning: Callable[[str], None] | None = None


NO_IO = RoundIO()


@dataclass
class AskedRound:
    """A finished round and every answer the reasoner gave in it (the plan's first, then the re-asks')."""

    round: Round
    answers: list[Answer] = field(default_factory=list)


def ask_round(
    session: Session,
    volume: Volume,
    segmenter: Segmenter,
    window: Window,
    question: str,
    *,
    reasoner: Any = None,
    prompts: Sequence[TargetSpec] = (),
    propagate: bool = True,
    strategy: ReasoningStrategy = DEFAULT_STRATEGY,
    current_view: CurrentView | None = None,
    encode_ahead: Any = None,
    encode_owner: Any = None,
    round_number: int | None = None,
    config: RoundConfig = DEFAULT_ROUND,
    io: RoundIO = NO_IO,
) -> AskedRound:
    """Plan (the user's ``prompts``, else ``reasoner``), segment, judge, correct (re-asking the reasoner), record
    the entities and save the session: the stages in this module's docstring.

    ``propagate=False`` keeps every target on its key slice. ``strategy`` and ``current_view`` say what the reasoner
    is shown (also when it is asked again). ``encode_ahead`` (a ``segmentation.encode_ahead.EncodeAhead``) encodes the
    slices the reasoner is shown while it thinks, under ``encode_owner``. ``round_number`` is the number the reasoner
    is told (default: the session's next round; eval gives the question's own number so a replay file stays in
    step). The reasoner's identity is recorded with the segmenter's in the round and the session.
    """
    planning = None
    if prompts:
        plan: Any = RoundPlan(targets=tuple(prompts))
        if not propagate:
            plan = _without_propagation(plan)
    elif reasoner is None:
        raise InputError("a round needs a reasoner or prompts (a box or points) to segment.")
    else:
        planning = ReasonerPlanning(
            volume,
            window,
            reasoner,
            session,
            question,
            strategy=strategy,
            current_view=current_view,
            propagate=propagate,
            round_number=round_number,
            encode_ahead=encode_ahead,
            encode_owner=encode_owner,
            io=io,
        )
        plan = planning.plan
    rnd = run_round(
        session,
        volume,
        segmenter,
        window,
        question,
        plan,
        config=config,
        ask_again=planning,  # called to re-ask; its ``propose_correction`` is the reasoner's correction
        progress=io.progress,
        reasoner_identity=reasoner.identity.to_dict() if planning is not None else None,
    )
    return AskedRound(rnd, planning.answers if planning is not None else [])


@dataclass
class ReasonerPlanning:
    """The reasoner's side of one round, in one place: its context (``Session.reasoning_context``), its views
    (``run_reasoning`` with the round's strategy, window and current view), its answer as the plan
    (``plan``, ``run_round``'s planner) and the re-ask during correction (``ask_again``). ``answers`` collects every
    answer, in order."""

    volume: Volume
    window: Window
    reasoner: Any
    session: Session
    question: str = ""  # the round's question, repeated in a re-ask
    strategy: ReasoningStrategy = DEFAULT_STRATEGY
    current_view: CurrentView | None = None
    propagate: bool = True
    round_number: int | None = None
    encode_ahead: Any = None
    encode_owner: Any = None
    io: RoundIO = NO_IO
    answers: list[Answer] = field(default_factory=list)

    def ask(self, question: str, context: ReasoningContext, *, encode: bool = False) -> Answer:
        """One question to the reasoner with the session's entities as context (ids and labels in the prompt,
        outlines tagged with their ids on the views). With ``encode`` the shown slices are encoded ahead while it
        thinks; what is still pending when it answers is dropped."""
        if self.round_number is not None:
            context = dataclasses.replace(context, round=self.round_number)
        ahead = self.encode_ahead if encode else None
        with encoding_ahead(ahead, self.volume, self.window, owner=self.encode_owner) as on_views:
            answer = run_reasoning(
                self.volume,
                self.reasoner,
                question,
                self.strategy,
                context,
                on_text=self.io.on_text,
                window=self.window,
                current_view=self.current_view,
                cancel=self.io.cancel,
                on_views=on_views,
            )
        self.answers.append(answer)
        if self.io.on_answer is not None:
            self.io.on_answer(answer)
        return answer

    def plan(self, question: str, context: ReasoningContext) -> RoundPlan:
        """``run_round``'s planner: called after the question's references are resolved, only when needed."""
        if self.io.on_reasoning is not None:
            self.io.on_reasoning("started")
        answer = self.ask(question, context, encode=True)
        if self.io.on_reasoning is not None:
            self.io.on_reasoning("answered")
        result = plan_from_answer(answer, question)
        return result if self.propagate else _without_propagation(result)

    def ask_again(self, target: TargetSpec, reasons: list[str]) -> VoxelPrompt | None:
        """``run_round``'s ``ask_again(target, reasons)``: re-ask the reasoner with the reasons; a new prompt or None.

        The reasoner sees the session as it stands (entities outlined on the views) and the same round number, so a
        replay file serves the re-ask from that round's next lines. An answer that cannot be used (a question back,
        no target, a malformed answer, or a replay file without another answer) gives None: the round keeps its best
        attempt and marks it uncertain instead of losing it. Cancelling still stops the round.
        """
        try:
            answer = self.ask(
                correction_question(self.question, target.label, reasons), self.session.reasoning_context()
            )
        except (ReasonerOutputError, InputError) as exc:
            if self.io.on_warning is not None:
                self.io.on_warning(f"asking the reasoner again for '{target.label}' gave nothing usable: {exc}")
            return None
        return matching_prompt(answer, target.label)

    def __call__(self, target: TargetSpec, reasons: list[str]) -> VoxelPrompt | None:
        """``run_round``'s ``ask_again`` hook is this object: the call re-asks, ``propose_correction`` corrects."""
        return self.ask_again(target, reasons)

    def propose_correction(self, target: TargetSpec, views: list[OutlineView], reasons: list[str]) -> Correction | None:
        """The reasoner shown the mask's outline on its worst slices (``reasoner_correction.reasoner_proposals``)
        answers with a box to add or a box to erase, or with no correction.

        Asked only for a mask that still fails judgment (``reasons`` not empty): an accepted mask costs no reasoner
        call. An answer that cannot be used gives None, as in ``ask_again``; cancelling still stops the round.
        """
        if not reasons or not views:
            return None
        shown = ViewSet(task="locate", views=tuple(v.view for v in views), volume_shape=self.volume.shape)
        context = self.session.reasoning_context()
        if self.round_number is not None:
            context = dataclasses.replace(context, round=self.round_number)
        question = proposal_question(target.label, [v.k for v in views], reasons)
        try:
            answer = self.reasoner.reason(shown, question, context, self.io.on_text, self.io.cancel)
        except (ReasonerOutputError, InputError) as exc:
            if self.io.on_warning is not None:
                self.io.on_warning(f"the reasoner's correction of '{target.label}' gave nothing usable: {exc}")
            return None
        self.answers.append(answer)
        if self.io.on_answer is not None:
            self.io.on_answer(answer)
        return proposed_correction(answer, [v.k for v in views])


NO_CORRECTION = "no correction"
ERASE_LABEL = "erase"


def proposal_question(label: str, slices: list[int], reasons: list[str]) -> str:
    """What the reasoner is asked about a refused mask: the reasons, what the views show, and the three ways to
    answer within the answer format it already knows (a target's label says add or erase)."""
    why = "; ".join(reasons)
    shown = ", ".join(str(k) for k in slices)
    return (
        f"The mask of '{label}' failed these checks: {why}. The views show its outline (yellow, tagged 'mask') on "
        f"slices {shown}. If part of the {label} lies outside the outline, answer one target on one of these "
        f"slices: a box around the missing part, labelled '{label}'. If the outline covers something that is not "
        f"the {label}, answer one target: a box around that wrong part, labelled '{ERASE_LABEL}'. If the outline "
        f"is right, answer only the clarification '{NO_CORRECTION}'."
    )


def proposed_correction(answer: Answer, slices: list[int]) -> Correction | None:
    """The answer to ``proposal_question`` as a correction: its first boxed target on a shown slice (labelled
    ``erase``: an erase; any other label is an add, the reasoner may name the structure its own way); None for a
    clarification (no correction) or nothing usable."""
    for t in answer.targets:
        if t.box is None or not t.has_prompt:
            continue
        prompt = t.to_voxel_prompt()
        if prompt.is_axial and prompt.k not in slices:
            continue
        return Correction(prompt, erase=t.label.strip().lower() == ERASE_LABEL)
    return None


def correction_question(question: str, label: str, reasons: list[str]) -> str:
    """The question asked again, with why the previous answer's mask was refused: the reasoner can only do better
    than the segmenter's own re-prompts (tighter box, negative points) if it is told what went wrong."""
    why = "; ".join(reasons) if reasons else "it did not pass the checks"
    return f"{question}\nYour previous box for '{label}' was rejected: {why}. Give a corrected box."


def matching_prompt(answer: Answer, label: str) -> VoxelPrompt | None:
    """The re-asked answer's prompt for ``label``: the target of that label, else the only one (None if unclear)."""
    usable = [t for t in answer.targets if t.has_prompt and (t.box is not None or t.points)]  # any orientation
    same = [t for t in usable if (t.label or "").strip().lower() == label.strip().lower()]
    chosen = same[0] if same else (usable[0] if len(usable) == 1 else None)
    return chosen.to_voxel_prompt() if chosen is not None else None


def reasoner_planner(
    volume: Volume,
    window: Window,
    reasoner: Any,
    session: Session,
    *,
    propagate: bool = True,
    on_text: TextCallback | None = None,
    answers: list[Answer] | None = None,
    current_view: CurrentView | None = None,
    encode_ahead: Any = None,
) -> Callable[[str, ReasoningContext], RoundPlan]:
    """``ReasonerPlanning.plan`` on its own, for a caller of ``run_round`` (tests); ``answers`` collects its answers."""
    planning = ReasonerPlanning(
        volume,
        window,
        reasoner,
        session,
        current_view=current_view,
        propagate=propagate,
        encode_ahead=encode_ahead,
        io=RoundIO(on_text=on_text),
    )
    if answers is not None:
        planning.answers = answers
    return planning.plan


def ask_reasoner_again(
    volume: Volume,
    window: Window,
    reasoner: Any,
    session: Session,
    question: str,
    *,
    on_text: TextCallback | None = None,
    answers: list[Answer] | None = None,
    current_view: CurrentView | None = None,
) -> Callable[[TargetSpec, list[str]], VoxelPrompt | None]:
    """``ReasonerPlanning.ask_again`` on its own, for a caller of ``run_round`` (tests)."""
    planning = ReasonerPlanning(
        volume, window, reasoner, session, question, current_view=current_view, io=RoundIO(on_text=on_text)
    )
    if answers is not None:
        planning.answers = answers
    return planning.ask_again


def _without_propagation(plan: RoundPlan) -> RoundPlan:
    return dataclasses.replace(plan, targets=tuple(dataclasses.replace(t, propagate=False) for t in plan.targets))
