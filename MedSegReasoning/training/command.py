"""The ``train`` command: its options (``add_train_parser``, hooked into the CLI's parser) and its run
(``run_train_command``), as ``evaluation/command.py`` does for ``eval``.

Checks run in the order that fails fastest: the training packages, the config (and vLLM with its GPU when the config
asks for it), the output folder, the base model's folder, the dataset and its samples; the output folder is changed
(``--force`` clears the previous run) and the model loads only when all of them passed.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..wire.errors import EXIT_OK, InputError

METHODS = ("sft", "grpo")
TRAIN_EPILOG = """methods:
  sft   supervised fine-tuning on answers built from the truth (box and two points inside the mask, written in the
        model's coordinate convention as <think>...</think><answer>{json}</answer>)
  grpo  reinforcement learning (GRPO): the model answers each question several times and is moved towards the
        answers the rewards (format, box IoU, points, mask Dice, key slice) score best

LoRA (peft) by default: only small adapter matrices are trained, then merged into the base (merge: false in the
config keeps the adapter apart, with a pointer to its base). --full trains every weight instead (much more memory).

datasets (as eval reads them, --layout auto detects them): U-MRG parquet, MR-MedSeg dialogues, or a folder of
volumes + label maps + questions.jsonl; a 3D question teaches both calls the reasoner makes at run time (the
key-slice montage, then the key slice), rendered by the same code.

outputs (in --out): the model (loads with --reasoner hf:OUT), medseg_reasoner.json (prompt style and version,
coordinate convention), training.json (the run's settings), logs.jsonl (one line per logged step), curves.png,
checkpoints/ (--resume continues from the last one); while it runs, dataset-cache/ (the rendered rows on disk, one
sample read at a time: memory does not grow with the dataset; removed at the end)

config (--config FILE, YAML or JSON; docs/training.md lists every key): steps, batch, learning_rate, warmup_steps,
lr_scheduler, lora {r, alpha, dropout, targets}, rewards {format, box, points, mask, key_slice}, generations, seed,
prompt_style, prompt_version, vllm (grpo: colocate or server; needs vllm and a CUDA GPU), ...

"""


def add_train_parser(sub: Any, *, exit_codes_help: str) -> None:
    """``train sft|grpo DATASET --base hf:PATH --out DIR``: fine-tune a Qwen-VL reasoner on a labelled dataset."""
    tr = sub.add_parser(
        "train",
        help="fine-tune the reasoner on a labelled dataset (SFT or GRPO; LoRA by default)",
        description="Fine-tune a Qwen-VL reasoner on a labelled dataset with TRL: supervised (sft) or by reinforcement "
        "(grpo). LoRA by default (--full: every weight). Needs the train extra: pip install "
        "'medseg-reasoning[train]'.",
        epilog=TRAIN_EPILOG + exit_codes_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("method", metavar="METHOD", choices=METHODS, help="sft or grpo")
    tr.add_argument("dataset", metavar="DATASET", type=Path, help="parquet file, MR-MedSeg JSON, or a folder")
    tr.add_argument(
        "--base",
        metavar="hf:PATH",
        required=True,
        help="the model to start from: hf:<local Qwen2-VL / Qwen2.5-VL / Qwen3-VL folder or downloaded id>",
    )
    tr.add_argument("--out", type=Path, required=True, help="output folder for the trained model, logs and checkpoints")
    tr.add_argument(
        "--full", action="store_true", help="full fine-tuning of every weight instead of LoRA (the default)"
    )
    tr.add_argument("--config", type=Path, default=None, metavar="FILE", help="settings file, YAML or JSON")
    tr.add_argument("--layout", default="auto", help="dataset layout: auto (default), umrg, mrmedseg or folder")
    tr.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint (after a kill)"
    )
    tr.add_argument(
        "--force", action="store_true", help="start over in a non-empty --out (the previous run's outputs are removed)"
    )


def run_train_command(args: argparse.Namespace) -> int:
    """``train``: check everything cheap first, then load, train, save, log and plot."""
    from ..console import status
    from ..evaluation.layouts import open_dataset
    from .checkpoint import prepare_output, read_training_record
    from .config import load_config
    from .runner import require_training_packages, require_vllm, resolve_base

    require_training_packages()
    out: Path = args.out
    previous = read_training_record(out) if args.resume else None
    config = load_config(args.config) if args.config is not None or previous is None else _recorded_config(previous)
    config.check_for(args.method)
    require_vllm(config)  # vLLM and its GPU, before anything is written or loaded (TRL would fail after the load)
    if previous is not None and bool(previous.get("full")) != bool(args.full):
        raise InputError(
            f"--resume: the run in {out} was started {'with' if previous.get('full') else 'without'} --full: give "
            "the same choice to continue it."
        )
    resume_from = prepare_output(out, method=args.method, force=args.force, resume=args.resume)
    base, known, model_type = resolve_base(args.base)
    dataset = open_dataset(args.dataset, args.layout)
    status(f"preparing the training samples of {dataset.path} ({dataset.layout} layout)...")
    run = _prepare(args, config, base, known, model_type, dataset)
    try:
        return _run(args, config, base, model_type, run, resume_from)
    finally:  # the rows' cache is this run's only: the next run (--resume too) writes its own
        _remove_cache(out)


def _run(args, config, base: Path, model_type: str, run: dict[str, Any], resume_from: Path | None) -> int:
    """Record, load, train, save: after every check has passed and the rows are written."""
    from ..console import status
    from .checkpoint import CHECKPOINTS_DIR, LOGS_FILE, TRAINING_FILE

    out: Path = args.out
    record = _training_record(args, config, base, run, resume_from)
    from .checkpoint import begin_output, write_json

    if resume_from is None:  # only now: a wrong base or dataset never cost the previous run's outputs (--force)
        begin_output(out, force=args.force)
    write_json(out / TRAINING_FILE, record)
    if resume_from is not None:
        from .checkpoint import checkpoint_step
        from .logs import truncate_log

        truncate_log(out / LOGS_FILE, checkpoint_step(resume_from))
        status(f"resuming from {resume_from.relative_to(out)}")
    from .runner import resource_errors

    with resource_errors():  # loading the model onto the GPU can run out of memory before the first step
        trainer = _build_trainer(args, config, base, model_type, run, out)
    status(f"training ({args.method}, {'full' if args.full else 'LoRA'}) for {config.steps} steps in {out}...")
    t0 = time.perf_counter()
    _train(trainer, resume_from, out)
    kind = _finish(trainer, run, out, record, config, base, time.perf_counter() - t0)
    print(
        f"trained {args.method} for {trainer.state.global_step} steps on {len(run['samples'])} samples "
        f"({_skipped_line(run)}); the {kind} model is in {out} (use --reasoner hf:{out}); logs: {out / LOGS_FILE}; "
        f"checkpoints: {out / CHECKPOINTS_DIR}"
    )
    return EXIT_OK


def _remove_cache(out: Path) -> None:
    import shutil

    from .stream import DATASET_CACHE_DIR

    shutil.rmtree(out / DATASET_CACHE_DIR, ignore_errors=True)


def _recorded_config(record: dict[str, Any]):
    from .config import TrainConfig

    data = record.get("config")
    return TrainConfig.from_mapping(data if isinstance(data, dict) else {}, "the recorded config (training.json)")


def _prepare(args, config, base: Path, known, model_type: str, dataset) -> dict[str, Any]:
    """Processor, convention, prompt set, samples and dataset rows: everything before the model loads. The rows are
    written to ``OUT/dataset-cache`` (``stream.build_rows``); a dataset without a usable sample leaves none."""
    from ..reasoning.coords import CONVENTION_BY_MODEL_TYPE, get_convention
    from ..reasoning.hf import processor_resize_rule
    from ..reasoning.prompts import PromptSet, prompt_set
    from .runner import load_processor
    from .stream import DATASET_CACHE_DIR, build_rows

    processor = load_processor(base)
    convention_name = config.convention or (known.convention if known else None) or CONVENTION_BY_MODEL_TYPE[model_type]
    convention = get_convention(convention_name, processor_resize_rule(processor))
    prompts = prompt_set(config.prompt_style or (known.prompt_style if known else "contract"))
    if config.prompt_version is not None:
        prompts = PromptSet(prompts.style, config.prompt_version)
        try:  # a version not shipped for this style fails before any work
            for task in ("pick_slice", "locate"):
                prompts.template(task)
        except InputError:
            raise InputError(
                f"prompt_version '{config.prompt_version}' is not shipped for the '{prompts.style}' prompt style: "
                "leave it out (the current version) or use brief-v1 with prompt_style: segzero (docs/training.md)."
            ) from None
    # one unit's pixels at a time, into Arrow files in OUT (memory-mapped); the samples kept hold no pixels, and the
    # mask reward reads a sample's volume again when it scores it (stream.UnitVolumes)
    rows, found = build_rows(
        dataset, prompts, convention, with_answer=args.method == "sft", cache_dir=args.out / DATASET_CACHE_DIR
    )
    samples = {s.id: s for s in found.samples}
    return {
        "processor": processor,
        "convention": convention,
        "prompts": prompts,
        "samples": samples,
        "skipped": found,
        "rows": rows,
    }


def _training_record(args, config, base: Path, run: dict[str, Any], resume_from: Path | None) -> dict[str, Any]:
    from .. import __version__

    versions = {}
    for name in ("trl", "peft", "transformers", "torch"):
        module = sys.modules.get(name) or __import__(name)
        versions[name] = getattr(module, "__version__", "?")
    return {
        "method": args.method,
        "full": bool(args.full),
        "base": str(base.resolve()),
        "dataset": str(Path(args.dataset).resolve()),
        "layout": args.layout,
        "config": config.to_dict(),
        "convention": run["convention"].name,
        "prompt_style": run["prompts"].style,
        "prompt_version": run["prompts"].version,
        "samples": len(run["samples"]),
        "samples_by_task": _count_tasks(run["samples"].values()),
        "skipped": dict(run["skipped"].skipped),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_from": str(resume_from) if resume_from is not None else None,
        "medseg_reasoning": __version__,
        "versions": versions,
    }


def _count_tasks(samples) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.task] = counts.get(sample.task, 0) + 1
    return counts


def _build_trainer(args, config, base: Path, model_type: str, run: dict[str, Any], out: Path):
    from ..console import status
    from .checkpoint import LOGS_FILE
    from .logs import make_callback
    from .runner import load_model, use_bf16

    bf16 = use_bf16(config)
    status(f"loading the base model {base}...")
    model = load_model(base, model_type, bf16)
    callbacks = [make_callback(out / LOGS_FILE)]
    common = dict(full=args.full, bf16=bf16, callbacks=callbacks)
    if args.method == "sft":
        from .sft import build_sft_trainer

        return build_sft_trainer(model, run["processor"], run["rows"], config, out, **common)
    from .grpo import build_grpo_trainer, build_mask_reward
    from .reward_funcs import RewardAssembly

    rewards = RewardAssembly(
        run["samples"],
        run["convention"],
        config.rewards,
        slice_only_picks=run["prompts"].style == "contract",
        mask_reward=build_mask_reward(config, run["samples"], run["convention"]),
    )
    return build_grpo_trainer(model, run["processor"], run["rows"], rewards, config, out, **common)


def _train(trainer, resume_from: Path | None, out: Path) -> None:
    from .checkpoint import last_checkpoint
    from .runner import run_trainer

    try:
        run_trainer(trainer, resume_from)
    except KeyboardInterrupt:
        checkpoint = last_checkpoint(out)
        where = f"from {checkpoint.name}" if checkpoint is not None else "(no checkpoint was finished: it starts over)"
        print(
            f"training stopped at step {trainer.state.global_step}: run the same command with --resume to continue "
            f"{where}.",
            file=sys.stderr,
        )
        raise


def _finish(trainer, run: dict[str, Any], out: Path, record: dict[str, Any], config, base: Path, seconds: float) -> str:
    """Save the model with its runtime record, plot the curves, complete ``training.json``."""
    from ..console import status
    from .checkpoint import CURVES_FILE, LOGS_FILE, TRAINING_FILE, save_model, write_json
    from .logs import plot_curves
    from .runner import load_processor, resource_errors

    status("saving the trained model...")
    runtime = {
        "convention": record["convention"],
        "prompt_style": record["prompt_style"],
        "prompt_version": record["prompt_version"],
        "method": record["method"],
        "trained_from": record["base"],
        "chat_template_sha256": _chat_template_digest(run["processor"]),
    }
    with resource_errors(lambda: trainer.state.global_step):
        # the base's processor as it is on disk (training may have changed its padding side): the runtime's
        kind = save_model(trainer, load_processor(base), out, merge=config.merge, record=runtime, base=base)
    plotted = plot_curves(out / LOGS_FILE, out / CURVES_FILE, f"train {record['method']}: {Path(record['base']).name}")
    write_json(
        out / TRAINING_FILE,
        {
            **record,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "steps": trainer.state.global_step,
            "train_seconds": round(seconds, 1),
            "weights": kind,
            "curves": CURVES_FILE if plotted else None,
        },
    )
    return kind


def _chat_template_digest(processor: Any) -> str | None:
    """The digest of the chat template trained with (the template itself is saved with the processor)."""
    import hashlib

    template = getattr(processor, "chat_template", None)
    return hashlib.sha256(template.encode("utf-8")).hexdigest() if isinstance(template, str) else None


def _skipped_line(run: dict[str, Any]) -> str:
    skipped = run["skipped"]
    return f"skipped {skipped.skipped_text()}" if skipped.skipped else "none skipped"
