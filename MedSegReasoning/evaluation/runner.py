"""The evaluation loop: dataset units in, one JSON line per question out, then the report.

Modes (``docs/evaluation.md``, "Datasets and modes"):

- ``full``: the reasoner answers each question and the dialogue path segments it (``dialogue.ask.ask_round``, the
  round every front end runs: judgment, segmenter-side correction, the reasoner asked again after a rejected mask,
  entities), exactly as ``ask --session`` and the server do. The reasoner is told the question's own round number,
  so a replay file serves a re-ask from that round's next lines. Dialogues run twice: feeding the TRUE masks of
  earlier rounds as the entities later questions refer to, and feeding the pipeline's own predicted masks.
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
Files: ``runner.py`` (this loop), ``options.py`` (``EvalOptions``, the models), ``modes.py`` (one function per
mode), ``records.py`` (a sample's record, its scores and meter), ``resume.py`` (resuming, ``run.json``),
``truth.py`` (prompts from the truth).

Resuming: finished units (a question, or a dialogue run for one feed) are found in ``samples.jsonl`` and skipped;
a dialogue run's records are appended together when it finishes, so the file never holds half a dialogue.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..wire.errors import ServiceError
from .interactive import DEFAULT_CORRECTIONS
from .layouts import Dataset, Unit
from .modes import MODE_RUNNERS
from .options import MODES, REASONER_MODES, RUN_FILE, SAMPLES_FILE, EvalOptions, Models
from .records import Meter, failed_load, message_of, sample_id
from .resume import append_samples, check_run_file, done_units, read_existing, rewrite_samples, run_identity, write_json
from .truth import truth_prompt

__all__ = [  # the loop's public names (the CLI's and the benchmarks'), wherever they live
    "DEFAULT_CORRECTIONS",
    "MODES",
    "REASONER_MODES",
    "RUN_FILE",
    "SAMPLES_FILE",
    "EvalOptions",
    "read_existing",
    "run_eval",
    "sample_id",
    "truth_prompt",
]


def run_eval(dataset: Dataset, options: EvalOptions, *, segmenter=None, reasoner=None) -> dict:
    """Evaluate ``dataset``; write ``samples.jsonl``, ``run.json`` and the report into ``options.out``.

    ``segmenter``/``reasoner`` may be given ready-made (tests, benchmarks); otherwise they are created from the
    options when the first unit needs them. Returns the summary ``report.write_report`` produced.
    """
    from .report import write_report

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    samples_path = out / SAMPLES_FILE
    check_run_file(out, dataset, options)
    records = read_existing(samples_path) if options.resume else []
    rewrite_samples(samples_path, records)  # drops a line cut off by a crash; a fresh run starts an empty file
    write_json(out / RUN_FILE, run_identity(dataset, options))  # before any sample: a crashed run is resumable
    done = done_units(records)
    models = Models(options, segmenter, reasoner)
    units = dataset.units[: options.limit] if options.limit else dataset.units
    bar = _Progress(len(units), options.progress)
    computed = 0
    try:
        for unit in units:
            feeds = [f for f in _feeds(unit, options.mode) if (unit.id, f) not in done]
            bar.describe(unit.id)
            for feed in feeds:
                new = _run_unit(unit, feed, options, models)
                append_samples(samples_path, new)
                records.extend(new)
                computed += len(new)
            bar.advance()
    finally:
        bar.close()
    title = options.title or f"{dataset.path.name}: {options.mode} mode"
    summary = write_report(records, out, title=title)
    write_json(out / RUN_FILE, {**run_identity(dataset, options), "models_load_s": models.load_s})
    summary["computed"] = computed
    summary["skipped"] = len(records) - computed
    return summary


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


def _run_unit(unit: Unit, feed: str | None, options: EvalOptions, models: Models) -> list[dict]:
    """All records of one unit (for one feed). A failing sample becomes an error record and the run goes on.

    Not caught: a model that cannot be loaded (nothing could be scored; exit 3) and an unreachable service
    (exit 4), so the run stops and ``--resume`` continues it once the cause is fixed, instead of recording a
    failure for every remaining sample.
    """
    if options.mode != "reasoner":
        models.get_segmenter()
    if options.mode in REASONER_MODES:
        models.get_reasoner()
    meter = Meter()
    try:
        case = unit.load()
    except ServiceError:
        raise
    except Exception as exc:  # one unreadable sample must not end the run; its record says why
        return [failed_load(unit, feed, options, message_of(exc), meter.stop())]
    runner = MODE_RUNNERS[options.mode]
    try:
        return runner(unit, case, feed, options, models)
    except ServiceError:
        raise
    except Exception as exc:  # a failure between questions (feeding a mask): the unit fails as a whole
        return [failed_load(unit, feed, options, message_of(exc), meter.stop())]


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
