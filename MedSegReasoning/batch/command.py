"""The ``batch`` command: its options (``add_batch_parser``, hooked into the CLI's parser) and its run
(``run_batch_command``, then ``run_batch``), as ``export/command.py`` and ``evaluation/command.py`` do for theirs.

Order of a run: the options, the cohort (every study has a question or a box, or exit 2), the output folder (its
lock; ``--resume``), the pool (models load once per worker: exit 3 when they cannot, 4 when Ray cannot be reached),
then the studies, each saved as it finishes. Ctrl-C stops after what is saved; the tables and the report are
written at the end of every run, interrupted or not.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ask_options import positive_seconds
from ..wire.errors import EXIT_OK, EXIT_STUDIES_FAILED, InputError

BATCH_EPILOG = """cohort:
  a folder: one study per sub-folder (a DICOM series) or per NIfTI / NRRD file in it
  a manifest: .csv or .jsonl with the columns input, and optionally question, box (I0,J0,I1,J1,K) and label;
              a row's own question or box wins, --question / --questions give the rest theirs
  a DICOMweb QIDO-RS studies query: http(s)://HOST/PATH/studies?ModalitiesInStudy=CT&StudyDate=20250101-20251231
              (quote it in a shell); each study's series is picked by --series-filter (without it, a study must
              hold one series) and read as ask reads .../studies/UID/series/UID; credentials as for ask

outputs (in --out, default ./medseg-batch):
  <study>/         ask's outputs (mask.nii.gz, seg.dcm, overview.png, result.json); <study> is the Study Instance
                   UID where there is one, else the input's name
  results.csv      one row per entity (a failed study: one row, no entity); results.parquet with pyarrow
  report.html      volumes per structure and the failures with their reasons

--dicomweb URL (the service root, e.g. http://localhost:8042/dicom-web) stores each study's SEG and SR there as
export --dicomweb does (column stored: their WADO-RS URLs). A study the PACS refuses is failed with its reason
(its outputs are kept; --resume tries it again); a PACS that cannot be reached stops the run, exit 4.

--resume skips the studies already done and tries the failed ones again (once per run).

On Ray, --workers N segmenter actors run the rounds; each study is read by a Ray task ahead of them (at most N+1
ahead), and with --dicomweb its SEG and SR are stored by a Ray task while the actors go on.

"""


def add_batch_parser(sub: Any, *, exit_codes_help: str, default_reasoner: str) -> None:
    """``batch``: every study of a cohort through ``ask``'s round, on Ray where it is installed."""
    batch = sub.add_parser(
        "batch",
        help="ask the same question of a whole cohort (resumable; on Ray where installed)",
        description="Run ask's round over every study of a cohort; one results table, one report.",
        epilog=BATCH_EPILOG + exit_codes_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument(
        "cohort", metavar="COHORT", help="a folder of studies, a .csv / .jsonl manifest, or a DICOMweb studies query"
    )
    asked = batch.add_mutually_exclusive_group()
    asked.add_argument("--question", metavar="TEXT", default=None, help="the question for every study without its own")
    asked.add_argument(
        "--questions", metavar="FILE", type=Path, default=None, help="one question per line, one line per study"
    )
    batch.add_argument(
        "--reasoner",
        metavar="SPEC",
        default=None,
        help=f"as for ask (default: {default_reasoner}); an openai: server is the path that scales",
    )
    batch.add_argument(
        "--reasoner-timeout",
        metavar="SECONDS",
        type=positive_seconds,
        default=None,
        help="as for ask: openai: reasoners' total time for one answer (default 300); a study whose reasoner runs "
        "past it is failed with that reason, the run goes on (exit 5 at the end)",
    )
    batch.add_argument("--allow-remote", action="store_true", help="allow a non-loopback openai: reasoner server")
    batch.add_argument("--allow-download", action="store_true", help="let hf:<id> download the model")
    batch.add_argument("--device", default=None, help="reasoner device: cuda, mps or cpu (default: best available)")
    batch.add_argument("--segmenter", default="litemedsam", help="litemedsam (default) or sam:PATH / medsam:PATH")
    batch.add_argument("--window", default=None, help="intensity window (default: per volume, as ask)")
    batch.add_argument(
        "--series-filter",
        metavar="RULE",
        default=None,
        help="which series of a DICOM study folder or DICOMweb study: modality=CT, description=PATTERN, most-slices (comma-separated); "
        "what was picked is recorded (series_picked)",
    )
    batch.add_argument("--out", type=Path, default=Path("medseg-batch"), help="output folder (default ./medseg-batch)")
    batch.add_argument(
        "--dicomweb",
        metavar="URL",
        default=None,
        help="store each study's SEG and SR on this DICOMweb service (STOW-RS)",
    )
    batch.add_argument("--resume", action="store_true", help="continue the run in --out: skip done, retry failed")
    batch.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N studies")
    batch.add_argument(
        "--workers", type=int, default=None, metavar="N", help="segmenter actors (default: fit the cores and memory)"
    )
    batch.add_argument(
        "--ray-address",
        metavar="ADDR",
        default=None,
        help="join a Ray cluster: auto, HOST:PORT (its head) or ray://HOST:PORT (default: a local Ray in this command)",
    )
    batch.add_argument(
        "--in-process", action="store_true", help="no Ray: one study at a time in this process (as without Ray)"
    )


@dataclass
class BatchSummary:
    """What a run did: studies by status (this run's and earlier runs'), and where the results are."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    already_done: int = 0
    interrupted: bool = False
    engine: str = "in-process"
    seconds: float = 0.0
    written: list[str] = field(default_factory=list)


def run_batch_command(args: argparse.Namespace, default_reasoner: str) -> int:
    """``batch``: check everything that can be checked, run, print where the results are; exit 0, 5 or 130."""
    from ..reasoning.spec import ReasonerOptions, check_spec_form
    from ..segmentation.factory import check_spec
    from .cohort import SeriesFilter, read_cohort, read_questions
    from .study import JobOptions

    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: give 1 or more.")
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit {args.limit}: give 1 or more.")
    SeriesFilter.parse(args.series_filter)
    if args.dicomweb is not None and not args.dicomweb.lower().startswith(("http://", "https://")):
        raise InputError(f"--dicomweb {args.dicomweb}: give the service root, e.g. http://localhost:8042/dicom-web.")
    questions = read_questions(args.questions) if args.questions else []
    studies = read_cohort(args.cohort, args.question, questions)[: args.limit]
    check_spec(args.segmenter)
    reasoner = None
    if any(s.box is None for s in studies):
        spec = args.reasoner or default_reasoner
        check_spec_form(spec)
        if args.reasoner_timeout is not None and not spec.strip().lower().startswith("openai:"):
            raise InputError("--reasoner-timeout applies to openai: reasoners (a server): leave it out for this one.")
        reasoner = ReasonerOptions(
            spec=spec,
            allow_remote=args.allow_remote,
            allow_download=args.allow_download,
            device=args.device,
            stream=False,
            timeout_s=args.reasoner_timeout,
        )
    options = JobOptions(
        segmenter=args.segmenter, window=args.window, reasoner=reasoner, series_filter=args.series_filter
    )
    summary = run_batch(
        studies,
        options,
        args.out,
        resume=args.resume,
        workers=args.workers,
        ray_address=args.ray_address,
        in_process=args.in_process,
        dicomweb=args.dicomweb,
    )
    print(
        f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped"
        + (f", {summary.already_done} done before" if summary.already_done else "")
        + f" ({summary.engine}, {summary.seconds:.1f} s); wrote {', '.join(summary.written)} to {args.out}"
    )
    if summary.interrupted:
        raise KeyboardInterrupt
    return EXIT_STUDIES_FAILED if summary.failed else EXIT_OK


def run_batch(
    studies,
    options,
    out: Path,
    *,
    resume: bool = False,
    workers: int | None = None,
    ray_address: str | None = None,
    in_process: bool = False,
    source: Any = None,
    dicomweb: str | None = None,
) -> BatchSummary:
    """Run ``studies`` into ``out``; the engine of ``batch``. ``source``: how workers build their segmenter
    (``study.SegmenterSource`` from the spec unless a test gives its own picklable one). ``dicomweb``: the PACS
    each study's SEG and SR go to (``publish.py``); one that cannot be reached ends the run with its error."""
    from .pool import RayPool, check_ray_request, default_workers, run_in_process
    from .progress import Progress
    from .report import write_report, write_tables
    from .store import BatchStore

    use_ray = check_ray_request(ray_address, in_process)
    store = BatchStore(out, resume=resume)
    summary = BatchSummary(engine="ray" if use_ray else "in-process")
    t0 = time.perf_counter()
    try:
        todo = [s for s in studies if store.status(s.key) not in ("ok", "skipped")]
        summary.already_done = len(studies) - len(todo)
        progress = Progress(len(todo), already=summary.already_done)
        pool = None
        try:
            if use_ray and todo:
                n = workers or default_workers()
                pool = RayPool(options, workers=min(n, len(todo)), address=ray_address, source=source)
                progress.workers = pool.workers
                progress.note(f"starting {pool.workers} Ray worker(s), each loading the models once...")
                pool.start(needs_reasoner=any(s.box is None for s in todo))
                finished = pool.run(todo, dicomweb)
            else:
                progress.note("loading the models..." if todo else "nothing left to do")
                finished = run_in_process(todo, options, source, dicomweb)
            with contextlib.closing(finished):  # a run that stops cancels what is in flight before the pool goes
                for study, outcome, stop in finished:  # the driver alone writes OUT: each study once, atomically
                    store.save(study, outcome)
                    setattr(summary, outcome.status, getattr(summary, outcome.status) + 1)
                    progress.done(study, outcome)
                    if stop is not None:
                        raise stop
        except KeyboardInterrupt:
            summary.interrupted = True
            progress.note("interrupted: the studies finished so far are kept; --resume does the rest")
        finally:  # the tables say what is done even when the run stops on an error (Ray lost, a model failing)
            progress.close()
            if pool is not None:
                pool.close()
            summary.seconds = time.perf_counter() - t0
            if store.records or not todo:  # not when the models failed to load before any study (exit 3)
                rows = store.all_rows([s.key for s in studies])
                summary.written = write_tables(store.out, rows)
                write_report(store.out, rows, elapsed_s=summary.seconds)
                summary.written.append("report.html")
    finally:
        store.close()
    return summary


__all__ = ["BatchSummary", "add_batch_parser", "run_batch", "run_batch_command"]
