"""One study of a batch, on a worker that loaded its models once: ``ask``'s round on the study's volume (read
apart, by ``read.read_study``: on Ray a task, so the worker's time goes to the model), then its outputs as bytes.

The round is ``conversation.run_round_ask``, the function ``ask`` runs, with the worker's segmenter and reasoner
instead of fresh ones. The outputs are written into a scratch folder on the worker and come back as bytes, so
the driver alone writes into ``--out`` (atomically, and once per study) and a worker on another machine of a
cluster needs no shared output folder; only the inputs must be readable where the study runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..wire.errors import MedSegError
from .cohort import Study
from .read import StudyRead, materialise_headers, study_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobOptions:
    """What every study of a run shares (picklable: it travels to the Ray actors)."""

    segmenter: str = "litemedsam"
    window: str | None = None
    reasoner: Any = None  # reasoning.spec.ReasonerOptions, or None when every study has a box
    series_filter: str | None = None
    propagate: bool = True


@dataclass
class StudyOutcome:
    """What a worker sends back: the study's result.json (None when it failed), its files, its error."""

    key: str
    status: str  # ok | failed | skipped
    result: dict[str, Any] | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    series_picked: str = ""
    worker: str = ""
    stored: str = ""  # with --dicomweb: the WADO-RS URLs of the SEG and SR the PACS confirmed (publish.py)
    read_by: str = ""  # the process (pid@host) that read the study (read.py): on Ray a task, not this actor
    stored_by: str = ""  # the process that stored its SEG and SR (publish.py): on Ray a task, not the driver


class SegmenterSource:
    """How a worker builds its segmenter: ``create_segmenter(spec)``. Tests give another picklable source (a Ray
    actor does not see a monkeypatched factory); the command never does."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def __call__(self):
        from ..segmentation.factory import create_segmenter, default_store_root

        return create_segmenter(self.spec, embedding_store=default_store_root())


class StudyWorker:
    """Loads the segmenter (and the reasoner, where some study asks a question) once, then runs studies.

    The same class runs in-process and as a Ray actor. A ``MedSegError`` at load is the run's (exit 3 or 4), at a
    study only that study's (a row with its reason)."""

    def __init__(
        self, options: JobOptions, source: Any = None, needs_reasoner: bool = True, *, defer_errors: bool = False
    ) -> None:
        """``defer_errors``: keep a load error for ``ready`` to report (a Ray actor's constructor cannot raise a
        clean one) instead of raising it."""
        self.options = options
        self.name = f"worker-{os.getpid()}"
        self.load_error: MedSegError | None = None
        self.segmenter = self.reasoner = None
        t0 = time.perf_counter()
        try:
            self.segmenter = (source or SegmenterSource(options.segmenter))()
            self.reasoner = options.reasoner.create() if needs_reasoner and options.reasoner is not None else None
        except MedSegError as exc:
            if not defer_errors:
                raise
            self.load_error = exc
        self.load_s = time.perf_counter() - t0

    def ready(self) -> dict[str, Any]:
        """The seconds the models took to load, or the load's error (its class name and sentence)."""
        if self.load_error is not None:
            return {"error": str(self.load_error), "kind": type(self.load_error).__name__}
        return {"load_s": self.load_s, "worker": self.name}

    def run(self, study: Study, read: StudyRead) -> StudyOutcome:
        """``ask``'s round on ``read`` (``read.read_study``'s answer for ``study``: on Ray, a task's result that Ray
        hands over here), its outputs as bytes; a study that could not be read is its failed outcome."""
        t0 = time.perf_counter()
        if read.error:
            return self._outcome(study, read, "failed", error=read.error)
        scratch = Path(tempfile.mkdtemp(prefix="medseg-batch-"))
        try:
            result = self._round(study, read, scratch / "out")
            files = {p.name: p.read_bytes() for p in sorted((scratch / "out").iterdir()) if p.is_file()}
            status = "ok" if result.get("targets") else "skipped"
            error = "" if status == "ok" else _clarification(result)
            return self._outcome(study, read, status, result, files, error, time.perf_counter() - t0)
        except Exception as exc:  # stays this study's
            error = study_error(study.key, exc, "the round")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return self._outcome(study, read, "failed", error=error, seconds=time.perf_counter() - t0)

    def _outcome(
        self,
        study: Study,
        read: StudyRead,
        status: str,
        result: dict[str, Any] | None = None,
        files: dict[str, bytes] | None = None,
        error: str = "",
        seconds: float = 0.0,
    ) -> StudyOutcome:
        """The outcome of ``study``: its round's ``seconds`` count its read's too; who read it and ran it."""
        return StudyOutcome(
            study.key,
            status,
            result,
            files or {},
            error,
            read.seconds + seconds,
            read.picked,
            worker=self.name,
            read_by=read.by,
        )

    def _round(self, study: Study, read: StudyRead, out: Path) -> dict[str, Any]:
        from ..conversation import run_round_ask
        from ..pipeline import VoxelPrompt
        from ..reasoning.spec import ReasonerOptions

        volume = materialise_headers(read, out.parent / "source")
        timings: dict[str, float] = {"load_s": read.seconds}
        prompt: VoxelPrompt | None = _parse_box(study.box) if study.box else None
        if prompt is None and self.reasoner is None:
            from ..wire.errors import InputError

            raise InputError("this study asks a question but the run has no reasoner: give --reasoner SPEC.")
        from ..ask_options import AskOptions

        options = AskOptions(
            out=out,
            question=study.question,
            label=study.label or "Segment 1",
            window=self.options.window,
            segmenter=self.options.segmenter,
            propagate=self.options.propagate,
        )
        out.mkdir(parents=True, exist_ok=True)
        reasoner_options = (
            replace(self.options.reasoner, stream=False)
            if self.options.reasoner
            else ReasonerOptions(spec="replay:none", stream=False)
        )
        quiet = io.StringIO()
        # ask's summary and per-slice bars are for a terminal: the run's progress and table say it for a cohort
        # (its warnings are in result.json)
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            result = run_round_ask(
                volume,
                prompt,
                options,
                reasoner_options,
                None,
                timings,
                segmenter=self.segmenter,
                reasoner=self.reasoner,
            )
        if (
            read.picked
        ):  # recorded in the study's own result.json too (the scratch copy: the driver writes the final one)
            result = {**result, "series_picked": read.picked}
            (out / "result.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return result


def _parse_box(text: str):
    from ..ask_options import parse_prompt

    return parse_prompt(text, [])


def _clarification(result: dict[str, Any]) -> str:
    asked = (result.get("round") or {}).get("clarification") or {}
    question = asked.get("question") or asked.get("text") or ""
    return f"the reasoner asked back: {question}" if question else "nothing was segmented"
