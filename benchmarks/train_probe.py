"""Training probe (issue #18): does a tiny Qwen2.5-VL learn the synthetic grounding task on CPU, and how fast?

Run from the project root::

    .venv/bin/python benchmarks/train_probe.py                       # the chosen recipe
    .venv/bin/python benchmarks/train_probe.py --attempt theta10000  # one of the named attempts below
    .venv/bin/python benchmarks/train_probe.py --attempt chosen --set steps=1200 --set lr=0.003
    .venv/bin/python benchmarks/train_probe.py --all                 # every attempt, one table

The task (``Testing/support/grounding.py``): 112x112 images, one bright rotated ellipse of random size and place
on structured noise, the question "Where is the lesion?", the truth box in pixels. Training is teacher-forced
cross-entropy on the answer tokens (``Testing/support/grounding_training.py``); evaluation is greedy generation
read by the product's parser on a held-out set, against the best constant box on that same set. Prints, per
attempt: untrained IoU, best-constant IoU, IoU during and after training, steps, seconds; writes
``benchmarks/_output/train_probe.json``. Findings: docs/training-probe.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing")]

from support.grounding import QUESTION, best_constant_box, make_grounding_set, parse_settings  # noqa: E402
from support.grounding_training import LEARNING_RECIPE, Recipe, build, mean_iou, train, train_with_trl  # noqa: E402

HELD_OUT_SEED = 12345
HELD_OUT = 200
CHOSEN = LEARNING_RECIPE
ATTEMPTS: dict[str, Recipe] = {
    # the tests' rotary settings (head_dim 16, mrope_section [4, 2, 2], rope_theta 10000): height and width get
    # 0.01-0.0003 rad per token
    "theta10000": Recipe(),
    "theta10": Recipe(rope_theta=10.0),  # h 0.32-0.24, w 0.18-0.13 rad per token
    "theta10-hw3": Recipe(rope_theta=10.0, mrope_section=(2, 3, 3)),  # three frequencies each for h and w
    "theta10-hw3-lr3e-3": Recipe(rope_theta=10.0, mrope_section=(2, 3, 3), lr=3e-3),
    # capacity instead of rotary frequencies: 4x the parameters (hidden 128, 4 layers), same rotary config
    "theta10000-big": Recipe(hidden=128, layers=4, intermediate=256),
    # rope_theta 4, mrope_section [2, 3, 3]: h 0.71-0.50, w 0.42-0.30 rad per token
    "theta4-hw3": Recipe(rope_theta=4.0, mrope_section=(2, 3, 3)),
    "theta4-hw3-224": Recipe(rope_theta=4.0, mrope_section=(2, 3, 3), image_size=224),  # 8x8 merged tokens
    "theta4-hw3-b8": Recipe(rope_theta=4.0, mrope_section=(2, 3, 3), batch=8, steps=1600),
    "chosen": CHOSEN,  # theta4-hw3 with batch 16 for 1200 steps: the same images seen, twice the updates
}


def run_attempt(name: str, recipe: Recipe, held, constant: float, eval_every: int, trl_dir: Path | None) -> dict:
    model, processor = build(recipe)
    params = sum(p.numel() for p in model.parameters())
    untrained, _ = mean_iou(model, processor, held)
    pool = (
        make_grounding_set(recipe.train_pool, seed=recipe.seed + 1, size=recipe.image_size, axes=recipe.axes)
        if (recipe.train_pool)
        else None
    )
    rng_seed = recipe.seed + 1000
    curve: list[tuple[int, float, float]] = []
    losses: list[float] = []

    def make_batch(step: int):
        if pool is not None:
            import numpy as np

            idx = np.random.default_rng(rng_seed + step).choice(len(pool), recipe.batch, replace=False)
            return pool.images[idx], pool.boxes[idx]
        data = make_grounding_set(recipe.batch, seed=rng_seed + step, size=recipe.image_size, axes=recipe.axes)
        return data.images, data.boxes

    def log(step: int, loss: float) -> None:
        losses.append(loss)
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < recipe.steps:
            iou, readable = mean_iou(model, processor, held)
            model.train()
            avg = sum(losses[-eval_every:]) / len(losses[-eval_every:])
            curve.append((step + 1, round(iou, 3), round(avg, 3)))
            print(
                f"  [{name}] step {step + 1}: loss {avg:.3f}, held-out IoU {iou:.3f}, readable {readable:.2f}",
                flush=True,
            )

    if trl_dir is not None:
        if pool is None:
            raise SystemExit("--trl trains on a fixed pool: add --set train_pool=N")
        seconds = train_with_trl(recipe, model, processor, pool, trl_dir)
    else:
        seconds = train(recipe, model, processor, make_batch, log)
    eval_start = time.perf_counter()
    trained, readable = mean_iou(model, processor, held)
    eval_seconds = time.perf_counter() - eval_start
    return {
        "attempt": name + (" (trl)" if trl_dir is not None else ""),
        "params": params,
        "untrained_iou": round(untrained, 3),
        "constant_iou": round(constant, 3),
        "trained_iou": round(trained, 3),
        "readable": round(readable, 3),
        "steps": recipe.steps,
        "train_seconds": round(seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4) if losses else None,
        "goal_met": trained >= 0.5 and trained >= constant + 0.2,
        "curve": curve,
        "recipe": recipe.summary(),
    }


def product_prompt() -> str:
    """What the product's reasoner asks for one axial slice in the ``segzero`` style (the question inside)."""
    from support.reasoning import blob_volume

    from MedSegReasoning.reasoning import DEFAULT_STRATEGY, EMPTY_CONTEXT, get_convention
    from MedSegReasoning.reasoning.prompts import PromptSet, render_prompt
    from MedSegReasoning.reasoning.views import refine_views
    from MedSegReasoning.volume.windowing import default_window

    volume = blob_volume()
    views = refine_views(volume, default_window(volume), DEFAULT_STRATEGY, "axial", 7)
    return render_prompt(PromptSet("segzero"), views, QUESTION, EMPTY_CONTEXT, get_convention("qwen2.5-vl"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempt", default="chosen", choices=sorted(ATTEMPTS))
    parser.add_argument("--all", action="store_true", help="run every named attempt")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a recipe field")
    parser.add_argument("--eval-every", type=int, default=0, help="held-out IoU every N steps (0: only at the end)")
    parser.add_argument("--held-out", type=int, default=HELD_OUT)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the matrices are tiny)")
    parser.add_argument("--trl", action="store_true", help="train through trl.SFTTrainer on a fixed pool")
    parser.add_argument(
        "--product-prompt",
        action="store_true",
        help="ask with the product's segzero-v1 prompt for one slice (914 bytes) instead of the bare question",
    )
    args = parser.parse_args(argv)
    if args.product_prompt:
        import support.grounding_training as training

        training.QUESTION = product_prompt()
    import torch

    torch.set_num_threads(args.threads)
    names = sorted(ATTEMPTS) if args.all else [args.attempt]
    rows = []
    for name in names:
        recipe = dataclasses.replace(ATTEMPTS[name], **parse_settings(args.set))
        held = make_grounding_set(args.held_out, seed=HELD_OUT_SEED, size=recipe.image_size, axes=recipe.axes)
        box, constant = best_constant_box(held.boxes, recipe.image_size)
        print(f"[{name}] {recipe.summary()}  best constant box {box.tolist()}: IoU {constant:.3f}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            row = run_attempt(name, recipe, held, constant, args.eval_every, Path(tmp) if args.trl else None)
        print(json.dumps({k: v for k, v in row.items() if k not in ("recipe", "curve")}), flush=True)
        rows.append(row)
    header = f"{'attempt':<20}{'params':>9}{'untrained':>10}{'constant':>9}{'trained':>8}{'steps':>6}{'batch':>6}{'train s':>8}  goal"
    print(header)
    for r in rows:
        print(
            f"{r['attempt']:<20}{r['params']:>9}{r['untrained_iou']:>10.3f}{r['constant_iou']:>9.3f}"
            f"{r['trained_iou']:>8.3f}{r['steps']:>6}{r['recipe']['batch']:>6}{r['train_seconds']:>8.1f}  {'yes' if r['goal_met'] else 'no'}"
        )
    out = ROOT / "benchmarks" / "_output"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_probe.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
