"""``medseg-reasoning``: the command line. One clear sentence per failure, documented exit codes.

The CLI parses, validates and orchestrates; the work lives in the engine modules. Inputs are checked in the
order that fails fastest (arguments, output folder, volume, prompt) so a user never waits for a model to
load only to hear that a box was outside the volume.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import PROG, __version__
from .console import PropagationBar, demo_next_steps, status
from .wire.errors import EXIT_BAD_INPUT, EXIT_MODEL, EXIT_OK, EXIT_SERVICE, InputError, MedSegError

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}  success
  {EXIT_BAD_INPUT}  bad input or usage (the message says what to fix)
  {EXIT_MODEL}  model problem (weights missing or corrupt, segmenter or reasoner failed)
  {EXIT_SERVICE}  an external service is unreachable or refusing
"""

ASK_EPILOG = (
    """indices:
  I is the column, J the row and K the slice, 0-based voxel indices of the input; K counts slices after
  sorting along the slice normal (row direction x column direction), as ITK and SimpleITK order them.
  Box corners are inclusive. --box and --point combine into one prompt on one slice.

outputs (in --out, default ./medseg-out):
  mask.nii.gz   uint8 label map on exactly the input's grid: 0 background, target n -> value n
  seg.dcm       DICOM-SEG referencing the source series (DICOM input only)
  result.json   what was done and found (schema: docs/result-schema.md)

"""
    + EXIT_CODES_HELP
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one sentence with exit code 2 (its default code, kept)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


DEFAULT_REASONER_SPEC = "hf:Qwen2.5-VL-7B-Instruct"  # reasoning.spec.DEFAULT_REASONER_SPEC, kept import-free


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Reasoning segmentation of medical volumes (research use only, not for diagnosis).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    ask = sub.add_parser(
        "ask",
        help="segment a structure in a volume",
        description="Segment a structure in a DICOM series or file, NIfTI or NRRD volume.",
        epilog=ASK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_ask_arguments(ask)

    demo = sub.add_parser(
        "demo",
        help="build the sample series (MNI152 brain template as DICOM) and segment it",
        description="Build the sample DICOM series once, then run `ask` on it with a known box.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--sample-dir", type=Path, default=Path("medseg-sample"), help="where the sample is built")
    demo.add_argument("--out", type=Path, default=Path("medseg-out") / "demo", help="output folder (replaced)")
    demo.add_argument("--segmenter", default="litemedsam", help="segmenter spec (default: litemedsam)")

    models = sub.add_parser(
        "models",
        help="list known reasoner models or download one",
        description="Reasoner models: what is known, what is present locally, and downloads (safetensors only).",
        epilog="The cache is $MEDSEG_MODELS_DIR, else the Hugging Face cache; $HF_ENDPOINT names a mirror.\n\n"
        + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", parser_class=_Parser)
    models_sub.required = True
    models_list = models_sub.add_parser("list", help="known models, local presence, sizes and licences")
    models_list.add_argument("--cache-dir", type=Path, default=None, help="model cache folder")
    models_list.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    models_pull = models_sub.add_parser("pull", help="download a model (resumable, with a progress bar)")
    models_pull.add_argument("name", help="a name from `models list` or a Hugging Face id")
    models_pull.add_argument("--cache-dir", type=Path, default=None, help="model cache folder")

    from .export.command import add_export_parser
    from .server.cli import add_serve_parser

    add_export_parser(sub)
    add_serve_parser(sub)

    sample = sub.add_parser(
        "sample",
        help="only build the sample DICOM series",
        description="Build the sample DICOM series (MNI152 brain template) and sample.json with the demo's box.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sample.add_argument("out", type=Path, nargs="?", default=Path("medseg-sample"), help="folder to build it in")
    _add_eval_parser(sub)
    return parser


EVAL_EPILOG = (
    """layouts (--layout auto detects them; docs/evaluation.md, "Datasets and modes"):
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
    + EXIT_CODES_HELP
)


def _add_eval_parser(sub) -> None:
    """``eval``: score the pipeline, the segmenter alone (oracle prompts) or the reasoner alone on a dataset."""
    ev = sub.add_parser(
        "eval",
        help="evaluate on a dataset (U-MRG parquet, MR-MedSeg dialogues, or a folder of volumes)",
        description="Evaluate the pipeline on a labelled dataset; resumable, one JSON line per question.",
        epilog=EVAL_EPILOG,
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
        help=f"as for ask: hf:..., openai:...#MODEL or replay:FILE (default: {DEFAULT_REASONER_SPEC})",
    )
    ev.add_argument("--allow-remote", action="store_true", help="allow a non-loopback openai: reasoner server")
    ev.add_argument("--allow-download", action="store_true", help="let hf:<id> download the model")
    ev.add_argument("--device", default=None, help="reasoner device: cuda, mps or cpu (default: best available)")
    ev.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens per answer")


def _add_ask_arguments(ask: argparse.ArgumentParser) -> None:
    ask.add_argument(
        "input",
        metavar="INPUT",
        help="DICOM folder or file, .nii/.nii.gz, .nrrd, or a DICOMweb series URL "
        "(http(s)://…/studies/UID/series/UID; credentials from $MEDSEG_DICOMWEB_TOKEN, or $MEDSEG_DICOMWEB_USER "
        "and $MEDSEG_DICOMWEB_PASSWORD, or $MEDSEG_DICOMWEB_HEADERS)",
    )
    ask.add_argument("question", metavar="QUESTION", nargs="?", help="the clinical question (needs a reasoner)")
    ask.add_argument("--box", metavar="I0,J0,I1,J1,K", help="box prompt, inclusive corners on slice K")
    ask.add_argument(
        "--point",
        metavar="I,J,K[,0|1]",
        action="append",
        default=[],
        help="point prompt; last value 1 = foreground (default), 0 = background; repeatable",
    )
    ask.add_argument("--series", metavar="UID", help="SeriesInstanceUID to use when the folder holds several")
    ask.add_argument(
        "--assign-uids",
        action="store_true",
        help="for a DICOM series with blank Study/Series UIDs: give the SEG's references UIDs derived from the "
        "voxels' content hash (the same every run; recorded in result.json) instead of writing no SEG",
    )
    ask.add_argument("--label", default=None, help="name of the segmented structure (default: Segment 1)")
    ask.add_argument("--no-propagate", action="store_true", help="segment the key slice only")
    ask.add_argument(
        "--window", default=None, help="intensity window: ct-soft-tissue, ct-lung, ct-bone, ct-brain, auto"
    )
    ask.add_argument("--segmenter", default="litemedsam", help="litemedsam (default) or sam:PATH / medsam:PATH")
    ask.add_argument("--out", type=Path, default=Path("medseg-out"), help="output folder (default: ./medseg-out)")
    ask.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    ask.add_argument(
        "--session",
        metavar="DIR",
        type=Path,
        help="continue the dialogue saved in DIR (created if absent): later questions can refer to earlier entities",
    )
    refine = ask.add_argument_group("refine an entity of --session (a correction on any slice; see docs/refine.md)")
    refine.add_argument(
        "--refine",
        metavar="ENTITY",
        default=None,
        help="correct entity ENTITY (e.g. E1) of --session DIR: --box re-segments that slice and re-propagates from "
        "it until the result rejoins the mask; --erase removes what lies in the box and what propagation grew from it",
    )
    refine.add_argument(
        "--erase",
        metavar="I0,J0,I1,J1,K",
        default=None,
        help="with --refine: remove the entity's voxels inside this box on slice K (with --view: U0,V0,U1,V1,INDEX "
        "on that plane)",
    )
    reasoner = ask.add_argument_group("reasoner (answers QUESTION when no --box/--point is given)")
    reasoner.add_argument(
        "--reasoner",
        metavar="SPEC",
        default=None,
        help=f"hf:<model folder or id>, openai:<base-url>#<model> or replay:<answers.jsonl> "
        f"(default: {DEFAULT_REASONER_SPEC}; models: `{PROG} models list`)",
    )
    reasoner.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback openai: server; the rendered slices and the question (never DICOM header "
        "text) are sent to it; its API key is read from $MEDSEG_REASONER_API_KEY",
    )
    reasoner.add_argument(
        "--allow-download",
        action="store_true",
        help="let hf:<id> download the model (into $MEDSEG_MODELS_DIR or the Hugging Face cache; $HF_ENDPOINT "
        "for a mirror); without it only local models are used",
    )
    reasoner.add_argument("--device", default=None, help="reasoner device: cuda, mps or cpu (default: best available)")
    reasoner.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens per answer")
    reasoner.add_argument(
        "--reasoner-timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=None,
        help="openai: reasoners: the total time one answer may take, retries and keep-alives included "
        "(default 300); past it, exit 4",
    )
    reasoner.add_argument(
        "--view",
        metavar="ORIENTATION,INDEX",
        default=None,
        help="the slice the user is looking at, e.g. coronal,250 (axial: K, coronal: J, sagittal: I): questions "
        "about 'this slice' are answered on it, and its targets are segmented and propagated in that orientation",
    )


# --- argument parsing helpers -------------------------------------------------------------------------------


def _positive_seconds(text: str) -> float:
    """argparse type of ``--reasoner-timeout``: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of seconds (e.g. 600)")
    return value


def _ints(text: str, what: str, counts: Sequence[int], form: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"{what} '{text}' is not a list of whole numbers: write it as {form}.") from None
    if len(values) not in counts:
        raise InputError(f"{what} '{text}' has {len(values)} values: write it as {form}.")
    return values


def parse_prompt(box: str | None, points: Sequence[str]):
    """Turn ``--box``/``--point`` texts into one ``VoxelPrompt`` (or None when neither was given)."""
    from .pipeline import VoxelPrompt

    if box is None and not points:
        return None
    slices: set[int] = set()
    box_ijij = None
    if box is not None:
        i0, j0, i1, j1, k = _ints(box, "--box", (5,), "I0,J0,I1,J1,K")
        box_ijij = (i0, j0, i1, j1)
        slices.add(k)
    pts: list[tuple[int, int]] = []
    labels: list[int] = []
    for text in points:
        values = _ints(text, "--point", (3, 4), "I,J,K or I,J,K,0|1")
        label = values[3] if len(values) == 4 else 1
        if label not in (0, 1):
            raise InputError(f"--point '{text}' ends in {label}: the label must be 1 (foreground) or 0 (background).")
        pts.append((values[0], values[1]))
        labels.append(label)
        slices.add(values[2])
    if len(slices) > 1:
        raise InputError(
            f"the prompt spans slices {sorted(slices)}: --box and --point must all be on the same slice K."
        )
    return VoxelPrompt(k=slices.pop(), box=box_ijij, points=tuple(pts), labels=tuple(labels))


def parse_view(text: str | None):
    """``--view coronal,250`` as a ``CurrentView`` (None when not given)."""
    if text is None:
        return None
    from .reasoning.views import CurrentView

    parts = [p.strip().lower() for p in text.split(",")]
    if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
        raise InputError(f"--view '{text}' must be ORIENTATION,INDEX such as axial,10 or coronal,250.")
    if int(parts[1]) < 0:
        raise InputError(f"--view '{text}': the slice index must be 0 or more.")
    return CurrentView(parts[0], int(parts[1]))  # type: ignore[arg-type]  # CurrentView checks the orientation


def prepare_out_dir(out: Path, force: bool) -> None:
    """Refuse to mix results into a non-empty folder unless asked to (nothing is deleted either way)."""
    from .atomic import STAGING_PREFIX
    from .output import OUTPUT_FILES

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: give a folder.")
    # a hidden staging folder is the leftover of a run that was killed mid-write: never a result, never in the way
    if out.is_dir() and any(not p.name.startswith(STAGING_PREFIX) for p in out.iterdir()) and not force:
        raise InputError(
            f"the output folder {out} is not empty: choose another --out, or add --force to write into it."
        )
    for name in OUTPUT_FILES:  # checked now, so a model never runs for outputs that could not be put in place
        if (out / name).is_dir() and not (out / name).is_symlink():
            raise InputError(
                f"{out} holds a folder named {name} where this run writes a file: move or rename that folder, "
                "or choose another --out."
            )
    out.mkdir(parents=True, exist_ok=True)


# --- commands -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AskOptions:
    """What ``ask`` does besides the prompt; ``demo`` fills it in itself."""

    out: Path
    question: str | None = None
    label: str = "Segment 1"
    window: str | None = None
    segmenter: str = "litemedsam"
    propagate: bool = True
    assign_uids: bool = False  # blank source UIDs get ones derived from the content hash (export/assigned_uids.py)


def read_volume(source, series_uid: str | None):
    """Read the volume, saying so first (a compressed series takes seconds). The segmenter is opened only after the
    checks that need the volume passed: a model still opening on a thread when a check fails could abort the exit."""
    from .volume import load_volume

    status(f"reading {source}...")
    t0 = time.perf_counter()
    volume = load_volume(source, series_uid=series_uid)
    return volume, {"load_s": time.perf_counter() - t0}


def cmd_ask(args: argparse.Namespace) -> int:
    from .segmentation.factory import check_spec

    if args.refine is not None or args.erase is not None:
        return cmd_refine(args)
    prompt = parse_prompt(args.box, args.point)
    if prompt is None and not args.question:
        raise InputError(
            "nothing to segment: ask a QUESTION (answered by --reasoner) or give a prompt with "
            "--box I0,J0,I1,J1,K and/or --point I,J,K[,0|1]."
        )
    check_spec(args.segmenter, box=prompt is None or prompt.box is not None)  # before any model starts loading
    if prompt is None:
        from .reasoning.spec import check_spec_form

        check_spec_form(args.reasoner or DEFAULT_REASONER_SPEC)
    prepare_out_dir(args.out, args.force)
    options = AskOptions(
        out=args.out,
        question=args.question,
        label=args.label or "Segment 1",
        window=args.window,
        segmenter=args.segmenter,
        propagate=not args.no_propagate,
        assign_uids=args.assign_uids,
    )
    volume, timings = read_volume(args.input, args.series)
    if prompt is not None and args.session is None:
        run_ask(volume, prompt, options, timings)
        return EXIT_OK
    from .conversation import ReasonerOptions, run_round_ask

    reasoner_options = ReasonerOptions(
        spec=args.reasoner or DEFAULT_REASONER_SPEC,
        allow_remote=args.allow_remote,
        allow_download=args.allow_download,
        device=args.device,
        max_new_tokens=args.max_new_tokens,
        current_view=parse_view(args.view),
        timeout_s=args.reasoner_timeout,
    )
    run_round_ask(volume, prompt, options, reasoner_options, args.session, timings)
    return EXIT_OK


def parse_correction(args: argparse.Namespace):
    """``--refine E1`` with ``--box`` (add) or ``--erase`` (remove), ``--point``s and ``--view``, as a ``Correction``."""
    from dataclasses import replace as _replace

    from .correction import Correction

    if args.refine is None:
        raise InputError("--erase corrects an entity: give --refine ENTITY and --session DIR with it.")
    if args.session is None:
        raise InputError(f"--refine {args.refine} needs --session DIR: the session that holds the entity.")
    if (args.box is None) == (args.erase is None):
        raise InputError(
            f"--refine {args.refine} needs exactly one of --box I0,J0,I1,J1,K (add: re-segment that slice) and "
            "--erase I0,J0,I1,J1,K (remove what lies in the box)."
        )
    if args.question:
        raise InputError("--refine takes no QUESTION: the box says what to correct.")
    erase = args.erase is not None
    prompt = parse_prompt(args.erase if erase else args.box, args.point)
    view = parse_view(args.view)
    if view is not None:
        if view.slice != prompt.k:
            raise InputError(
                f"--view {args.view} is slice {view.slice} but the box is on slice {prompt.k}: give the box's last "
                "value as the view's slice index."
            )
        prompt = _replace(prompt, orientation=view.orientation)
    return Correction(prompt, erase=erase)


def cmd_refine(args: argparse.Namespace) -> int:
    """``ask INPUT --session DIR --refine E1 (--box | --erase) …``: one correction round; OUT gets the entity."""
    from .dialogue import open_session
    from .dialogue.refine import refine_entity
    from .pipeline import check_prompt
    from .segmentation.factory import check_spec, create_segmenter, default_store_root
    from .volume import default_window, window_by_name

    correction = parse_correction(args)
    check_spec(args.segmenter)
    if not (args.session / "session.json").is_file():
        raise InputError(f"there is no session in {args.session}: run `ask … --session {args.session}` first.")
    prepare_out_dir(args.out, args.force)
    volume, timings = read_volume(args.input, args.series)
    session = open_session(args.session, volume, path=volume.source.path or None)
    entity = session.entity(args.refine)  # an unknown entity is refused before any model loads
    check_prompt(volume, correction.prompt)
    window = window_by_name(args.window, volume) if args.window else default_window(volume)
    status(f"loading the segmenter ({args.segmenter})...")
    t0 = time.perf_counter()
    segmenter = create_segmenter(args.segmenter, embedding_store=default_store_root())
    timings["model_load_s"] = time.perf_counter() - t0
    status(f"correcting {entity.id} on slice {correction.prompt.k}")
    from .conversation import write_round_outputs
    from .dialogue.store import rolled_back_on_failure

    options = AskOptions(out=args.out, label=entity.label, window=args.window, segmenter=args.segmenter)
    with rolled_back_on_failure(session.folder):  # the correction and its outputs succeed or fail together
        rnd = refine_entity(session, volume, segmenter, window, entity.id, correction)
        timings.update(rnd.timings)
        write_round_outputs(volume, session, rnd, options, window, segmenter, None, [], timings)
    return EXIT_OK


def run_ask(volume, prompt, options: AskOptions, timings: dict[str, float]) -> dict:
    """Segment, write outputs and print the summary; shared by ``ask`` and ``demo``."""
    from .pipeline import check_prompt, segment_target
    from .volume import default_window, window_by_name

    window = window_by_name(options.window, volume) if options.window else default_window(volume)
    check_prompt(volume, prompt, window)
    from .segmentation.factory import create_segmenter, default_store_root

    status(f"loading the segmenter ({options.segmenter})...")
    t0 = time.perf_counter()
    segmenter = create_segmenter(options.segmenter, embedding_store=default_store_root())
    timings["model_load_s"] = time.perf_counter() - t0
    status(f"segmenting slice {prompt.k}" + (", then following the structure through the slices" * options.propagate))
    with PropagationBar(enabled=options.propagate) as progress:
        target = segment_target(
            volume, segmenter, window, prompt, label=options.label, propagate_3d=options.propagate, progress=progress
        )
    timings.update(target.timings)
    from .export.dicom_seg import SegmentSpec
    from .output import print_summary, write_ask_outputs
    from .result import target_record

    segments = [SegmentSpec(number=target.value, label=target.label, mask=target.mask, semiautomatic=True)]
    result = write_ask_outputs(
        volume, segments, [target_record(volume, target)], options, window, segmenter.identity, timings
    )
    print_summary(result, options.out)
    return result


def cmd_sample(args: argparse.Namespace) -> int:
    from .sample import build_sample

    status(f"preparing the sample DICOM series in {args.out} (built on the first run only)...")
    folder = build_sample(args.out)
    print(f"sample DICOM series in {folder}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .pipeline import VoxelPrompt
    from .sample import build_sample, read_sample_description

    status(f"preparing the sample DICOM series in {args.sample_dir} (built on the first run only)...")
    dicom_dir = build_sample(args.sample_dir)
    info = read_sample_description(args.sample_dir)
    i0, j0, i1, j1, k = (info["box"][key] for key in ("i0", "j0", "i1", "j1", "k"))
    structure = info.get("structure", "Segment 1")
    print(f"sample: {dicom_dir}")
    print(f"prompt: --box {i0},{j0},{i1},{j1},{k} ({structure})")
    prepare_out_dir(args.out, force=True)
    volume, timings = read_volume(dicom_dir, None)
    options = AskOptions(out=args.out, label=structure, segmenter=args.segmenter)
    result = run_ask(volume, VoxelPrompt(k=k, box=(i0, j0, i1, j1)), options, timings)
    print(demo_next_steps(PROG, dicom_dir, args.out, result, f"{i0},{j0},{i1},{j1},{k}"))
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    import json

    from .reasoning.models import list_models, pull_model

    if args.models_command == "pull":
        folder = pull_model(args.name, args.cache_dir, progress=True)
        print(f"{args.name}: ready in {folder}")
        return EXIT_OK
    rows = list_models(args.cache_dir)
    if args.json:
        for row in rows:
            print(json.dumps(row.to_dict()))
        return EXIT_OK
    print(f"{'name':28} {'present':8} {'size':>9} {'licence':24} hugging face id")
    for row in rows:
        size_gb = (row.size_bytes / 1e9) if row.present else (row.known.size_gb if row.known else 0.0)
        licence = row.known.licence if row.known else "?"
        print(f"{row.name:28} {'yes' if row.present else 'no':8} {size_gb:>7.1f}GB {licence:24} {row.hf_id}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .export.command import run_export

    return run_export(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from .server.cli import run_serve

    return run_serve(args)


def cmd_eval(args: argparse.Namespace) -> int:
    from .conversation import ReasonerOptions
    from .evaluation.layouts import open_dataset
    from .evaluation.runner import DEFAULT_CORRECTIONS, MODES, REASONER_MODES, SAMPLES_FILE, EvalOptions, run_eval

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
            spec=args.reasoner or DEFAULT_REASONER_SPEC,
            allow_remote=args.allow_remote,
            allow_download=args.allow_download,
            device=args.device,
            max_new_tokens=args.max_new_tokens,
            stream=False,
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


COMMANDS = {
    "ask": cmd_ask,
    "demo": cmd_demo,
    "eval": cmd_eval,
    "export": cmd_export,
    "models": cmd_models,
    "sample": cmd_sample,
    "serve": cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    _tolerant_stdout()
    parser = build_parser()
    args, extra = parser.parse_known_args(_joined_negative_values(sys.argv[1:] if argv is None else list(argv)))
    if args.command == "ask" and args.question is None and len(extra) == 1 and not extra[0].startswith("-"):
        args.question = extra[0]  # `ask INPUT --opt X "question"`: argparse cannot place a late optional positional
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args)
    except MedSegError as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        _settle_preloads()
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            f"{PROG}: interrupted; outputs already written are complete, nothing half-written was kept.",
            file=sys.stderr,
        )
        return 130
    except OSError as exc:
        if args.debug:
            raise
        print(
            f"{PROG}: error: a file could not be read or written ({exc}): check the path, free space and permissions.",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except MemoryError:
        if args.debug:
            raise
        print(f"{PROG}: error: out of memory: close other programs or use a smaller volume.", file=sys.stderr)
        return EXIT_MODEL
    except Exception as exc:  # the last line of defence: one sentence, never a traceback
        if args.debug:
            raise
        print(
            f"{PROG}: error: unexpected internal error ({type(exc).__name__}: {exc}); "
            "run again with --debug for the traceback and report it.",
            file=sys.stderr,
        )
        _settle_preloads()
        return 1


_LIST_OPTIONS = ("--box", "--point", "--erase")  # values that are comma-separated numbers, possibly negative


def _joined_negative_values(argv: list) -> list:
    """``--box -5,0,10,10,3`` as ``--box=-5,0,10,10,3``: argparse takes a value starting with '-' for an option
    ("expected one argument"), so the prompt's own check can say what is wrong with the numbers."""
    out: list = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in _LIST_OPTIONS and isinstance(nxt, str) and len(nxt) > 1 and nxt[0] == "-" and nxt[1].isdigit():
            out.append(f"{arg}={nxt}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def _tolerant_stdout() -> None:
    """Print a file name that is not UTF-8 (legal on Linux) escaped, as stderr does, instead of failing after the
    outputs were written."""
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")


def _settle_preloads() -> None:
    """Before an error exit, let a segmenter still opening on a preload thread finish: exiting while it is inside
    OpenVINO aborts the process ("terminate called without an active exception", exit 134) instead of the documented
    exit code. Only the dialogue path preloads (while the reasoner loads); its checks run before that."""
    factory = sys.modules.get("MedSegReasoning.segmentation.factory")
    if factory is not None:
        factory.settle_preloads()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
