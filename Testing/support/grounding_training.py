"""A tiny Qwen2.5-VL taught the synthetic grounding task (``support.grounding``) on CPU: the recipe and the loop.

Used by ``support.grounding_rows`` (the learning test, on the product's rows) and ``benchmarks/train_probe.py``.
The model is the real ``Qwen2_5_VLForConditionalGeneration`` built from a small config (random weights, byte-level tokenizer of
``support.reasoning``); training is teacher-forced cross-entropy on the answer tokens only; evaluation is greedy
``generate`` read by the product's own parser (an unreadable answer scores IoU 0).

Why the text model's rotary settings matter (docs/training-probe.md): Qwen2.5-VL tells the language model where an
image token lies only through multimodal RoPE in the attention scores, and ``mrope_section`` hands the height and
width axes the LOWEST rotary frequencies. At head_dim 16 and rope_theta 10000 those are 0.01-0.0003 rad per token:
over a 4x4 token grid the attention can hardly tell left from right, and the model learns little more than a constant
box (IoU 0.28 after 600 steps). ``rope_theta`` 4 with ``mrope_section`` [2, 3, 3] gives them 0.3-0.7 rad per token
(0.72 after the chosen recipe's steps); the architecture is unchanged and ``config.json`` records both values.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .grounding import QUESTION, GroundingSet, answer_text, box_iou


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what is trained and how; recorded with each attempt."""

    image_size: int = 112
    axes: tuple[float, float] = (0.06, 0.22)
    # vision tower
    vision_depth: int = 1
    vision_hidden: int = 32
    vision_heads: int = 2
    # language model
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    rope_theta: float = 10000.0
    mrope_section: tuple[int, int, int] | None = None  # None: the tests' default split of head_dim / 2
    # optimisation
    steps: int = 600
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.0
    seed: int = 0
    train_pool: int = 0  # 0: fresh images every step; else a fixed pool of that many images

    def summary(self) -> dict[str, Any]:
        return asdict(self)


LEARNING_RECIPE = Recipe(rope_theta=4.0, mrope_section=(2, 3, 3), batch=16, steps=1200)
"""The recipe the learning test trains with (docs/training-probe.md says how it was found)."""


def _mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2
    return [half - 2 * (half // 4), half // 4, half // 4]


def build(recipe: Recipe, tokenizer=None):
    """``(model, processor)`` of a random-weight Qwen2.5-VL of the recipe's size (seeded); ``tokenizer``: the
    byte-level one of ``support.reasoning`` unless given (``support.reasoning.prompt_tokenizer``)."""
    import torch
    import transformers as tf

    from .reasoning import CHAT_TEMPLATE, SPECIAL_TOKENS, byte_level_tokenizer

    tokenizer = tokenizer if tokenizer is not None else byte_level_tokenizer()
    tokenizer.eos_token = "<|im_end|>"  # as Qwen-VL Instruct's: trainers align the model's eos with the tokenizer's
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = recipe.hidden // recipe.heads
    section = list(recipe.mrope_section or _mrope_section(head_dim))
    rope = {"rope_type": "default", "mrope_section": section, "rope_theta": float(recipe.rope_theta)}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden,
        intermediate_size=recipe.intermediate,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.kv_heads,
        max_position_embeddings=4096,
        rope_parameters=rope,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=recipe.vision_depth,
        hidden_size=recipe.vision_hidden,
        intermediate_size=2 * recipe.vision_hidden,
        num_heads=recipe.vision_heads,
        out_hidden_size=recipe.hidden,
        patch_size=14,
        window_size=112,
        fullatt_block_indexes=list(range(recipe.vision_depth)),
    )
    config = tf.Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(recipe.seed)
    model = tf.Qwen2_5_VLForConditionalGeneration(config)
    image_processor = tf.Qwen2VLImageProcessor(
        patch_size=14, merge_size=2, size={"shortest_edge": 56 * 56, "longest_edge": 12_845_056}
    )
    processor = tf.Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=tf.Qwen2VLVideoProcessor(patch_size=14, merge_size=2),
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def prompt_text(processor) -> str:
    """The chat-templated user turn (one image, :data:`QUESTION`) up to the assistant header."""
    content = [{"type": "image"}, {"type": "text", "text": QUESTION}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def training_batch(processor, images: np.ndarray, boxes: np.ndarray) -> dict[str, Any]:
    """Model inputs for prompt + answer + ``<|im_end|>``, with labels only on the answer and its end token."""
    from PIL import Image

    prompt = prompt_text(processor)
    texts = [prompt + answer_text(b) + "<|im_end|>" for b in boxes]
    inputs = processor(text=texts, images=[Image.fromarray(a) for a in images], return_tensors="pt", padding=True)
    prompt_len = len(processor(text=[prompt], images=[Image.fromarray(images[0])])["input_ids"][0])
    labels = inputs["input_ids"].clone()
    labels[:, :prompt_len] = -100
    labels[inputs["attention_mask"] == 0] = -100
    inputs["labels"] = labels
    return dict(inputs)


def predict(model, processor, images: np.ndarray, batch: int = 50, max_new_tokens: int = 28) -> list[str]:
    """Greedy answers for ``images`` (prompts are all the same length: no padding needed)."""
    import torch
    from PIL import Image

    prompt = prompt_text(processor)
    out: list[str] = []
    model.eval()
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        inputs = processor(text=[prompt] * len(chunk), images=[Image.fromarray(a) for a in chunk], return_tensors="pt")
        with torch.inference_mode():
            seqs = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = seqs[:, inputs["input_ids"].shape[1] :]
        out.extend(processor.tokenizer.batch_decode(new, skip_special_tokens=True))
    return out


def answer_boxes(answers: list[str]) -> np.ndarray:
    """Each answer's box through the product's parser; a zero box (IoU 0) where it cannot be read."""
    from MedSegReasoning.reasoning.answer import ReasonerOutputError
    from MedSegReasoning.reasoning.parser import parse_answer

    boxes = np.zeros((len(answers), 4))
    for n, text in enumerate(answers):
        try:
            target = parse_answer(text).targets[0]
        except ReasonerOutputError:
            continue
        if target.bbox is not None:
            boxes[n] = target.bbox
    return boxes


def mean_iou(model, processor, data: GroundingSet) -> tuple[float, float]:
    """``(mean IoU, share of readable answers)`` on ``data``."""
    answers = predict(model, processor, data.images)
    boxes = answer_boxes(answers)
    readable = float((boxes[:, 2] > 0).mean())
    return float(box_iou(boxes, data.boxes).mean()), readable


def train(recipe: Recipe, model, processor, make_batch, log=None, to_inputs=None) -> float:
    """AdamW with linear warm-up then cosine decay; returns the seconds spent. ``make_batch(step)`` gives one step's
    data, turned into model inputs with labels by ``to_inputs(data)`` (default: ``(images, boxes)`` through
    :func:`training_batch`, the probe's own prompt)."""
    import torch

    torch.manual_seed(recipe.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.98))

    def factor(step: int) -> float:
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    start = time.perf_counter()
    for step in range(recipe.steps):
        data = make_batch(step)
        inputs = to_inputs(data) if to_inputs is not None else training_batch(processor, *data)
        loss = model(**inputs).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log is not None:
            log(step, loss.item())
    model.eval()
    return time.perf_counter() - start


def trl_dataset(data: GroundingSet):
    """``data`` as the prompt-completion conversational dataset TRL's ``SFTTrainer`` takes for a vision model."""
    from datasets import Dataset, Features, Image, List, Value
    from PIL import Image as PILImage

    message = {"role": Value("string"), "content": Value("string")}
    features = Features({"images": List(Image()), "prompt": List(message), "completion": List(message)})
    rows = {  # string contents: TRL puts the image placeholder before the user's text, as ``prompt_text`` does
        "images": [[PILImage.fromarray(image)] for image in data.images],
        "prompt": [[{"role": "user", "content": QUESTION}]] * len(data),
        "completion": [[{"role": "assistant", "content": answer_text(b)}] for b in data.boxes],
    }
    return Dataset.from_dict(rows, features=features)


def train_with_trl(recipe: Recipe, model, processor, data: GroundingSet, out_dir) -> float:
    """The same recipe through ``trl.SFTTrainer`` (loss on the completion only); returns the seconds spent."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(out_dir),
        max_steps=recipe.steps,
        per_device_train_batch_size=recipe.batch,
        learning_rate=recipe.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.05},
        warmup_steps=recipe.warmup,
        weight_decay=recipe.weight_decay,
        adam_beta2=0.98,
        max_grad_norm=1.0,
        max_length=None,
        completion_only_loss=True,
        seed=recipe.seed,
        data_seed=recipe.seed,
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        report_to="none",
        logging_steps=50,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=trl_dataset(data), processing_class=processor)
    start = time.perf_counter()
    trainer.train()
    model.eval()
    return time.perf_counter() - start
