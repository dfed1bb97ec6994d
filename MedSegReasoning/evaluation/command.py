"""The ``eval`` command: its options (``add_eval_parser``, hooked into the CLI's parser) and its run
(``run_eval_command``), as ``export/command.py`` and ``server/cli.py`` do for theirs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..ask_options import positive_seconds
from ..wire.errors import EXIT_OK, InputError

EVAL_EPILOG = """layouts (--layout auto detects them; docs/evaluation.md, "Datasets and modes"):
  umrg      MedReasoner's U-MRG-14K parquet (a .parquet file or a folder of them)
  mrmedseg  MediRound's MR-MedSeg dialogues (a .json file; image and mask paths relative to it)
  folder    volumes + label maps + questions.jsonl (volume, labels, question, label[, round, reference])

modes:
  full         the reasoner answers, the dialogue path segments (judgment, correction, entities)
  oracle       the truth's box on its largest slice: the segmenter's ceiling
  reasoner     box IoU / pDice of the reasoner's answers, nothing segmented
  interactive  a simulated user (CVPR 2025 interactive 3D challenge): the truth's box, then up to --corrections
               add/erase boxes where the 3D error is largest; initial and final Dice, DSC_AUC, NSD_AUC, encoder calls

outputs (in --out): samples.jsonl (one record per question), run.json, summary.json, summary.md, plots/*.png

"""


def add_eval_parser(sub: Any, *, exit_codes_help: str, default_reasoner: str) -> None:
    """``eval``: score the pipeline, the segmenter alone (oracle prompts) or the reasoner alone on a dataset."""
    ev = sub.add_parser(
        "eval",
        help="evaluate on a dataset (U-MRG parquet, MR-MedSeg dialogues, or a folder of volumes)",
        description="Evaluate the pipeline on a labelled dataset; resumable, one JSON line per question.",
        epilog=EVAL_EPILOG + exit_codes_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("dataset", metavar="DATASET", type=Path, help="parquet file, MR-MedSeg JSON, or a folder")
    ev.add_argument("--layout", default="auto", help="auto (default), umrg, mrmedseg or folder")
    ev.add_argument(
        "--mode",
        default="full",
        help="full (reasoner + segmenter, default), oracle (boxes from the truth: the segmenter's ceiling), "
        "reasoner (box IoU / pDice of the answers, nothing segmented) or interactive (a simulated user: a box, "
        "then corrections)",
    )
    ev.add_argument(
        "--corrections",
        type=int,
        default=None,
        metavar="N",
        help="interactive mode: corrections after the first box (default 5, the challenge's budget)",
    )
    ev.add_argument("--out", type=Path, default=Path("medseg-eval"), help="output folder (default: ./medseg-eval)")
    ev.add_argument("--resume", action="store_true", help="continue the run in --out, skipping finished samples")
    ev.add_argument("--force", action="store_true", help="start over in a non-empty --out (replaces samples.jsonl)")
    ev.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N questions or dialogues")
    ev.add_argument("--segmenter", default="litemedsam", help="litemedsam (default) or sam:PATH / medsam:PATH")
    ev.add_argument("--window", default=None, help="intensity window (default: per volume, as ask)")
    ev.add_argument("--no-propagate", action="store_true", help="3D: score the key slice's mask only")
    ev.add_argument(
        "--nsd-tolerance", type=float, default=2.0, metavar="MM", help="NSD tolerance in mm for 3D (default 2)"
    )
    ev.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ev.add_argument(
        "--reasoner",
        metavar="SPEC",
        default=None,
        help=f"as for ask: hf:..., openai:...#MODEL or replay:FILE (default: {default_reasoner})",
    )
    ev.add_argument("--allow-remote", action="store_true", help="allow a non-loopback openai: reasoner server")
    ev.add_argument("--allow-download", action="store_true", help="let hf:<id> download the model")
    ev.add_argument("--device", default=None, help="reasoner device: cuda, mps or cpu (default: best available)")
    ev.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens per answer")
    ev.add_argument(
        "--reasoner-timeout",
        metavar="SECONDS",
        type=positive_seconds,
        default=None,
        help="as for ask: openai: reasoners' total time for one answer (default 300); past it the run stops "
        "with exit 4 (the service's fault) and --resume continues it",
    )


def run_eval_command(args: argparse.Namespace, default_reasoner: str) -> int:
    """``eval``: check the options, open the dataset, run, print the headline numbers."""
    from ..output import prepare_out_dir
    from ..reasoning.spec import ReasonerOptions
    from .layouts import open_dataset
    from .runner import DEFAULT_CORRECTIONS, MODES, REASONER_MODES, SAMPLES_FILE, EvalOptions, run_eval

    if args.mode not in MODES:
        raise InputError(f"unknown --mode '{args.mode}': use one of {', '.join(MODES)}.")
    if args.resume and args.force:
        raise InputError("--resume continues the run in --out and --force starts it over: give one of them.")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: give a folder.")
    if args.resume and not (out / SAMPLES_FILE).is_file():
        raise InputError(f"--resume: {out} holds no {SAMPLES_FILE} to continue; drop --resume to start a run.")
    if not args.resume:
        prepare_out_dir(out, args.force)
    if args.mode != "interactive" and args.corrections is not None:
        raise InputError(f"--corrections is for --mode interactive; mode '{args.mode}' places no corrections.")
    dataset = open_dataset(args.dataset, args.layout)
    reasoner = None
    if args.mode in REASONER_MODES:
        reasoner = ReasonerOptions(
            spec=args.reasoner or default_reasoner,
            allow_remote=args.allow_remote,
            allow_download=args.allow_download,
            device=args.device,
            max_new_tokens=args.max_new_tokens,
            stream=False,
            timeout_s=args.reasoner_timeout,
        )
    options = EvalOptions(
        out=out,
        mode=args.mode,
        resume=args.resume,
        limit=args.limit,
        segmenter=args.segmenter,
        reasoner=reasoner,
        window=args.window,
        propagate=not args.no_propagate,
        nsd_tolerance_mm=args.nsd_tolerance,
        progress=not args.no_progress,
        corrections=DEFAULT_CORRECTIONS if args.corrections is None else args.corrections,
    )
    summary = run_eval(dataset, options)
    print_eval_summary(summary, out)
    return EXIT_OK


def print_eval_summary(summary: dict, out: Path) -> None:
    """The headline numbers after ``eval``; the tables are in summary.md."""
    counts = summary.get("counts", {})
    overall = summary.get("overall", {})
    parts = [f"{counts.get('n', 0)} samples ({counts.get('n_errors', 0)} failed)"]
    for key in ("dice", "box_iou", "pdice", "nsd"):
        value = (overall.get(key) or {}).get("mean")
        if value is not None:
            parts.append(f"{key} {value:.3f}")
    print(", ".join(parts))
    interactive = summary.get("interactive")
    if interactive:
        m = interactive["overall"]
        print(
            f"interactive: Dice {_number(m['initial_dice'])} after the box -> {_number(m['final_dice'])} after the "
            f"corrections, DSC_AUC {_number(m['dsc_auc'])}, NSD_AUC {_number(m['nsd_auc'])}, "
            f"{_number(m['encoder_calls'], 1)} encoder calls and {_number(m['latency_s'], 1)} s per structure"
        )
    computed, kept = summary.get("computed", 0), summary.get("skipped", 0)
    print(f"computed {computed}, kept {kept} from before; wrote the report to {out}")


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
