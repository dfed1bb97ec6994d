"""Issue #18's proof through the product: ``train sft`` on the synthetic grounding set, scored by
``eval --mode reasoner`` (the model loaded through ``create_reasoner("hf:OUT")``), against the best constant box.

Run from the project root::

    .venv/bin/python benchmarks/train_command_probe.py                      # the command recipe, 200 held-out
    .venv/bin/python benchmarks/train_command_probe.py --set steps=300 --set batch=16
    .venv/bin/python benchmarks/train_command_probe.py --step-cost          # seconds per step, per prompt

The dataset is ``support.grounding``'s set written as U-MRG parquet (a fixed pool of ``--pool`` images), the base is
the learning recipe's tiny Qwen2.5-VL (docs/training-probe.md) saved as a checkpoint, and both commands run as
subprocesses on one torch thread. Prints untrained / best-constant / trained held-out mean box IoU, the unreadable
answers, and the training seconds; ``--step-cost`` trains a few steps with each prompt (``segzero-v1``,
``segzero-brief-v1``) in the same run, so the cost of the product's long prompt is measured against the short one.
Writes ``benchmarks/_output/train_command_probe.json``. Findings: docs/training.md, "Proof that it learns".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing")]

from support.grounding import best_constant_box, make_grounding_set, parse_settings  # noqa: E402
from support.grounding_product import COMMAND_RECIPE, eval_box_iou, save_recipe_base, train_sft, write_umrg  # noqa: E402

HELD_OUT_SEED, TRAIN_SEED = 12345, 100


def _settings(pairs: list[str]) -> dict:
    return {**COMMAND_RECIPE, **parse_settings(pairs)}


def step_cost(root: Path, base: Path, steps: int) -> dict:
    """Seconds per step of ``steps`` steps with each prompt (model loading and saving included, divided out as
    much as a difference of two runs can: ``(t(2n) - t(n)) / n``)."""
    data = write_umrg(make_grounding_set(64, TRAIN_SEED), root / "cost")
    out = {}
    for version in (None, "brief-v1"):
        name = "segzero-v1" if version is None else "segzero-brief-v1"
        times = []
        for n in (steps, 2 * steps):
            settings = {**COMMAND_RECIPE, "steps": n, "prompt_version": version}
            times.append(train_sft(data, base, root / f"cost-{name}-{n}", settings))
        out[name] = round((times[1] - times[0]) / steps, 3)
        print(f"{name}: {out[name]:.3f} s per step (batch {COMMAND_RECIPE['batch']})", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a train config setting")
    parser.add_argument("--pool", type=int, default=4000, help="training images (a fixed pool)")
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--lora", action="store_true", help="LoRA instead of --full")
    parser.add_argument("--step-cost", action="store_true", help="only measure seconds per step for each prompt")
    parser.add_argument("--cost-steps", type=int, default=5)
    parser.add_argument(
        "--tokenizer", choices=("bytes", "prompt"), default="bytes", help="the base's tokenizer (support.reasoning)"
    )
    args = parser.parse_args()
    settings = _settings(args.set)
    with tempfile.TemporaryDirectory(prefix="train-command-probe-") as tmp:
        root = Path(tmp)
        base = save_recipe_base(root / "base", tokenizer=args.tokenizer)
        if args.step_cost:
            result: dict = {"step_seconds": step_cost(root, base, args.cost_steps)}
        else:
            held = make_grounding_set(args.held_out, HELD_OUT_SEED)
            held_file = write_umrg(held, root / "held", prefix="h")
            _box, constant = best_constant_box(held.boxes, held.images.shape[1])
            untrained = eval_box_iou(held_file, base, root / "eval-untrained", max_new_tokens=64)
            print(f"untrained {untrained.mean():.3f}  best constant box {constant:.3f}", flush=True)
            pool = write_umrg(make_grounding_set(args.pool, TRAIN_SEED), root / "train")
            seconds = train_sft(pool, base, root / "out", settings, full=not args.lora)
            trained = eval_box_iou(held_file, root / "out", root / "eval-trained")
            record = json.loads((root / "out" / "training.json").read_text(encoding="utf-8"))
            result = {
                "settings": settings,
                "full": not args.lora,
                "pool": args.pool,
                "held_out": args.held_out,
                "untrained_iou": round(float(untrained.mean()), 4),
                "constant_iou": round(constant, 4),
                "trained_iou": round(float(trained.mean()), 4),
                "trained_zero": int((trained == 0).sum()),
                "train_command_seconds": round(seconds, 1),
                "train_seconds": record.get("train_seconds"),
            }
            print(
                f"trained {result['trained_iou']:.3f} ({result['trained_zero']} of {args.held_out} at 0)  "
                f"untrained {result['untrained_iou']:.3f}  constant {constant:.3f}  "
                f"train {record.get('train_seconds')} s (command {seconds:.0f} s)",
                flush=True,
            )
    out = ROOT / "benchmarks" / "_output" / "train_command_probe.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
