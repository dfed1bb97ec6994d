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

from . import __version__
from .errors import EXIT_BAD_INPUT, EXIT_MODEL, EXIT_OK, EXIT_SERVICE, InputError, MedSegError

PROG = "medseg-reasoning"

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}  success
  {EXIT_BAD_INPUT}  bad input or usage (the message says what to fix)
  {EXIT_MODEL}  model problem (weights missing or corrupt, segmenter or reasoner failed)
  {EXIT_SERVICE}  an external service is unreachable or refusing
"""

ASK_EPILOG = """indices:
  I is the column, J the row and K the slice, 0-based voxel indices of the input; K counts slices after
  sorting along the slice normal (row direction x column direction), as ITK and SimpleITK order them.
  Box corners are inclusive. --box and --point combine into one prompt on one slice.

outputs (in --out, default ./medseg-out):
  mask.nii.gz   uint8 label map on exactly the input's grid: 0 background, target n -> value n
  seg.dcm       DICOM-SEG referencing the source series (DICOM input only)
  result.json   what was done and found (schema: docs/result-schema.md)

""" + EXIT_CODES_HELP


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one sentence with exit code 2 (its default code, kept)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


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

    sample = sub.add_parser("sample", help="only build the sample DICOM series", epilog=EXIT_CODES_HELP)
    sample.add_argument("out", type=Path, nargs="?", default=Path("medseg-sample"), help="folder to build it in")
    return parser


def _add_ask_arguments(ask: argparse.ArgumentParser) -> None:
    ask.add_argument("input", metavar="INPUT", help="DICOM folder or file, .nii/.nii.gz or .nrrd")
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
    ask.add_argument("--label", default=None, help="name of the segmented structure (default: Segment 1)")
    ask.add_argument("--no-propagate", action="store_true", help="segment the key slice only")
    ask.add_argument("--window", default=None, help="intensity window: ct-soft-tissue, ct-lung, ct-bone, ct-brain, auto")
    ask.add_argument("--segmenter", default="litemedsam", help="litemedsam (default) or sam:PATH / medsam:PATH")
    ask.add_argument("--out", type=Path, default=Path("medseg-out"), help="output folder (default: ./medseg-out)")
    ask.add_argument("--force", action="store_true", help="write into a non-empty --out folder")


# --- argument parsing helpers -------------------------------------------------------------------------------


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


def prepare_out_dir(out: Path, force: bool) -> None:
    """Refuse to mix results into a non-empty folder unless asked to (nothing is deleted either way)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: give a folder.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"the output folder {out} is not empty: choose another --out, or add --force to write into it.")
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


def cmd_ask(args: argparse.Namespace) -> int:
    from .volume import load_volume

    prompt = parse_prompt(args.box, args.point)
    if prompt is None:
        if args.question:
            raise InputError(
                "answering a question needs a reasoner, and none is available in this version: "
                "give an explicit prompt with --box I0,J0,I1,J1,K (and optionally --point I,J,K[,0|1])."
            )
        raise InputError("nothing to segment: give a prompt with --box I0,J0,I1,J1,K and/or --point I,J,K[,0|1].")
    prepare_out_dir(args.out, args.force)
    options = AskOptions(
        out=args.out,
        question=args.question,
        label=args.label or "Segment 1",
        window=args.window,
        segmenter=args.segmenter,
        propagate=not args.no_propagate,
    )
    t0 = time.perf_counter()
    volume = load_volume(args.input, series_uid=args.series)
    run_ask(volume, prompt, options, {"load_s": time.perf_counter() - t0})
    return EXIT_OK


def run_ask(volume, prompt, options: AskOptions, timings: dict[str, float]) -> dict:
    """Segment, write outputs and print the summary; shared by ``ask`` and ``demo``."""
    from .pipeline import check_prompt, segment_target
    from .volume import default_window, window_by_name

    window = window_by_name(options.window, volume) if options.window else default_window(volume)
    check_prompt(volume, prompt, window)
    from .segmentation.factory import create_segmenter

    t0 = time.perf_counter()
    segmenter = create_segmenter(options.segmenter)
    timings["model_load_s"] = time.perf_counter() - t0
    with _progress_bar(enabled=options.propagate) as progress:
        target = segment_target(
            volume, segmenter, window, prompt, label=options.label, propagate_3d=options.propagate, progress=progress
        )
    timings.update(target.timings)
    return write_outputs(volume, [target], options, window, segmenter.identity, timings)


def write_outputs(volume, targets, options: AskOptions, window, identity, timings: dict[str, float]) -> dict:
    """Write mask.nii.gz, seg.dcm (DICOM input) and result.json, each atomically, then print the summary."""
    import numpy as np

    from .atomic import staged_outputs
    from .export.dicom_seg import AlgorithmInfo, SegmentSpec, SourceNotReferenceableError, write_dicom_seg
    from .result import build_result, write_result
    from .volume.itk_io import write_label_image

    t0 = time.perf_counter()
    labelmap = np.zeros(volume.shape, dtype=np.uint8)
    for target in targets:
        labelmap[target.mask] = target.value
    outputs: dict[str, str | None] = {"mask": "mask.nii.gz", "seg": None, "result": "result.json"}
    warnings: list[str] = []
    with staged_outputs(options.out) as staging:
        write_label_image(staging / "mask.nii.gz", labelmap, volume.geometry)
        if volume.source.dicom is not None:
            segments = [SegmentSpec(number=t.value, label=t.label, mask=t.mask, semiautomatic=True) for t in targets]
            algorithm = AlgorithmInfo(identity.name, _algorithm_version(identity))
            try:
                write_dicom_seg(volume, segments, staging / "seg.dcm", algorithm)
                outputs["seg"] = "seg.dcm"
            except SourceNotReferenceableError as exc:  # the mask is still good: keep it, say why no SEG
                warnings.append(f"no seg.dcm: {exc}")
        timings["export_s"] = time.perf_counter() - t0
        result = build_result(
            volume,
            question=options.question,
            targets=targets,
            window=window,
            segmenter=identity,
            timings=timings,
            outputs=outputs,
            propagate=options.propagate,
            warnings=warnings,
        )
        write_result(staging / "result.json", result)
    _print_summary(result, options.out)
    return result


def _algorithm_version(identity) -> str:
    return f"{__version__} weights sha256:{identity.sha256[:12]}"


def _print_summary(result: dict, out: Path) -> None:
    for t in result["targets"]:
        rng = t["slice_range"]
        print(
            f"{t['label']}: {t['voxels']} voxels, {t['volume_ml']:.1f} mL, slices {rng[0]}-{rng[1]}, "
            f"key slice {t['key_slice']}, score {t['score']:.2f}"
        )
        if t["propagation"]:
            for direction, why in t["propagation"]["stopped"].items():
                print(f"  propagation {direction}: stopped at {why}")
    written = [name for name in result["outputs"].values() if name]
    print(f"wrote {', '.join(written)} to {out}")
    for warning in result["warnings"]:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)


class _progress_bar:
    """A tqdm bar on stderr fed by the propagation's (done, total) callback."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return None
        return self._update

    def _update(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc="propagating", unit="slice", file=sys.stderr, leave=False)
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_sample(args: argparse.Namespace) -> int:
    from .sample import build_sample

    folder = build_sample(args.out)
    print(f"sample DICOM series in {folder}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .pipeline import VoxelPrompt
    from .sample import build_sample, read_sample_description
    from .volume import load_volume

    dicom_dir = build_sample(args.sample_dir)
    info = read_sample_description(args.sample_dir)
    i0, j0, i1, j1, k = (info["box"][key] for key in ("i0", "j0", "i1", "j1", "k"))
    structure = info.get("structure", "Segment 1")
    print(f"sample: {dicom_dir}")
    print(f"prompt: --box {i0},{j0},{i1},{j1},{k} ({structure})")
    prepare_out_dir(args.out, force=True)
    t0 = time.perf_counter()
    volume = load_volume(dicom_dir)
    options = AskOptions(out=args.out, label=structure, segmenter=args.segmenter)
    run_ask(volume, VoxelPrompt(k=k, box=(i0, j0, i1, j1)), options, {"load_s": time.perf_counter() - t0})
    return EXIT_OK


COMMANDS = {"ask": cmd_ask, "demo": cmd_demo, "sample": cmd_sample}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MedSegError as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; outputs already written are complete, nothing half-written was kept.", file=sys.stderr)
        return 130
    except OSError as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: a file could not be read or written ({exc}): check the path, free space and permissions.", file=sys.stderr)
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
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
