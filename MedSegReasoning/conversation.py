"""``ask`` as one dialogue round: the reasoner (or an explicit prompt) plans, the dialogue segments and judges.

This is the path for questions answered by a reasoner and for ``--session DIR`` (several ``ask`` calls that refer
to each other's entities). It goes through ``dialogue.run_round``, so every target gets judgment, correction,
terminology and findings, and a session folder is saved after the round. The explicit-prompt, session-less
``ask`` keeps the shorter path in ``cli.run_ask`` (one target, no judgment: the user's box is taken as given).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .console import RoundProgress, status
from .wire.errors import InputError


@dataclass(frozen=True)
class ReasonerOptions:
    """How ``--reasoner`` is created and asked (see ``reasoning.spec.create_reasoner``)."""

    spec: str
    allow_remote: bool = False
    allow_download: bool = False
    device: str | None = None
    max_new_tokens: int | None = None
    stream: bool = True
    current_view: Any = None  # reasoning.views.CurrentView: what the user looks at (``--view``)


def run_round_ask(
    volume, prompt, options, reasoner_options: ReasonerOptions, session_dir: Path | None, timings
) -> dict:
    """One round on ``volume``: plan (reasoner or ``prompt``), segment, judge; write outputs; return result.json."""
    from .dialogue import RoundPlan, Session, TargetSpec, open_session, run_round
    from .pipeline import check_prompt
    from .segmentation.factory import create_segmenter, default_store_root, preload
    from .volume import default_window, window_by_name

    window = window_by_name(options.window, volume) if options.window else default_window(volume)
    if prompt is not None:
        check_prompt(volume, prompt, window)
    source_path = volume.source.path or None
    session = (
        open_session(session_dir, volume, path=source_path)
        if session_dir is not None
        else Session.for_volume(volume, path=source_path)
    )
    answers: list[Any] = []
    reasoner = None
    if prompt is None:  # the segmenter opens on a thread while the reasoner loads (the checks above came first)
        preload(options.segmenter, embedding_store=default_store_root())
        reasoner = _create_reasoner(reasoner_options, timings)
    status(f"loading the segmenter ({options.segmenter})...")
    t0 = time.perf_counter()
    segmenter = create_segmenter(options.segmenter, embedding_store=default_store_root())
    timings["model_load_s"] = timings.get("model_load_s", 0.0) + time.perf_counter() - t0

    ahead = _encode_ahead(segmenter, reasoner)
    if prompt is not None:
        plan: Any = RoundPlan(targets=(TargetSpec(options.label, prompt, propagate=options.propagate),))
    else:
        plan = _reasoner_planner(volume, window, reasoner, session, options, reasoner_options, answers, ahead)
    question = options.question or ""
    ask_again = None
    if reasoner is not None:
        on_text = _stream_to_stdout if reasoner_options.stream else None
        ask_again = ask_reasoner_again(
            volume,
            window,
            reasoner,
            session,
            question,
            on_text=on_text,
            answers=answers,
            current_view=reasoner_options.current_view,
        )
    try:
        rnd = run_round(
            session, volume, segmenter, window, question, plan, ask_again=ask_again, progress=RoundProgress()
        )
    finally:
        if ahead is not None:
            ahead.close()
    timings.update(rnd.timings)
    return write_round_outputs(volume, session, rnd, options, window, segmenter, reasoner, answers, timings)


def _create_reasoner(reasoner_options: ReasonerOptions, timings: dict[str, float]):
    from .reasoning import create_reasoner

    status(f"loading the reasoner ({reasoner_options.spec})...")
    t0 = time.perf_counter()
    reasoner = create_reasoner(
        reasoner_options.spec,
        allow_remote=reasoner_options.allow_remote,
        allow_download=reasoner_options.allow_download,
        device=reasoner_options.device,
        max_new_tokens=reasoner_options.max_new_tokens,
    )
    timings["reasoner_load_s"] = time.perf_counter() - t0
    return reasoner


def _encode_ahead(segmenter, reasoner):
    """A worker that encodes the slices the reasoner is shown while it thinks (``segmentation.encode_ahead``), or None:
    without a reasoner, or where the reasoner computes on this CPU (an in-process model without a GPU)."""
    from .segmentation.encode_ahead import EncodeAhead, worth_encoding_ahead

    if reasoner is None:
        return None
    identity = reasoner.identity
    if not worth_encoding_ahead(identity.backend, dict(identity.decoding).get("device")):
        return None
    ahead = EncodeAhead(segmenter)
    return ahead if ahead.supported else None


def _reasoner_planner(
    volume, window, reasoner, session, options, reasoner_options: ReasonerOptions, answers: list, ahead=None
):
    """The dialogue's planner hook for ``ask``: stream the reasoner's text to stdout, honour ``--no-propagate``."""
    return reasoner_planner(
        volume,
        window,
        reasoner,
        session,
        propagate=options.propagate,
        on_text=_stream_to_stdout if reasoner_options.stream else None,
        answers=answers,
        current_view=reasoner_options.current_view,
        encode_ahead=ahead,
    )


def reasoner_planner(
    volume,
    window,
    reasoner,
    session,
    *,
    propagate: bool = True,
    on_text=None,
    answers=None,
    current_view=None,
    encode_ahead=None,
):
    """``run_round``'s planner: ask the reasoner with the session's entities as context (ids and labels in the
    prompt, outlines tagged with their ids on the views), and turn its answer into the round's plan. With
    ``encode_ahead`` (a ``segmentation.encode_ahead.EncodeAhead``) the slices the reasoner is shown are encoded while
    it thinks; what is still pending when it answers is dropped."""
    from .dialogue import plan_from_answer
    from .reasoning import ReasoningContext, run_reasoning
    from .segmentation.encode_ahead import encoding_ahead

    def plan(question: str, context: dict):
        with encoding_ahead(encode_ahead, volume, window) as on_views:
            answer = run_reasoning(
                volume,
                reasoner,
                question,
                context=ReasoningContext.from_dialogue(
                    context, len(session.rounds) + 1, slice_mask=session.entity_slice_mask
                ),
                on_text=on_text,
                window=window,
                current_view=current_view,
                on_views=on_views,
            )
        if on_text:
            sys.stdout.write("\n")
        if answers is not None:
            answers.append(answer)
        result = plan_from_answer(answer, question)
        if not propagate:
            result = dataclasses.replace(
                result, targets=tuple(dataclasses.replace(t, propagate=False) for t in result.targets)
            )
        return result

    return plan


def correction_question(question: str, label: str, reasons: list[str]) -> str:
    """The question asked again, with why the previous answer's mask was refused: the reasoner can only do better
    than the segmenter's own re-prompts (tighter box, negative points) if it is told what went wrong."""
    why = "; ".join(reasons) if reasons else "it did not pass the checks"
    return f"{question}\nYour previous box for '{label}' was rejected: {why}. Give a corrected box."


def ask_reasoner_again(
    volume, window, reasoner, session, question: str, *, on_text=None, answers: list | None = None, current_view=None
):
    """``run_round``'s ``ask_again(target, reasons)``: re-ask the reasoner with the reasons; a new prompt or None.

    The reasoner sees the session as it stands (entities outlined on the views) and the same round number, so a
    replay file serves the re-ask from that round's next lines. An answer that cannot be used (a question back, no
    target, a malformed answer, or a replay file without another answer) gives None: the round keeps its best
    attempt and marks it uncertain instead of losing it. Cancelling still stops the round.
    """
    from .reasoning import ReasonerOutputError, ReasoningContext, run_reasoning

    def ask_again(target, reasons: list[str]):
        context = ReasoningContext.from_dialogue(
            session.context_for_reasoner(), len(session.rounds) + 1, slice_mask=session.entity_slice_mask
        )
        try:
            answer = run_reasoning(
                volume,
                reasoner,
                correction_question(question, target.label, reasons),
                context=context,
                on_text=on_text,
                window=window,
                current_view=current_view,
            )
        except (ReasonerOutputError, InputError) as exc:
            print(f"asking the reasoner again for '{target.label}' gave nothing usable: {exc}", file=sys.stderr)
            return None
        if on_text:
            sys.stdout.write("\n")
        if answers is not None:
            answers.append(answer)
        return _matching_prompt(answer, target.label)

    return ask_again


def _matching_prompt(answer, label: str):
    """The re-asked answer's prompt for ``label``: the target of that label, else the only one (None if unclear)."""
    usable = [t for t in answer.targets if t.has_prompt and (t.box is not None or t.points)]  # any orientation
    same = [t for t in usable if (t.label or "").strip().lower() == label.strip().lower()]
    chosen = same[0] if same else (usable[0] if len(usable) == 1 else None)
    return chosen.to_voxel_prompt() if chosen is not None else None


def _stream_to_stdout(chunk: str) -> None:
    sys.stdout.write(chunk)
    sys.stdout.flush()


def write_round_outputs(volume, session, rnd, options, window, segmenter, reasoner, answers, timings) -> dict:
    from .cli import print_summary
    from .export.dicom_seg import SegmentSpec
    from .output import write_ask_outputs
    from .result import entity_target_record

    entities = [session.entities[t.entity_id] for t in rnd.targets if t.entity_id in session.entities]
    if rnd.clarification and not entities:
        question = rnd.clarification.get("question") or rnd.clarification.get("text") or "please clarify"
        print(f"clarification needed: {question}")
    records, segments = [], []
    for value, entity in enumerate(entities, start=1):
        mask = entity.mask.to_dense(volume.shape)
        term = entity.terminology
        segments.append(
            SegmentSpec(
                number=value,
                label=entity.label,
                mask=mask,
                category=_coded(term.category),
                type=_coded(term.type),
                semiautomatic=reasoner is None or entity.edited,
                color=tuple(entity.color),
            )
        )
        records.append(entity_target_record(volume, value, entity, mask, rnd))
    extra: dict[str, Any] = {
        "round": {
            "index": rnd.index,
            "reasoning": rnd.reasoning,
            "clarification": rnd.clarification,
            "targets": [t.to_dict() for t in rnd.targets],
        },
        "session": str(session.folder) if session.folder else None,
    }
    if reasoner is not None:
        extra["reasoner"] = reasoner.identity.to_dict()
        extra["answers"] = [a.to_dict() for a in answers]
    if not entities and not rnd.clarification:
        failed = "; ".join(t.error or t.status for t in rnd.targets) or "the reasoner gave no target"
        raise InputError(f"nothing was segmented ({failed}): rephrase the question or give a --box.")
    result = write_ask_outputs(volume, segments, records, options, window, segmenter.identity, timings, extra=extra)
    print_summary(result, options.out)
    return result


def _coded(code):
    """A terminology code as the SEG writer's term; a structure without a standard code is written as Tissue
    (its free-text label stays the segment label)."""
    from .export.dicom_seg import TISSUE
    from .terminology.codes import Code as CodedTerm

    return CodedTerm(code.value, code.scheme, code.meaning) if code is not None else TISSUE
