"""The four ``eval`` modes, one sample (or one dialogue run for one feed) at a time: each returns its records.

- ``full``: ``dialogue.ask.ask_round``, the round every front end runs (reasoner, segmentation, judgment and
  correction with the reasoner asked again, entities), on one session per dialogue run.
- ``oracle``: the truth's box through the dialogue's own segment-and-propagate step (``segment_candidate``).
- ``reasoner``: the reasoner's answer alone (``dialogue.ask.ReasonerPlanning.ask``: the same views and context),
  scored as a box and a point pair.
- ``interactive``: the simulated user (``interactive.run_interactive``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..wire.errors import InputError, ServiceError
from .layouts import Case, Turn, Unit
from .options import EvalOptions, Models
from .records import Meter, base_record, fail_record, message_of, require_truth, score_mask
from .truth import add_truth_entity, truth_fed_rounds, truth_prompt


def case_window(case: Case, options: EvalOptions):
    from ..volume import default_window, window_by_name

    return window_by_name(options.window, case.volume) if options.window else default_window(case.volume)


def run_oracle(unit: Unit, case: Case, feed, options: EvalOptions, models: Models) -> list[dict]:
    """The segmenter from the truth's box, through the dialogue's own segment-and-propagate step. Only the
    bounds are checked: the CLI's "uniform region" guard protects users from a misplaced box, but a box taken
    from the truth is on the structure by construction (a flat lesion fills its box uniformly)."""
    from ..dialogue import segment_candidate

    window = case_window(case, options)
    segmenter = models.get_segmenter()
    records = []
    for turn in case.turns:
        record = base_record(unit, case, turn, feed, options)
        meter = Meter()
        try:
            require_truth(turn)
            prompt = truth_prompt(turn.truth)
            propagate_3d = options.propagate and case.dimension == 3
            config = options.propagation_config
            candidate = segment_candidate(case.volume, segmenter, window, prompt, propagate_3d, "oracle", config)
            record["latency_s"], record["peak_rss_mb"] = meter.stop()
            score_mask(record, candidate.mask.to_dense(case.volume.shape), turn.truth, case.volume, options)
        except ServiceError:
            raise
        except Exception as exc:  # this question fails; the others go on
            record["latency_s"], record["peak_rss_mb"] = meter.stop()
            fail_record(record, turn.truth, message_of(exc), options)
        records.append(record)
    return records


def run_interactive_mode(unit: Unit, case: Case, feed, options: EvalOptions, models: Models) -> list[dict]:
    """The simulated user on each question's truth, one structure at a time: a record scores the final mask like the
    oracle's (dice, iou, counts, nsd) and carries the interaction curve (``interactive_fields``). Dialogue rounds
    run as independent structures: the protocol corrects one mask, it does not refer to earlier ones."""
    from .interactive import run_interactive

    window = case_window(case, options)
    segmenter = models.get_segmenter()
    records = []
    for turn in case.turns:
        record = base_record(unit, case, turn, feed, options)
        meter = Meter()
        try:
            require_truth(turn)
            result = run_interactive(
                case.volume,
                segmenter,
                window,
                turn.truth,
                corrections=options.corrections,
                config=options.propagation_config,
                tolerance_mm=options.nsd_tolerance_mm,
            )
            record["latency_s"], record["peak_rss_mb"] = meter.stop()
            score_mask(record, result.mask, turn.truth, case.volume, options)
            record.update(interactive_fields(result, options.corrections))
        except ServiceError:
            raise
        except Exception as exc:  # this structure fails; the others go on
            if record["latency_s"] is None:
                record["latency_s"], record["peak_rss_mb"] = meter.stop()
            fail_record(record, turn.truth, message_of(exc), options)
        records.append(record)
    return records


def interactive_fields(result, corrections: int) -> dict:
    """The record's interactive keys (``report.INTERACTIVE_FIELDS``) from an ``interactive.InteractiveResult``; the
    wall time is the record's ``latency_s``, so the protocol's own sum of seconds is left out."""
    fields = result.to_dict(corrections)
    fields.pop("seconds", None)
    fields["corrections_made"] = len(result.interactions) - 1
    return fields


def answer_scores(record: dict, answer, turn: Turn) -> None:
    """Box IoU of the first target's box against the truth's box on the same slice; pDice of its two points."""
    from .metrics import box_iou, point_pair_dice

    targets = [t for t in answer.targets if t.orientation == "axial"] if answer is not None else []
    if not targets:
        record["box_iou"] = 0.0
        record["pdice"] = 0.0 if turn.truth_points is not None else None
        return
    target = targets[0]
    truth_slice = turn.truth[target.slice] if 0 <= target.slice < turn.truth.shape[0] else None
    if target.box is None or truth_slice is None or not truth_slice.any():
        record["box_iou"] = 0.0
    else:
        jj, ii = np.nonzero(truth_slice)
        truth_box = (int(ii.min()), int(jj.min()), int(ii.max()), int(jj.max()))
        record["box_iou"] = float(box_iou(target.box, truth_box, inclusive=True))
    if turn.truth_points is not None:
        fg = [p for p, lab in zip(target.points, target.point_labels, strict=False) if lab == 1]
        record["pdice"] = float(point_pair_dice(fg[:2], turn.truth_points)) if len(fg) >= 2 else 0.0


def run_reasoner(unit: Unit, case: Case, feed, options: EvalOptions, models: Models) -> list[dict]:
    window = case_window(case, options)
    records = []
    for n, turn, session, _ in truth_fed_rounds(case):  # each earlier round of a dialogue fed as its truth
        record = base_record(unit, case, turn, feed, options)
        meter = Meter()
        try:
            require_truth(turn)
            planning = reasoner_planning(case, models.get_reasoner(), window, session, n, options)
            answer = planning.ask(turn.question, session.reasoning_context(n))
            record["latency_s"], record["peak_rss_mb"] = meter.stop()
            if answer.clarification:
                raise InputError(f"the reasoner asked back instead of answering: {answer.clarification}")
            answer_scores(record, answer, turn)
        except ServiceError:
            raise
        except Exception as exc:  # this question fails; the others go on
            if record["latency_s"] is None:
                record["latency_s"], record["peak_rss_mb"] = meter.stop()
            fail_record(record, turn.truth, message_of(exc), options)
        records.append(record)
    return records


def run_full(unit: Unit, case: Case, feed, options: EvalOptions, models: Models) -> list[dict]:
    from ..dialogue import Session
    from ..dialogue.ask import ask_round

    window = case_window(case, options)
    session = Session.for_volume(case.volume)
    records = []
    for n, turn in enumerate(case.turns, 1):
        record = base_record(unit, case, turn, feed, options)
        meter = Meter()
        created: list[str] = []
        try:
            require_truth(turn)
            segmenter, reasoner = models.get_segmenter(), models.get_reasoner()
            asked = ask_round(
                session,
                case.volume,
                segmenter,
                window,
                turn.question,
                reasoner=reasoner,
                propagate=options.propagate and case.dimension == 3,
                round_number=n,
                **reasoner_view(case),
            )
            rnd = asked.round
            record["latency_s"], record["peak_rss_mb"] = meter.stop()
            created = [t.entity_id for t in rnd.targets if t.entity_id]
            if asked.answers:  # the plan's answer, scored as in reasoner mode (a re-ask only corrects a mask)
                answer_scores(record, asked.answers[0], turn)
            if not created:
                raise InputError(round_failure(rnd))
            pred = np.zeros(case.volume.shape, dtype=bool)
            for entity_id in created:
                pred |= session.dense_mask(entity_id)
            score_mask(record, pred, turn.truth, case.volume, options)
        except ServiceError:
            raise
        except Exception as exc:  # this question fails; the others go on
            if record["latency_s"] is None:
                record["latency_s"], record["peak_rss_mb"] = meter.stop()
            fail_record(record, turn.truth, message_of(exc), options)
        records.append(record)
        if feed == "true" and case.dialogue and turn.truth.any():
            add_truth_entity(session, turn, created[0] if created else None)
    return records


def round_failure(rnd) -> str:
    if rnd.clarification:
        question = rnd.clarification.get("question") or rnd.clarification.get("text") or "a clarification"
        return f"the round ended with a question back instead of a mask: {question}"
    reasons = "; ".join(t.error or t.status for t in rnd.targets)
    return f"nothing was segmented ({reasons or 'the reasoner gave no target'})."


def reasoner_view(case: Case) -> dict[str, Any]:
    """What the reasoner is shown of a case: a 2D image as it is (one call, no montage), as the 2D datasets' models
    were trained to see it; a volume as every front end shows it."""
    from ..reasoning import CurrentView, ReasoningStrategy

    if case.dimension == 2:
        return {"strategy": ReasoningStrategy(use_current_view="always"), "current_view": CurrentView("axial", 0)}
    return {}


def reasoner_planning(case: Case, reasoner, window, session, round_number: int, options: EvalOptions):
    """The reasoner's side of a round (``dialogue.ask.ReasonerPlanning``), for the reasoner-only mode."""
    from ..dialogue.ask import ReasonerPlanning

    view = reasoner_view(case)
    return ReasonerPlanning(case.volume, window, reasoner, session, round_number=round_number, **view)


MODE_RUNNERS = {
    "oracle": run_oracle,
    "full": run_full,
    "reasoner": run_reasoner,
    "interactive": run_interactive_mode,
}
"""Each mode's function: ``(unit, case, feed, options, models) -> records``."""
