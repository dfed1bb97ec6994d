"""The ``medseg-reasoning`` argument parser: commands, options, help texts and exit codes (``cli.py`` runs them).

The subcommands that live with their engine (``export``, ``serve``, ``eval``) add their own parsers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from . import PROG, __version__
from .ask_options import positive_seconds
from .wire.errors import EXIT_BAD_INPUT, EXIT_MODEL, EXIT_OK, EXIT_SERVICE, EXIT_STUDIES_FAILED

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}  success
  {EXIT_BAD_INPUT}  bad input or usage (the message says what to fix)
  {EXIT_MODEL}  model problem (weights missing or corrupt, segmenter or reasoner failed)
  {EXIT_SERVICE}  an external service is unreachable or refusing (a PACS, a reasoner server, a Ray cluster)
  {EXIT_STUDIES_FAILED}  batch: the run finished, but some studies failed (results.csv and report.html say why)
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

    def error(self, message: str) -> NoReturn:
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
    from .evaluation.command import add_eval_parser

    add_eval_parser(sub, exit_codes_help=EXIT_CODES_HELP, default_reasoner=DEFAULT_REASONER_SPEC)
    from .batch.command import add_batch_parser

    add_batch_parser(sub, exit_codes_help=EXIT_CODES_HELP, default_reasoner=DEFAULT_REASONER_SPEC)
    from .training.command import add_train_parser

    add_train_parser(sub, exit_codes_help=EXIT_CODES_HELP)
    return parser


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
        type=positive_seconds,
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
