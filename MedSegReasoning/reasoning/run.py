"""``run_reasoning``: one question about a volume -> targets in voxel indices, ready for the segmenter.

The glue of the two-look strategy described in ``views`` (the package docstring): montage -> key slice(s) -> each key slice at full
resolution -> targets; or straight to the caller's current view for "this slice" questions. Every reasoner call
streams its text through ``on_text`` (steps separated by a blank line) and is kept in ``Answer.steps``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace

from ..volume.core import Volume
from ..volume.windowing import Window, default_window
from .answer import Answer, GenerationStats, ReasonerOutputError, StepRecord, Target
from .base import EMPTY_CONTEXT, Reasoner, ReasoningContext, TextCallback
from .views import (
    DEFAULT_STRATEGY,
    CurrentView,
    ReasoningStrategy,
    ViewSet,
    draw_entities,
    key_slice_views,
    refine_views,
    wants_current_view,
)

log = logging.getLogger(__name__)
ViewsCallback = Callable[[ViewSet], None]


def run_reasoning(
    volume: Volume,
    reasoner: Reasoner,
    question: str,
    strategy: ReasoningStrategy = DEFAULT_STRATEGY,
    context: ReasoningContext = EMPTY_CONTEXT,
    on_text: TextCallback | None = None,
    *,
    window: Window | None = None,
    current_view: CurrentView | None = None,
    cancel: threading.Event | None = None,
    on_views: ViewsCallback | None = None,
) -> Answer:
    """Ask ``reasoner`` about ``volume``; the answer's targets convert with ``Target.to_voxel_prompt()``.

    ``window`` should be the one the segmenter will use (default: ``default_window(volume)``), so the reasoner
    and the segmenter see the same grey levels. Returns a clarification answer (no targets) when the model asks
    one; raises ``ReasonerOutputError`` when an answer cannot be used, ``ReasoningCancelled`` on ``cancel``.
    ``on_views`` is told each view set before the reasoner sees it (``segmentation.encode_ahead`` encodes its slices
    while the reasoner thinks); an error in it is logged, never raised.
    """
    window = window or default_window(volume)
    run = _Run(reasoner, question, context, on_text, cancel, on_views)
    if current_view is not None and wants_current_view(strategy, question, current_view):
        views = refine_views(volume, window, strategy, current_view.orientation, current_view.slice)
        answer = run.ask("locate", views)
        if not answer.clarification:
            _require_prompts(answer, "the answer on the current view", "a box or a point is needed to segment")
        return run.finish(answer.targets, answer.clarification)

    pick = run.ask("pick_slice", key_slice_views(volume, window, strategy, current_view))
    if pick.clarification:
        return run.finish((), pick.clarification)
    if not strategy.refine:
        _require_prompts(pick, "the key-slice answer", "refining is off (ReasoningStrategy.refine=False)")
        return run.finish(pick.targets, None)

    groups = _group_by_slice(pick.targets)
    targets: list[Target] = []
    for n, (k, picked) in enumerate(groups.items()):
        if n >= strategy.max_key_slices:
            run.note_skipped(k, picked)
            targets.extend(t for t in picked if t.has_prompt)
            continue
        labels = tuple(dict.fromkeys(t.label for t in picked if t.label))
        refined = run.ask("locate", refine_views(volume, window, strategy, "axial", k, labels))
        if refined.clarification:
            return run.finish((), refined.clarification)
        _require_prompts(refined, f"the answer on slice {k}", "a box or a point is needed to segment")
        targets.extend(_inherit(t, picked) for t in refined.targets)
    return run.finish(tuple(targets), None)


class _Run:
    """The reasoner calls of one question: streaming separators, step records, and summed statistics."""

    def __init__(self, reasoner, question, context, on_text, cancel, on_views=None) -> None:
        self.reasoner = reasoner
        self.question = question
        self.context = context
        self.on_text = on_text
        self.cancel = cancel
        self.on_views = on_views
        self.steps: list[StepRecord] = []
        self.notes: list[str] = []

    def ask(self, step: str, views) -> Answer:
        if self.steps and self.on_text is not None:
            self.on_text("\n\n")
        views = draw_entities(views, self.context.entities)  # the entities so far, outlined and tagged with their ids
        if self.on_views is not None:
            try:
                self.on_views(views)
            except Exception:  # a helper (encoding ahead) must never cost the answer
                log.warning("the on_views callback failed; the reasoner is asked anyway", exc_info=True)
        answer = self.reasoner.reason(views, self.question, self.context, self.on_text, self.cancel)
        self.steps.append(StepRecord(step, answer.raw, answer.reasoning, answer.stats))
        return answer

    def note_skipped(self, k: int, picked: list[Target]) -> None:
        labels = ", ".join(t.label or "unnamed" for t in picked)
        self.notes.append(f"[slice {k} ({labels}) was not refined: more key slices than max_key_slices]")

    def finish(self, targets, clarification: str | None) -> Answer:
        reasoning = "\n\n".join(s.reasoning for s in self.steps if s.reasoning)
        if self.notes:
            reasoning = "\n\n".join([reasoning, *self.notes]).strip()
        return Answer(
            reasoning=reasoning,
            targets=tuple(targets),
            clarification=clarification,
            raw=self.steps[-1].raw if self.steps else "",
            steps=tuple(self.steps),
            stats=_sum_stats([s.stats for s in self.steps]),
        )


def _group_by_slice(targets: tuple[Target, ...]) -> dict[int, list[Target]]:
    """Targets by key slice, in the order the model named them (one refine call per slice)."""
    groups: dict[int, list[Target]] = {}
    for target in targets:
        groups.setdefault(target.slice, []).append(target)
    return groups


def _inherit(refined: Target, picked: list[Target]) -> Target:
    """A refined target without a label or ref takes them from the key-slice step when that is unambiguous."""
    if len(picked) != 1:
        return refined
    source = picked[0]
    return replace(refined, label=refined.label or source.label, ref=refined.ref or source.ref)


def _require_prompts(answer: Answer, what: str, why: str) -> None:
    for n, target in enumerate(answer.targets, 1):
        if not target.has_prompt:
            name = f" ('{target.label}')" if target.label else ""
            raise ReasonerOutputError(f"{what} gives target {n}{name} only a slice number, but {why}", answer.raw)


def _sum_stats(stats: list[GenerationStats | None]) -> GenerationStats | None:
    known = [s for s in stats if s is not None]
    if not known:
        return None

    def total(values):
        present = [v for v in values if v is not None]
        return sum(present) if present else None

    return GenerationStats(
        prompt_tokens=total(s.prompt_tokens for s in known),
        generated_tokens=total(s.generated_tokens for s in known),
        seconds=sum(s.seconds for s in known),
        first_token_seconds=known[0].first_token_seconds,
        finish_reason=known[-1].finish_reason,
    )
