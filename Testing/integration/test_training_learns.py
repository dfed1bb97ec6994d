"""Issue #18's proof that training works, on CPU with deterministic seeds: a tiny Qwen2.5-VL taught the synthetic
grounding task (``support.grounding``: one bright ellipse on structured noise) in the product's own format
(``support.grounding_rows``: ``train``'s samples, prompt, images and answers).

- SFT (the probe's loop, ``support.grounding_training``) finds the lesion well above the best constant box;
- the saved folder, loaded by ``eval --mode reasoner --reasoner hf:DIR``, scores what the training script scored;
- GRPO from that folder (the ``train grpo`` command) with the mask-Dice reward of the real LiteMedSAM raises the
  held-out mask Dice; the margin and the seed noise behind it: ``benchmarks/train_grpo_probe.py``,
  docs/training-probe.md.

One SFT run serves the three (a module fixture). The recipe: ``grounding_training.LEARNING_RECIPE``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.grounding_product import eval_box_iou
from support.grounding_rows import (
    GRPO_RECIPE,
    SftRun,
    answer_mask_dice,
    folder_answers,
    grpo_pool,
    mask_reward_for,
    sft_on_rows,
    train_grpo,
)

pytest.importorskip("trl", reason="train needs the train extra (trl, peft)")

DICE_HELD_OUT = 60
"""Held-out images the mask Dice is measured on (each costs one encoder call)."""


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> SftRun:
    pytest.importorskip("torchvision", reason="the Qwen-VL processors need torchvision (their video processor)")
    import torch

    torch.set_num_threads(1)  # tiny matrices: a second thread only spins when the cores are shared
    return sft_on_rows(tmp_path_factory.mktemp("grounding"))


def test_sft_finds_the_lesion_well_above_the_best_constant_box(sft_run):
    trained, readable = float(sft_run.ious.mean()), float((sft_run.ious > 0).mean())
    scores = f"held-out IoU {trained:.3f} (untrained {sft_run.untrained:.3f}, constant box {sft_run.constant:.3f})"
    assert readable >= 0.95, f"only {readable:.0%} of the answers could be used by the runtime; {scores}"
    assert trained >= 0.5, scores
    assert trained >= sft_run.constant + 0.2, scores


def test_the_saved_folder_scores_under_eval_what_the_training_script_scored(sft_run, tmp_path):
    """``eval --mode reasoner --reasoner hf:DIR`` loads the folder through ``create_reasoner`` and asks each held-out
    image as ``ask`` would: same prompt, same pixels, same reading, so the same boxes."""
    scored = eval_box_iou(sft_run.held_folder, sft_run.folder, tmp_path / "eval", max_new_tokens=96)
    assert scored.shape == sft_run.ious.shape
    same = np.isclose(scored, sft_run.ious, atol=1e-6)
    assert same.mean() >= 0.95, f"{int((~same).sum())} of {same.size} answers scored differently under eval"
    assert abs(scored.mean() - sft_run.ious.mean()) < 0.01, (scored.mean(), sft_run.ious.mean())


def test_grpo_with_the_mask_reward_raises_the_held_out_mask_dice(sft_run, tmp_path):
    """``train grpo`` from the SFT folder, rewarded by the Dice of the real LiteMedSAM's mask alone, on a fixed pool
    whose embeddings are computed once here (the command reads them from the runtime's embedding store)."""
    from MedSegReasoning.segmentation.factory import create_segmenter, default_store_root

    pool = grpo_pool(tmp_path / "grpo-pool")
    held = sft_run.held[:DICE_HELD_OUT]
    segmenter = create_segmenter("litemedsam", embedding_store=default_store_root())
    mask_reward_for(pool, segmenter).encode_all()
    reward = mask_reward_for(held, segmenter)
    reward.encode_all()
    before = answer_mask_dice(sft_run.answers[:DICE_HELD_OUT], held, reward)

    out = tmp_path / "grpo"
    train_grpo(tmp_path / "grpo-pool", sft_run.folder, out, GRPO_RECIPE)
    after = answer_mask_dice(folder_answers(out, held), held, reward)

    logged = [json.loads(line) for line in (out / "logs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert logged and all("reward/mask" in row for row in logged), "the mask reward was not logged each step"
    gain = float(after.mean() - before.mean())
    assert gain >= 0.04, f"held-out mask Dice {before.mean():.4f} -> {after.mean():.4f} ({gain:+.4f})"
