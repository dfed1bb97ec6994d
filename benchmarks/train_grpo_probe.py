"""Issue #18's GRPO proof at benchmark size: does ``train grpo`` with the mask-Dice reward raise the held-out mask
Dice of the SFT model, by how much, and how much of that is seed noise?

Run from the project root::

    .venv/bin/python benchmarks/train_grpo_probe.py                       # SFT once, then GRPO with seeds 0-3
    .venv/bin/python benchmarks/train_grpo_probe.py --seeds 0 1 --set temperature=1.0
    .venv/bin/python benchmarks/train_grpo_probe.py --sft DIR             # reuse an SFT folder (its run's held-out)

The SFT model is the learning test's (``support.grounding_rows.sft_on_rows``: the product's prompt, images and
answers, the recipe of docs/training-probe.md); GRPO is the ``train grpo`` command with the test's settings
(``support.grounding_rows.GRPO_RECIPE``, changed with ``--set KEY=VALUE``) from that folder, once per seed, on the
test's fixed pool. Every run is scored on the same held-out images by the same reward (the real LiteMedSAM, whose
embeddings are encoded once into the runtime's store). Prints the SFT model's mask Dice, each seed's, their mean and
standard deviation, and the gain in units of that deviation; writes ``benchmarks/_output/train_grpo_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing")]

from support.grounding import parse_settings  # noqa: E402
from support.grounding_rows import (  # noqa: E402
    GRPO_RECIPE,
    answer_mask_dice,
    folder_answers,
    grpo_pool,
    mask_reward_for,
    sft_on_rows,
    train_grpo,
)


def _settings(pairs: list[str]) -> dict:
    return {**GRPO_RECIPE, **parse_settings(pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a train grpo setting")
    parser.add_argument("--held-out", type=int, default=100, help="held-out images the Dice is measured on")
    parser.add_argument("--pool", type=int, default=48, help="GRPO prompts (a fixed pool)")
    args = parser.parse_args()
    import torch

    from MedSegReasoning.segmentation.factory import create_segmenter, default_store_root

    torch.set_num_threads(1)
    settings = _settings(args.set)
    with tempfile.TemporaryDirectory(prefix="train-grpo-probe-") as tmp:
        root = Path(tmp)
        sft = sft_on_rows(root, held_out=args.held_out)
        print(f"SFT: held-out box IoU {sft.ious.mean():.3f} (constant box {sft.constant:.3f}), {sft.seconds:.0f} s")
        segmenter = create_segmenter("litemedsam", embedding_store=default_store_root())
        pool = grpo_pool(root / "pool", size=args.pool)
        mask_reward_for(pool, segmenter).encode_all()
        reward = mask_reward_for(sft.held, segmenter)
        reward.encode_all()
        before = float(answer_mask_dice(sft.answers, sft.held, reward).mean())
        print(f"SFT: held-out mask Dice {before:.4f}", flush=True)
        runs = []
        for seed in args.seeds:
            out = root / f"grpo-{seed}"
            start = time.perf_counter()
            train_grpo(root / "pool", sft.folder, out, {**settings, "seed": seed})
            seconds = time.perf_counter() - start
            dice = answer_mask_dice(folder_answers(out, sft.held), sft.held, reward)
            runs.append({"seed": seed, "dice": round(float(dice.mean()), 4), "unusable": int((dice == 0).sum())})
            runs[-1]["seconds"] = round(seconds, 1)
            print(f"GRPO seed {seed}: held-out mask Dice {dice.mean():.4f} ({dice.mean() - before:+.4f}), "
                  f"{runs[-1]['unusable']} unusable, {seconds:.0f} s", flush=True)  # fmt: skip
    values = [r["dice"] for r in runs]
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    result = {
        "settings": settings,
        "held_out": args.held_out,
        "pool": args.pool,
        "sft_box_iou": round(float(sft.ious.mean()), 4),
        "sft_mask_dice": round(before, 4),
        "grpo": runs,
        "grpo_mean": round(mean, 4),
        "grpo_seed_std": round(spread, 4),
        "gain": round(mean - before, 4),
    }
    print(f"GRPO over {len(values)} seeds: {mean:.4f} ± {spread:.4f} (sd), gain {mean - before:+.4f} "
          f"= {(mean - before) / spread:.1f} seed sd; smallest gain {min(values) - before:+.4f}")  # fmt: skip
    out_file = ROOT / "benchmarks" / "_output" / "train_grpo_probe.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
