"""Issue #18's proof that SFT learns: a tiny Qwen2.5-VL, trained on CPU for a bounded number of steps, finds the
bright ellipse of the synthetic grounding task (``support.grounding``) well above the best constant box.

The recipe (``support.grounding_training.LEARNING_RECIPE``) and the attempts behind it: docs/training-probe.md.
Deterministic: seeded model, seeded training images, seeded held-out images, greedy decoding.
"""

from __future__ import annotations

import pytest
from support.grounding import best_constant_box, make_grounding_set
from support.grounding_training import LEARNING_RECIPE, build, mean_iou, train

HELD_OUT_SEED = 12345


def test_sft_finds_the_lesion_well_above_the_best_constant_box():
    pytest.importorskip("torchvision", reason="the Qwen-VL processors need torchvision (their video processor)")
    import torch

    recipe = LEARNING_RECIPE
    held = make_grounding_set(100, seed=HELD_OUT_SEED, size=recipe.image_size, axes=recipe.axes)
    _box, constant = best_constant_box(held.boxes, recipe.image_size)
    torch.set_num_threads(1)  # tiny matrices: a second thread only spins when the cores are shared
    model, processor = build(recipe)
    untrained, _ = mean_iou(model, processor, held)

    def batch(step: int):
        data = make_grounding_set(
            recipe.batch, seed=recipe.seed + 1000 + step, size=recipe.image_size, axes=recipe.axes
        )
        return data.images, data.boxes

    train(recipe, model, processor, batch)
    trained, readable = mean_iou(model, processor, held)

    assert readable == 1.0, "every answer must be read by the product's parser"
    assert trained >= 0.5, f"held-out IoU {trained:.3f} (untrained {untrained:.3f}, constant box {constant:.3f})"
    assert trained >= constant + 0.2, f"held-out IoU {trained:.3f} is not 0.2 above the constant box's {constant:.3f}"
