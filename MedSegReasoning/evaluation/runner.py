"""The evaluation loop: dataset units in, one JSON line per question out, then the report.

Modes (``docs/evaluation.md``, "Datasets and modes"):

- ``full``: the reasoner answers each question and the dialogue path segments it (``dialogue.run_round``:
  judgment, segmenter-side correction, entities), exactly as ``ask --session`` does, except that the reasoner is
  not asked again after a rejected mask (one answer per question, so a replay file stays in step). Dialogues run
  twice: feeding the TRUE masks of earlier rounds as the entities later questions refer to, and feeding the
  pipeline's own predicted masks.
- ``oracle``: the segmenter alone, prompted with the truth's box on the truth's largest slice (propagated through
  the volume for 3D): the ceiling the segmenter puts on the full pipeline.
- ``reasoner``: the reasoner's answer only, scored as a box (IoU with the truth's box) and as a point pair
  (MedReasoner's pDice, where the dataset has one); nothing is segmented. Dialogue rounds see the true earlier
  masks.
- ``interactive``: the simulated user of the CVPR 2025 interactive 3D challenge (``interactive.run_interactive``):
  the truth's box on its largest slice, then up to ``corrections`` add/erase boxes where the 3D error is largest,
  through the same segment, propagate and ``correction.correct_mask`` steps every front end uses; scored after each
  interaction (initial and final Dice, DSC_AUC, NSD_AUC, encoder calls). No reasoner.

A 2D image is a one-slice volume; the reasoner is shown it directly (no key-slice montage: one call per question).
Resuming: finished units (a question, or a dialogue run for one feed) are found in ``samples.jsonl`` and skipped;
a dialogue run's records are appended together when it finishes, so the file never holds half a dialogue.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..jsonlines import read_json_objects
from ..wire.errors import InputError, ServiceError
from .interactive import DEFAULT_CORRECTIONS
from .layouts import Case, Dataset, Turn, Unit

MODES = ("full", "oracle", "reasoner", "interactive")
REASONER_MODES = ("full", "reasoner")
"""The modes that ask a reasoner; ``oracle`` and ``interactive`` take their prompts from the truth."""
SAMPLES_FILE = "samples.jsonl"
RUN_FILE = "run.json"
DEFAULT_NSD_TOLERANCE_MM = 2.0


@dataclass(frozen=True)
class EvalOptions:
    """What ``eval`` does; ``reasoner`` is a ``conversation.ReasonerOptions`` (full and reasoner modes).

    ``corrections`` is the interactive mode's budget after the first box; ``propagation`` a
    ``propagation.PropagationConfig`` for the oracle and interactive modes (None: the defaults every front end uses;
    the benchmarks pass variants of it).
    """

    out: Path
    mode: str = "full"
    resume: bool = False
    limit: int | None = None
    segmenter: str = "litemedsam"
    reasoner: Any = None
    window: str | None = None
    propagate: bool = True
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM
    progress: bool = True
    title: str | None = None
    corrections: int = DEFAULT_CORRECTIONS
    propagation: Any = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown mode '{self.mode}': use one of {', '.join(MODES)}.")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit must be at least 1, got {self.limit}.")
        if self.nsd_tolerance_mm < 0:
            raise InputError(f"the NSD tolerance must be >= 0 mm, got {self.nsd_tolerance_mm}.")
        if self.mode in REASONER_MODES and self.reasoner is None:
            raise InputError(f"mode '{self.mode}' needs a reasoner (--reasoner SPEC).")
        if self.corrections < 0:
            raise InputError(f"--corrections must be 0 or more, got {self.corrections}.")
        if self.mode == "interactive" and not self.propagate:
            raise InputError("--mode interactive scores 3D masks, each correction re-propagated: drop --no-propagate.")

    @property
    def propagation_config(self):
        """The ``PropagationConfig`` the oracle and interactive modes segment with."""
        from ..propagation import DEFAULT_PROPAGATION

        return DEFAULT_PROPAGATION if self.propagation is None else self.propagation


@dataclass
class _Models:
    """Models created on first use: a run whose samples are all done loads nothing."""

    options: EvalOptions
    segmenter: Any = None
    reasoner: Any = None
    load_s: dict[str, float] = field(default_factory=dict)

    def get_segmenter(self):
        if self.segmenter is None:
            from ..segmentation.factory import create_segmenter

            t0 = time.perf_counter()
            self.segmenter = create_segmenter(self.options.segmenter)
            self.load_s["segmenter_s"] = time.perf_counter() - t0
        return self.segmenter

    def get_reasoner(self):
        if self.reasoner is None:
            from ..reasoning import create_reasoner

            ro = self.options.reasoner
            t0 = time.perf_counter()
            self.reasoner = create_reasoner(
                ro.spec,
                allow_remote=ro.allow_remote,
                allow_download=ro.allow_download,
                device=ro.device,
                max_new_tokens=ro.max_new_tokens,
            )
            self.load_s["reasoner_s"] = time.perf_counter() - t0
        return self.reasoner


def run_eval(dataset: Dataset, options: EvalOptions, *, segmenter=None, reasoner=None) -> dict:
    """Evaluate ``dataset``; write ``samples.jsonl``, ``run.json`` and the report into ``options.out``.

    ``segmenter``/``reasoner`` may be given ready-made (tests, benchmarks); otherwise they are created from the
    options when the first unit needs them. Returns the summary ``report.write_report`` produced.
    """
    from .report import write_report

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    samples_path = out / SAMPLES_FILE
    _check_run_file(out, dataset, options)
    records = read_existing(samples_path) if options.resume else []
    _rewrite(samples_path, records)  # drops a line cut off by a crash; a fresh run starts an empty file
    _write_json(out / RUN_FILE, _run_identity(dataset, options))  # before any sample: a crashed run is resumable
    done = _done(records)
    models = _Models(options, segmenter, reasoner)
    units = dataset.units[: options.limit] if options.limit else dataset.units
    bar = _Progress(len(units), options.progress)
    computed = 0
    try:
        for unit in units:
            feeds = [f for f in _feeds(unit, options.mode) if (unit.id, f) not in done]
            bar.describe(unit.id)
            for feed in feeds:
                new = _run_unit(unit, feed, options, models)
                _append(samples_path, new)
                records.extend(new)
                computed += len(new)
            bar.advance()
    finally:
        bar.close()
    title = options.title or f"{dataset.path.name}: {options.mode} mode"
    summary = write_report(records, out, title=title)
    _write_json(out / RUN_FILE, {**_run_identity(dataset, options), "models_load_s": models.load_s})
    summary["computed"] = computed
    summary["skipped"] = len(records) - computed
    return summary


# --- resuming ----------------------------------------------------------------------------------------------------------


def read_existing(path: Path) -> list[dict]:
    """Records already written; a last line cut off by a crash is dropped (its unit is run again)."""
    if not path.is_file():
        return []
    records = []
    hint = ": the file was edited; start a new --out"
    for number, record in read_json_objects(path, hint=hint, drop_cut_last_line=True):
        if "sample" not in record:
            raise InputError(f"line {number} of {path} is not a sample record: start a new --out.")
        records.append(record)
    return records


def _done(records: list[dict]) -> set[tuple[str, str | None]]:
    """``(unit id, feed)`` pairs already finished: a question's sample id, or a dialogue's id with its feed."""
    done = set()
    for r in records:
        if r.get("dialogue") is not None:
            done.add((r["dialogue"], r.get("feed")))
        else:
            done.add((r["sample"], None))
    return done


def _feeds(unit: Unit, mode: str) -> list[str | None]:
    """Dialogues in full mode run once per feed; the oracle's prompts do not depend on earlier masks, and the
    reasoner-only mode has no predicted masks, so those run once (oracle: no feed; reasoner: the truth)."""
    if not unit.dialogue:
        return [None]
    feeds: dict[str, list[str | None]] = {
        "full": ["true", "predicted"],
        "oracle": [None],
        "reasoner": ["true"],
        "interactive": [None],
    }
    return feeds[mode]


def _run_identity(dataset: Dataset, options: EvalOptions) -> dict:
    import dataclasses

    identity = {
        "dataset": str(dataset.path.resolve()),
        "layout": dataset.layout,
        "mode": options.mode,
        "segmenter": options.segmenter if options.mode != "reasoner" else None,
        "reasoner": options.reasoner.spec if options.reasoner is not None and options.mode in REASONER_MODES else None,
        "propagate": options.propagate,
        "nsd_tolerance_mm": options.nsd_tolerance_mm,
    }
    if options.mode == "interactive":
        identity["corrections"] = options.corrections
    if options.propagation is not None:
        identity["propagation"] = dataclasses.asdict(options.propagation)
    return identity


_SAME_RUN_KEYS = ("dataset", "layout", "mode", "segmenter", "reasoner")
_SAME_RUN_KEYS_IF_RECORDED = ("corrections", "propagation")
"""Compared only where the earlier run.json has them (files written before they existed resume as before)."""


def _check_run_file(out: Path, dataset: Dataset, options: EvalOptions) -> None:
    """A resumed run must be the same evaluation: mixing modes or datasets in one samples.jsonl is refused."""
    path = out / RUN_FILE
    if not options.resume or not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    now = _run_identity(dataset, options)
    keys = [*_SAME_RUN_KEYS, *(k for k in _SAME_RUN_KEYS_IF_RECORDED if k in before or k in now)]
    changed = [k for k in keys if before.get(k) != now.get(k)]
    if changed:
        what = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise InputError(f"--resume in {out} continues another evaluation ({what}): use a new --out for this one.")


def _rewrite(path: Path, records: list[dict]) -> None:
    from ..atomic import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def _append(path: Path, records: list[dict]) -> None:
    """One write per unit, flushed to disk: a crash loses at most the unit in progress."""
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, data: dict) -> None:
    from ..atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


# --- one unit ----------------------------------------------------------------------------------------------------------


def sample_id(unit: Unit, turn_round: int | None, feed: str | None) -> str:
    """A question keeps its dataset id; a dialogue round is ``<dialogue>/r<round>`` plus ``@<feed>`` in full mode."""
    if not unit.dialogue:
        return unit.id
    return f"{unit.id}/r{turn_round}" + (f"@{feed}" if feed else "")


def _run_unit(unit: Unit, feed: str | None, options: EvalOptions, models: _Models) -> list[dict]:
    """All records of one unit (for one feed). A failing sample becomes an error record and the run goes on.

    Not caught: a model that cannot be loaded (nothing could be scored; exit 3) and an unreachable service
    (exit 4), so the run stops and ``--resume`` continues it once the cause is fixed, instead of recording a
    failure for every remaining sample.
    """
    if options.mode != "reasoner":
        models.get_segmenter()
    if options.mode in REASONER_MODES:
        models.get_reasoner()
    meter = _Meter()
    try:
        case = unit.load()
    except ServiceError:
        raise
    except Exception as exc:  # one unreadable sample must not end the run; its record says why
        return [_failed_load(unit, feed, options, _message(exc), meter.stop())]
    runner = {
        "oracle": _run_oracle,
        "full": _run_full,
        "reasoner": _run_reasoner,
        "interactive": _run_interactive,
    }[options.mode]
    try:
        return runner(unit, case, feed, options, models)
    except ServiceError:
        raise
    except Exception as exc:  # a failure between questions (feeding a mask): the unit fails as a whole
        return [_failed_load(unit, feed, options, _message(exc), meter.stop())]


def _message(exc: Exception) -> str:
    """A user-facing error's own sentence; anything else with its type, so a bug is visible in the record."""
    from ..wire.errors import MedSegError

    return str(exc) if isinstance(exc, MedSegError) else f"{type(exc).__name__}: {exc}"


def _base(unit: Unit, case: Case, turn: Turn, feed: str | None, options: EvalOptions) -> dict:
    tolerance = options.nsd_tolerance_mm if case.dimension == 3 and options.mode != "reasoner" else None
    return {
        "sample": sample_id(unit, turn.round, feed),
        "case": case.case,
        "category": case.category if case.category is None else str(case.category),
        "dialogue": unit.id if unit.dialogue else None,
        "round": turn.round,
        "feed": feed,
        "mode": options.mode,
        "dimension": case.dimension,
        "dice": None,
        "iou": None,
        "intersection": None,
        "union": None,
        "box_iou": None,
        "pdice": None,
        "nsd": None,
        "nsd_tolerance_mm": tolerance,
        "latency_s": None,
        "peak_rss_mb": None,
        "error": None,
        "question": turn.question,
    }


def _failed_load(unit: Unit, feed: str | None, options: EvalOptions, message: str, measured) -> dict:
    """A unit that could not be read or run: one record (its truth may be unknown, so the union is left null)."""
    return {
        "sample": unit.id,
        "case": unit.case or unit.id,
        "category": unit.category,
        "dialogue": unit.id if unit.dialogue else None,
        "round": None,
        "feed": feed,
        "mode": options.mode,
        "dimension": None,
        "dice": 0.0 if options.mode != "reasoner" else None,
        "iou": 0.0 if options.mode != "reasoner" else None,
        "intersection": 0 if options.mode != "reasoner" else None,
        "union": None,
        "box_iou": None,
        "pdice": None,
        "nsd": None,
        "nsd_tolerance_mm": None,
        "latency_s": measured[0],
        "peak_rss_mb": measured[1],
        "error": f"the sample failed: {message}",
        "question": None,
    }


def _score_mask(record: dict, pred: np.ndarray | None, truth: np.ndarray, volume, options: EvalOptions) -> None:
    from .metrics import dice, iou, normalized_surface_dice, overlap_counts

    pred = np.zeros_like(truth) if pred is None else pred
    inter, union = overlap_counts(pred, truth)
    record.update(intersection=int(inter), union=int(union), dice=float(dice(pred, truth)), iou=float(iou(pred, truth)))
    if record["dimension"] == 3:
        si, sj, sk = volume.geometry.spacing
        record["nsd"] = float(normalized_surface_dice(pred, truth, (sk, sj, si), options.nsd_tolerance_mm))


def _fail(record: dict, truth: np.ndarray, message: str, options: EvalOptions) -> None:
    """The documented failure record: Dice = IoU = 0, nothing overlapping, union = the truth's size."""
    if options.mode != "reasoner":
        record.update(dice=0.0, iou=0.0, intersection=0, union=int(truth.sum()))
        if record["dimension"] == 3:
            record["nsd"] = 0.0
    else:
        record.update(box_iou=0.0)
    if options.mode == "interactive":  # a failed structure lowers the interactive means too
        record.update(dict.fromkeys(("key_slice_dice", "initial_dice", "final_dice", "dsc_auc", "nsd_auc"), 0.0))
    record["error"] = message


def truth_prompt(truth: np.ndarray):
    """The oracle prompt: the truth's bounding box (inclusive voxel indices) on its largest axial slice."""
    from ..pipeline import VoxelPrompt

    areas = truth.reshape(truth.shape[0], -1).sum(axis=1)
    k = int(np.argmax(areas))
    jj, ii = np.nonzero(truth[k])
    return VoxelPrompt(k=k, box=(int(ii.min()), int(jj.min()), int(ii.max()), int(jj.max())))


def _window(case: Case, options: EvalOptions):
    from ..volume import default_window, window_by_name

    return window_by_name(options.window, case.volume) if options.window else default_window(case.volume)


def _run_oracle(unit: Unit, case: Case, feed, options: EvalOptions, models: _Models) -> list[dict]:
    """The segmenter from the truth's box, through the dialogue's own segment-and-propagate step. Only the
    bounds are checked: the CLI's "uniform region" guard protects users from a misplaced box, but a box taken
    from the truth is on the structure by construction (a flat lesion fills its box uniformly)."""
    from ..dialogue import segment_candidate

    window = _window(case, options)
    segmenter = models.get_segmenter()
    records = []
    for turn in case.turns:
        record = _base(unit, case, turn, feed, options)
        meter = _Meter()
        try:
            _require_truth(turn)
            prompt = truth_prompt(turn.truth)
            propagate_3d = options.propagate and case.dimension == 3
            config = options.propagation_config
            candidate = segment_candidate(case.volume, segmenter, window, prompt, propagate_3d, "oracle", config)
            record["latency_s"], record["peak_rss_mb"] = meter.stop()
            _score_mask(record, candidate.mask.to_dense(case.volume.shape), turn.truth, case.volume, options)
        except ServiceError:
            raise
        except Exception as exc:  # this question fails; the others go on
            record["latency_s"], record["peak_rss_mb"] = meter.stop()
            _fail(record, turn.truth, _message(exc), options)
        records.append(record)
    return records


def _run_interactive(unit: Unit, case: Case, feed, options: EvalOptions, models: _Models) -> list[dict]:
    """The simulated user on each question's truth, one structure at a time: a record scores the final mask like the
    oracle's (dice, iou, counts, nsd) and carries the interaction curve (``interactive_fields``). Dialogue rounds
    run as independent structures: the protocol corrects one mask, it does not refer to earlier ones."""
    from .interactive import run_interactive

    window = _window(case, options)
    segmenter = models.get_segmenter()
    records = []
    for turn in case.turns:
        record = _base(unit, case, turn, feed, options)
        meter = _Meter()
        try:
            _require_truth(turn)
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
            _score_mask(record, result.mask, turn.truth, case.volume, options)
            record.update(interactive_fields(result, options.corrections))
        except ServiceError:
            raise
        except Exception as exc:  # this structure fails; the others go on
            if record["latency_s"] is None:
                record["latency_s"], record["peak_rss_mb"] = meter.stop()
            _fail(record, turn.truth, _message(exc), options)
        records.append(record)
    return records


def interactive_fields(result, corrections: int) -> dict:
    """The record's interactive keys (``report.INTERACTIVE_FIELDS``) from an ``interactive.InteractiveResult``; the
    wall time is the record's ``latency_s``, so the protocol's own sum of seconds is left out."""
    fields = result.to_dict(corrections)
    fields.pop("seconds", None)
    fields["corrections_made"] = len(result.interactions) - 1
    return fields


def _require_truth(turn: Turn) -> None:
    if not turn.truth.any():
        raise InputError("the truth mask is empty: the label value is not in the label map, or the mask is blank.")


# --- with a reasoner -----------------------------------------------------------------------------------------------


def _reasoning_call(case: Case, reasoner, window, session, round_number: int, question: str):
    """Ask the reasoner one question with the session's entities as context. A 2D image is shown as it is
    (one call, no montage), as the 2D datasets' models were trained to see it."""
    from ..reasoning import CurrentView, ReasoningContext, ReasoningStrategy, run_reasoning

    context = ReasoningContext.from_dialogue(
        session.context_for_reasoner(), round_number, slice_mask=session.entity_slice_mask
    )
    if case.dimension == 2:
        strategy = ReasoningStrategy(use_current_view="always")
        return run_reasoning(
            case.volume, reasoner, question, strategy, context, window=window, current_view=CurrentView("axial", 0)
        )
    return run_reasoning(case.volume, reasoner, question, context=context, window=window)


def _answer_scores(record: dict, answer, turn: Turn) -> None:
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


def _run_reasoner(unit: Unit, case: Case, feed, options: EvalOptions, models: _Models) -> list[dict]:
    from ..dialogue import Session

    window = _window(case, options)
    session = Session.for_volume(case.volume)
    records = []
    for n, turn in enumerate(case.turns, 1):
        record = _base(unit, case, turn, feed, options)
        meter = _Meter()
        try:
            _require_truth(turn)
            answer = _reasoning_call(case, models.get_reasoner(), window, session, n, turn.question)
            record["latency_s"], record["peak_rss_mb"] = meter.stop()
            if answer.clarification:
                raise InputError(f"the reasoner asked back instead of answering: {answer.clarification}")
            _answer_scores(record, answer, turn)
        except ServiceError:
            raise
        except Exception as exc:  # this question fails; the others go on
            if record["latency_s"] is None:
                record["latency_s"], record["peak_rss_mb"] = meter.stop()
            _fail(record, turn.truth, _message(exc), options)
        records.append(record)
        if case.dialogue and turn.truth.any():
            _add_truth_entity(session, turn, None)
    return records


def _run_full(unit: Unit, case: Case, feed, options: EvalOptions, models: _Models) -> list[dict]:
    from ..dialogue import Session, run_round

    window = _window(case, options)
    session = Session.for_volume(case.volume)
    records = []
    for n, turn in enumerate(case.turns, 1):
        record = _base(unit, case, turn, feed, options)
        meter = _Meter()
        answers: list = []
        created: list[str] = []
        try:
            _require_truth(turn)
            segmenter, reasoner = models.get_segmenter(), models.get_reasoner()
            planner = _planner(case, reasoner, window, session, n, answers, options.propagate)
            rnd = run_round(session, case.volume, segmenter, window, turn.question, planner)
            record["latency_s"], record["peak_rss_mb"] = meter.stop()
            created = [t.entity_id for t in rnd.targets if t.entity_id]
            if answers:
                _answer_scores(record, answers[-1], turn)
            if not created:
                raise InputError(_round_failure(rnd))
            pred = np.zeros(case.volume.shape, dtype=bool)
            for entity_id in created:
                pred |= session.dense_mask(entity_id)
            _score_mask(record, pred, turn.truth, case.volume, options)
        except ServiceError:
            raise
        except Exception as exc:  # this question fails; the others go on
            if record["latency_s"] is None:
                record["latency_s"], record["peak_rss_mb"] = meter.stop()
            _fail(record, turn.truth, _message(exc), options)
        records.append(record)
        if feed == "true" and case.dialogue and turn.truth.any():
            _add_truth_entity(session, turn, created[0] if created else None)
    return records


def _planner(case: Case, reasoner, window, session, round_number: int, answers: list, propagate: bool):
    """``run_round``'s planner: the reasoner's answer as the round's plan (propagation only for 3D)."""
    import dataclasses

    from ..dialogue import plan_from_answer

    def plan(question: str, context: dict):
        answer = _reasoning_call(case, reasoner, window, session, round_number, question)
        answers.append(answer)
        result = plan_from_answer(answer, question)
        if not propagate or case.dimension == 2:
            targets = tuple(dataclasses.replace(t, propagate=False) for t in result.targets)
            result = dataclasses.replace(result, targets=targets)
        return result

    return plan


def _round_failure(rnd) -> str:
    if rnd.clarification:
        question = rnd.clarification.get("question") or rnd.clarification.get("text") or "a clarification"
        return f"the round ended with a question back instead of a mask: {question}"
    reasons = "; ".join(t.error or t.status for t in rnd.targets)
    return f"nothing was segmented ({reasons or 'the reasoner gave no target'})."


def _add_truth_entity(session, turn: Turn, entity_id: str | None) -> None:
    """Feed the truth: the round's entity takes the true mask (as a user's edit would), or, when the round made
    none, a new entity carries it, so later questions can refer to it either way."""
    from ..wire.masks import CompactMask

    if entity_id is not None:
        session.replace_mask(entity_id, turn.truth)
        return
    rnd = session.begin_round(turn.question)
    k = int(np.argmax(turn.truth.reshape(turn.truth.shape[0], -1).sum(axis=1)))
    session.add_entity(rnd, turn.label or f"round {turn.round} target", CompactMask.from_dense(turn.truth), key_slice=k)
    session.finish_round(rnd)


# --- measuring ---------------------------------------------------------------------------------------------------------


class _Meter:
    """Wall time and peak resident memory of one question.

    On Linux the kernel's high-water mark (VmHWM) is reset at the start (``/proc/self/clear_refs``), so the peak is
    the question's own; elsewhere it is the process's peak so far (``metrics.peak_rss_mb``).
    """

    def __init__(self) -> None:
        self._reset = _reset_peak_rss()
        self.t0 = time.perf_counter()

    def stop(self) -> tuple[float, float | None]:
        elapsed = time.perf_counter() - self.t0
        peak = _read_vm_hwm_mb() if self._reset else None
        if peak is None:
            from .metrics import peak_rss_mb

            peak = peak_rss_mb()
        return round(elapsed, 4), (round(peak, 1) if peak is not None else None)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_vm_hwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


class _Progress:
    """A tqdm bar over units on stderr (finished units of a resumed run count as done at once)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="eval", unit="sample", file=sys.stderr, leave=True)

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text[:40], refresh=False)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
