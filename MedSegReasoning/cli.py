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
from pathlib import Path

from . import PROG
from .ask_options import AskOptions, parse_prompt
from .cli_args import DEFAULT_REASONER_SPEC, build_parser
from .console import PropagationBar, demo_next_steps, status
from .wire.errors import EXIT_BAD_INPUT, EXIT_MODEL, EXIT_OK, InputError, MedSegError


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


def _prepare_out_dir(out: Path, force: bool) -> None:
    from .output import prepare_out_dir

    prepare_out_dir(out, force)


# --- commands -------------------------------------------------------------------------------------------------


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
    _prepare_out_dir(args.out, args.force)
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
    _prepare_out_dir(args.out, args.force)
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
    _prepare_out_dir(args.out, force=True)
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
    from .evaluation.command import run_eval_command

    return run_eval_command(args, DEFAULT_REASONER_SPEC)


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch.command import run_batch_command

    return run_batch_command(args, DEFAULT_REASONER_SPEC)


def cmd_train(args: argparse.Namespace) -> int:
    from .training.command import run_train_command

    return run_train_command(args)


COMMANDS = {
    "ask": cmd_ask,
    "batch": cmd_batch,
    "demo": cmd_demo,
    "eval": cmd_eval,
    "export": cmd_export,
    "models": cmd_models,
    "sample": cmd_sample,
    "serve": cmd_serve,
    "train": cmd_train,
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
        code = COMMANDS[args.command](args)
        _settle_preloads()  # a segmenter opened ahead and not needed (a clarification) must not be cut off at exit
        return code
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
        _settle_preloads()
        return 130
    except OSError as exc:
        if args.debug:
            raise
        print(
            f"{PROG}: error: a file could not be read or written ({exc}): check the path, free space and permissions.",
            file=sys.stderr,
        )
        _settle_preloads()
        return EXIT_BAD_INPUT
    except MemoryError:
        if args.debug:
            raise
        print(f"{PROG}: error: out of memory: close other programs or use a smaller volume.", file=sys.stderr)
        _settle_preloads()
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
    exit code. Only the dialogue path preloads (while the reasoner loads); its checks run before that. The box path
    does not: its prompt checks need the volume's pixels (a uniform region), and nothing may load before them."""
    factory = sys.modules.get("MedSegReasoning.segmentation.factory")
    if factory is not None:
        factory.settle_preloads()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
