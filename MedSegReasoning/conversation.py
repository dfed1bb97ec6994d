"""``ask`` as one dialogue round: the reasoner (or an explicit prompt) plans, the dialogue segments and judges.

This is the path for questions answered by a reasoner and for ``--session DIR`` (several ``ask`` calls that refer
to each other's entities). It goes through ``dialogue.ask.ask_round``, the one round of every front end, so every
target gets judgment, correction (the reasoner asked again), terminology and findings, and a session folder is
saved after the round. The explicit-prompt, session-less ``ask`` keeps the shorter path in ``cli.run_ask`` (one
target, no judgment: the user's box is taken as given), segmenting with the same ``pipeline.segment_prompt``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from .console import RoundProgress, status
from .reasoning.spec import ReasonerOptions  # the CLI builds it from --reasoner and friends
from .wire.errors import InputError

__all__ = ["ReasonerOptions", "run_round_ask", "write_round_outputs"]


def run_round_ask(
    volume,
    prompt,
    options,
    reasoner_options: ReasonerOptions,
    session_dir: Path | None,
    timings,
    *,
    segmenter=None,
    reasoner=None,
) -> dict:
    """One round on ``volume`` (``dialogue.ask.ask_round``): plan (reasoner or ``prompt``), segment, judge, correct;
    write outputs; return result.json. This function only supplies the CLI's I/O: the reasoner's text streamed to
    stdout, stages and warnings on stderr, the output files.

    ``segmenter`` and ``reasoner``: models already loaded (``batch`` loads them once per worker and runs this for
    every study); None loads them here, as ``ask`` does."""
    from .dialogue import Session, TargetSpec, open_session
    from .dialogue.ask import ask_round
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
    if prompt is None and reasoner is None:  # the segmenter opens on a thread while the reasoner loads
        if segmenter is None:  # (the checks above came first)
            preload(options.segmenter, embedding_store=default_store_root())
        reasoner = _create_reasoner(reasoner_options, timings)
    elif prompt is not None:
        reasoner = None  # the user's prompt is the plan
    if segmenter is None:
        status(f"loading the segmenter ({options.segmenter})...")
        t0 = time.perf_counter()
        segmenter = create_segmenter(options.segmenter, embedding_store=default_store_root())
        timings["model_load_s"] = timings.get("model_load_s", 0.0) + time.perf_counter() - t0

    ahead = _encode_ahead(segmenter, reasoner)
    from .dialogue.store import rolled_back_on_failure

    with rolled_back_on_failure(session.folder):  # the round and its outputs succeed or fail together
        try:
            asked = ask_round(
                session,
                volume,
                segmenter,
                window,
                options.question or "",
                reasoner=reasoner,
                prompts=(TargetSpec(options.label, prompt),) if prompt is not None else (),
                propagate=options.propagate,
                current_view=reasoner_options.current_view,
                encode_ahead=ahead,
                io=_cli_io(reasoner_options.stream),
            )
        finally:
            if ahead is not None:
                ahead.close()
        rnd = asked.round
        timings.update(rnd.timings)
        return write_round_outputs(volume, session, rnd, options, window, segmenter, reasoner, asked.answers, timings)


def _cli_io(stream: bool):
    """The CLI's side of a round: the reasoner's text to stdout as it comes (a line break after each answer),
    target stages and warnings to stderr."""
    from .dialogue.ask import RoundIO

    def end_answer(_answer) -> None:
        sys.stdout.write("\n")

    return RoundIO(
        on_text=_stream_to_stdout if stream else None,
        on_answer=end_answer if stream else None,
        progress=RoundProgress(),
        on_warning=lambda message: print(message, file=sys.stderr),
    )


def _create_reasoner(reasoner_options: ReasonerOptions, timings: dict[str, float]):
    status(f"loading the reasoner ({reasoner_options.spec})...")
    t0 = time.perf_counter()
    reasoner = reasoner_options.create()
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


def _stream_to_stdout(chunk: str) -> None:
    sys.stdout.write(chunk)
    sys.stdout.flush()


def write_round_outputs(volume, session, rnd, options, window, segmenter, reasoner, answers, timings) -> dict:
    from .export.dicom_seg import SegmentSpec
    from .output import print_summary, write_ask_outputs
    from .result import entity_target_record

    entities = [session.entities[t.entity_id] for t in rnd.targets if t.entity_id in session.entities]
    refused = [t.label for t in rnd.targets if t.status == "refused"]
    if refused:
        print(
            f"medseg-reasoning: warning: the answer named {len(rnd.targets)} targets; at most "
            f"{len(rnd.targets) - len(refused)} are segmented per answer, so {len(refused)} were refused "
            f"({', '.join(refused[:5])}{', …' if len(refused) > 5 else ''}): ask for them in another question.",
            file=sys.stderr,
        )
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
