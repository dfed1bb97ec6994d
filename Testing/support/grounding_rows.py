"""The synthetic grounding task (``support.grounding``) in the product's own format: what ``train`` and ``ask`` show
the model, trained by the probe's loop (``grounding_training.train``) and saved as a checkpoint ``hf:FOLDER`` loads.

Why not the probe's own rows: issue #18 asks that the trained folder, loaded by ``create_reasoner("hf:DIR")``, score
under ``eval --mode reasoner`` what the training script scored, and that GRPO (the ``train grpo`` command) continue
from it. Both render the product's prompt (``brief-v1``), the product's window of each image and read the product's
answer (segzero's ``<think>`` and ``<answer>`` with box and points), so the model must have learned exactly those.
Every piece comes from ``training.samples`` (``load_samples`` on the U-MRG parquet ``grounding_product.write_umrg``
writes, ``prompt_text``, ``target_text``, ``model_images``): nothing here renders or parses by itself.

The tokenizer (``support.reasoning.prompt_tokenizer``, merges learned from the product's prompts) keeps a sample at
about 200 tokens, as a real Qwen vocabulary would; one token per byte would be about 650.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .grounding import GroundingSet
from .grounding_product import write_umrg

PROMPT_STYLE, PROMPT_VERSION, CONVENTION = "segzero", "brief-v1", "qwen2.5-vl"
RECORD = {"convention": CONVENTION, "prompt_style": PROMPT_STYLE, "prompt_version": PROMPT_VERSION}
"""``medseg_reasoner.json`` of a model trained on these rows: the runtime asks it exactly as it was trained."""


def load_product_samples(data: GroundingSet, folder: Path, prefix: str = "g") -> list:
    """``data`` written as U-MRG parquet into ``folder``, then read back by ``train``'s own ``load_samples`` (with
    volumes and truth masks, which the mask reward needs)."""
    from MedSegReasoning.evaluation.layouts import open_dataset
    from MedSegReasoning.training.samples import load_samples

    write_umrg(data, folder, prefix)
    return load_samples(open_dataset(folder), keep_volumes=True).samples


def _format():
    from MedSegReasoning.reasoning.coords import get_convention
    from MedSegReasoning.reasoning.prompts import PromptSet

    return PromptSet(PROMPT_STYLE, PROMPT_VERSION), get_convention(CONVENTION)


def _chat(processor, user_text: str) -> str:
    """The user turn with its image before the text (``HFReasoner``'s order), up to the assistant header."""
    content = [{"type": "image"}, {"type": "text", "text": user_text}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def _prompts_and_images(processor, samples: Sequence) -> tuple[list[str], list[Any]]:
    from PIL import Image

    from MedSegReasoning.training.samples import model_images, prompt_text

    prompts, convention = _format()
    texts = [_chat(processor, prompt_text(s, prompts, convention)) for s in samples]
    images = [Image.fromarray(model_images(s.views, convention)[0]) for s in samples]
    return texts, images


def product_batch(processor, samples: Sequence) -> dict[str, Any]:
    """Inputs for prompt + ``train``'s target answer + ``<|im_end|>``, labels on the answer and its end token only
    (the prompt of every sample here renders to the same tokens: one image size, one question)."""
    from MedSegReasoning.training.samples import target_text

    prompts, convention = _format()
    texts, images = _prompts_and_images(processor, samples)
    full = [t + target_text(s, prompts, convention) + "<|im_end|>" for t, s in zip(texts, samples, strict=True)]
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "right"
    inputs = processor(text=full, images=images, return_tensors="pt", padding=True)
    prompt_len = len(processor(text=texts[:1], images=images[:1])["input_ids"][0])
    labels = inputs["input_ids"].clone()
    labels[:, :prompt_len] = -100
    labels[inputs["attention_mask"] == 0] = -100
    inputs["labels"] = labels
    return dict(inputs)


def product_answers(model, processor, samples: Sequence, batch: int = 50, max_new_tokens: int = 96) -> list[str]:
    """Greedy answers to the product's prompts (left-padded, as a batch of different prompts would need)."""
    import torch

    texts, images = _prompts_and_images(processor, samples)
    processor.tokenizer.padding_side = "left"
    model.eval()
    out: list[str] = []
    for start in range(0, len(texts), batch):
        inputs = processor(
            text=texts[start : start + batch], images=images[start : start + batch], return_tensors="pt", padding=True
        )
        with torch.inference_mode():
            seqs = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        out.extend(processor.tokenizer.batch_decode(seqs[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def answer_box_ious(answers: Sequence[str], samples: Sequence) -> np.ndarray:
    """Each answer's box IoU against its truth box, read as the rewards read it (``reward_funcs.read_target``: the
    runtime's parser and conversion to voxels) and scored by ``eval``'s metric; 0 where the runtime could not use
    the answer."""
    from MedSegReasoning.evaluation.metrics import box_iou as eval_box_iou
    from MedSegReasoning.training.reward_funcs import read_target
    from MedSegReasoning.training.targets import mask_box

    _prompts, convention = _format()
    out = np.zeros(len(answers))
    for n, (text, sample) in enumerate(zip(answers, samples, strict=True)):
        target = read_target(sample, text, convention)
        if target is None or target.box is None:
            continue
        out[n] = float(eval_box_iou(target.box, mask_box(sample.truth[sample.slice]), inclusive=True))
    return out


def mask_reward_for(samples: Sequence, segmenter):
    """``training.mask_reward.MaskReward`` over ``samples`` (as ``train grpo`` builds it): scores answers by the
    Dice of the segmenter's mask from them."""
    from MedSegReasoning.training.mask_reward import MaskReward, RewardSample

    _prompts, convention = _format()
    return MaskReward(
        segmenter,
        {s.id: RewardSample(s.volume, s.window, s.views, convention, s.truth_volume) for s in samples},
    )


def answer_mask_dice(answers: Sequence[str], samples: Sequence, reward) -> np.ndarray:
    """Each answer's mask Dice through ``reward`` (``mask_reward_for``): the quantity GRPO optimises."""
    return np.array([reward.score(text, reward.samples[s.id]) for text, s in zip(answers, samples, strict=True)])


def save_trained(model, processor, folder: Path) -> Path:
    """The trained model as a checkpoint ``hf:FOLDER`` loads, with the record that makes the runtime ask it as it
    was trained (and the eos the answers end with)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "medseg_reasoner.json").write_text(json.dumps(RECORD), encoding="utf-8")
    return folder


GRPO_RECIPE = {
    "steps": 40,
    "batch": 32,
    "generations": 8,
    "learning_rate": 2e-4,
    "beta": 0.0,
    "temperature": 0.7,
    "max_completion_length": 96,
    "rewards": {"format": 0.0, "box": 0.0, "points": 0.0, "mask": 1.0, "key_slice": 0.0},
    "prompt_style": PROMPT_STYLE,
    "prompt_version": PROMPT_VERSION,
    "save_steps": 10_000,
    "logging_steps": 5,
    "seed": 0,
}
"""The ``train grpo --config`` of the GRPO proof: the mask Dice alone, 4 prompts x 8 completions per step, sampled at
0.7 (at 1.0 a third of the SFT model's samples are unreadable and the group's signal is mostly format; at 0.5 the
group's boxes hardly differ), no KL term (no reference model to run; 40 steps stay near the SFT model anyway).
``benchmarks/train_grpo_probe.py`` runs it over several seeds (docs/training-probe.md)."""


HELD_OUT_SEED, TRAIN_SEED, GRPO_POOL_SEED = 12345, 100, 300


@dataclass
class SftRun:
    """The SFT proof's outcome: the saved ``folder``, the held-out samples (written as U-MRG in ``held_folder``), the
    trained model's greedy answers to them and their box IoUs, the untrained model's and the best constant box's
    mean IoU, and the training seconds."""

    folder: Path
    held_folder: Path
    held: list
    answers: list[str]
    ious: np.ndarray
    untrained: float
    constant: float
    seconds: float


def sft_on_rows(root: Path, recipe=None, pool_size: int = 2000, held_out: int = 100) -> SftRun:
    """The recipe's tiny Qwen2.5-VL (tokenizer: ``prompt_tokenizer`` of the product's prompts), trained by the probe's
    loop on ``pool_size`` product-format samples (each step a seeded draw of ``recipe.batch``), scored on
    ``held_out`` fresh ones and saved in ``root/sft``."""
    from .grounding import best_constant_box, make_grounding_set
    from .grounding_product import product_corpus
    from .grounding_training import LEARNING_RECIPE, build, train
    from .reasoning import prompt_tokenizer

    recipe = recipe or LEARNING_RECIPE
    held_set = make_grounding_set(held_out, seed=HELD_OUT_SEED, size=recipe.image_size, axes=recipe.axes)
    held = load_product_samples(held_set, root / "held", prefix="h")
    pool_set = make_grounding_set(pool_size, seed=TRAIN_SEED, size=recipe.image_size, axes=recipe.axes)
    pool = load_product_samples(pool_set, root / "pool")
    _box, constant = best_constant_box(held_set.boxes, recipe.image_size)
    model, processor = build(recipe, prompt_tokenizer(product_corpus()))
    untrained = float(answer_box_ious(product_answers(model, processor, held), held).mean())

    def batch(step: int) -> list:
        picked = np.random.default_rng(recipe.seed + 1000 + step).choice(len(pool), recipe.batch, replace=False)
        return [pool[n] for n in picked]

    seconds = train(recipe, model, processor, batch, to_inputs=lambda samples: product_batch(processor, samples))
    answers = product_answers(model, processor, held)
    folder = save_trained(model, processor, root / "sft")
    ious = answer_box_ious(answers, held)
    return SftRun(folder, root / "held", held, answers, ious, untrained, constant, seconds)


def grpo_pool(folder: Path, size: int = 48, seed: int = GRPO_POOL_SEED) -> list:
    """The GRPO proof's fixed pool of prompts, written as U-MRG parquet into ``folder`` and read back."""
    from .grounding import make_grounding_set

    return load_product_samples(make_grounding_set(size, seed=seed), folder, prefix="p")


def train_grpo(pool_folder: Path, base: Path, out: Path, settings: dict) -> None:
    """``train grpo POOL --base hf:BASE --out OUT --full --config FILE`` (a subprocess, one torch thread)."""
    import json

    from .grounding_product import run_cli

    config = out.with_name(out.name + "-config.json")
    config.write_text(json.dumps(settings), encoding="utf-8")
    args = ("train", "grpo", str(pool_folder), "--base", f"hf:{base}", "--out", str(out), "--config", str(config))
    done = run_cli(*args, "--full", "--force")
    if done.returncode != 0:
        raise RuntimeError(f"train grpo exited {done.returncode}: {done.stderr[-3000:]}")


def folder_answers(folder: Path, samples: Sequence) -> list[str]:
    """Greedy answers of the checkpoint in ``folder`` (loaded by transformers, as ``HFReasoner`` loads it)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder)
    return product_answers(model, AutoProcessor.from_pretrained(folder), samples)
