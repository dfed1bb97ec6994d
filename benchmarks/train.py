"""Training benchmark: samples/s, peak memory and the reward curve of GRPO-style steps on a Qwen2.5-VL reasoner.

Run from the project root::

    .venv/bin/python benchmarks/train.py --tiny --steps 2              # CPU: a tiny model, what the test runs
    .venv/bin/python benchmarks/train.py --arch 3b --steps 5           # GPU: the real 3B architecture, random weights
    .venv/bin/python benchmarks/train.py --arch 7b --steps 5 --group 8
    .venv/bin/python benchmarks/train.py --base hf:/models/Qwen2.5-VL-3B-Instruct --steps 20
    .venv/bin/python benchmarks/train.py --plan                        # the memory arithmetic only (no model run)

NOT MEASURED YET ON A GPU: this project's machines have no GPU; the script ran here on CPU with ``--tiny`` only
(``Testing/integration/test_benchmark_train.py``). ``--plan`` is arithmetic from the published configs, not a
measurement; docs/training.md "On a GPU" shows it.

One step is what a GRPO step does, in plain torch + transformers + peft (independent of ``medseg-reasoning train``):

1. **generate**: ``--prompts`` synthetic grounding images (one bright ellipse on structured noise, "Where is the
   lesion?"), ``--group`` sampled completions each, exactly ``--new-tokens`` tokens long (HF ``generate``, KV cache);
2. **reward**: the completions scored by the project's own rewards (``training.rewards.format_reward`` and the mask
   Dice of ``training.mask_reward.MaskReward`` with the real LiteMedSAM: each image encoded once, one decoder call
   per completion), combined by ``RewardWeights(format=0.5, mask=0.5)``;
3. **update**: group-normalised advantages, the policy-gradient loss on the completion tokens (GRPO's loss with one
   update per generation, where the ratio is 1), backward with gradient checkpointing, AdamW on the LoRA parameters
   (rank ``--lora-rank`` on the language model's attention and MLP projections; the vision tower frozen).

Models: ``--base hf:DIR`` loads a local checkpoint (its rewards are real); ``--arch 3b|7b`` builds the real
Qwen2.5-VL-3B/7B-Instruct architecture from the published config values below with random weights and a byte-level
tokenizer (speed and memory are real; the rewards are not: random weights write no valid answer, so they stay ~0);
``--tiny`` builds the tests' ~70k-parameter model (``support.reasoning``). bf16 on CUDA, fp32 on CPU.

Prints one line per step and a summary (samples/s = completions per second through all three phases; peak memory =
``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS on CPU) and writes ``--json`` if given.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing")]

# Qwen2.5-VL-3B-Instruct and -7B-Instruct, config.json as published (text and vision values; token ids are set from
# the tokenizer in use, since the random-weights models run with a byte-level tokenizer).
VISION = dict(
    depth=32,
    hidden_act="silu",
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    in_chans=3,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
)
TEXT_COMMON = dict(
    hidden_act="silu",
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    sliding_window=32768,
    use_sliding_window=False,
)
ARCHS: dict[str, dict[str, Any]] = {
    "3b": dict(
        text=dict(
            TEXT_COMMON,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            vocab_size=151936,
        ),
        vision=dict(VISION, out_hidden_size=2048),
        tie_word_embeddings=True,
    ),
    "7b": dict(
        text=dict(
            TEXT_COMMON,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
        ),
        vision=dict(VISION, out_hidden_size=3584),
        tie_word_embeddings=False,
    ),
}
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
QUESTION = (
    "Where is the lesion? Think in <think></think>, then answer in <answer></answer> with JSON: "
    '{"bbox": [x1, y1, x2, y2], "points_1": [x, y], "points_2": [x, y]} in pixels of the image.'
)


# -- models ------------------------------------------------------------------------------------------------------
def qwen25_config(arch: str, tokenizer=None):
    """The published Qwen2.5-VL config of ``arch``; token ids from ``tokenizer`` where one is given."""
    import transformers as tf

    spec = ARCHS[arch]
    text, top = dict(spec["text"]), {}
    if tokenizer is not None:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
        text.update(
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]
        )
        top = {
            key: tokenizer.convert_tokens_to_ids(token)
            for key, token in (
                ("image_token_id", "<|image_pad|>"),
                ("video_token_id", "<|video_pad|>"),
                ("vision_start_token_id", "<|vision_start|>"),
                ("vision_end_token_id", "<|vision_end|>"),
            )
        }
    return tf.Qwen2_5_VLConfig(
        text_config=text, vision_config=spec["vision"], tie_word_embeddings=spec["tie_word_embeddings"], **top
    )


def random_arch_model(arch: str, device: str, dtype):
    """The real ``arch`` architecture with random weights, built on ``device``, and a processor for it."""
    import torch
    import transformers as tf
    from support.reasoning import CHAT_TEMPLATE, byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    config = qwen25_config(arch, tokenizer)
    torch.manual_seed(0)
    with torch.device(device):
        model = tf.Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    processor = tf.Qwen2_5_VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(patch_size=14, merge_size=2),
        tokenizer=tokenizer,
        video_processor=tf.Qwen2VLVideoProcessor(patch_size=14, merge_size=2),
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def local_model(folder: Path, device: str, dtype):
    import transformers

    from MedSegReasoning.reasoning.models import MODEL_CLASSES, read_model_type

    model_class = getattr(transformers, MODEL_CLASSES[read_model_type(folder)])
    processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = model_class.from_pretrained(folder, dtype=dtype, use_safetensors=True, local_files_only=True)
    return model.to(device), processor


def with_lora(model, rank: int, checkpointing: bool):
    """LoRA on the language model's projections (peft), the rest frozen; gradient checkpointing if asked."""
    from peft import LoraConfig, get_peft_model

    if checkpointing:  # transformers 5 renamed it; the old name still works there, with a warning
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS)
    return get_peft_model(model, config)


# -- data ------------------------------------------------------------------------------------------------------------
def grounding_samples(count: int, size: int, seed: int = 0):
    """``count`` synthetic images: one bright ellipse of random size and place on structured noise, and its mask."""
    import numpy as np

    from MedSegReasoning.evaluation.layouts.units import image_volume

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for n in range(count):
        noise = rng.normal(0.0, 1.0, (size // 8 + 1, size // 8 + 1))
        coarse = np.kron(noise, np.ones((8, 8)))[:size, :size]
        image = 90.0 + 25.0 * coarse + rng.normal(0.0, 6.0, (size, size))
        ry, rx = rng.uniform(0.08, 0.2, 2) * size
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        image[mask] += 110.0
        out.append((f"lesion-{n}", image_volume(np.clip(image, 0, 255).astype(np.uint8), f"lesion-{n}"), mask))
    return out


def reward_samples(images, processor):
    from MedSegReasoning.reasoning.coords import ResizeRule, get_convention
    from MedSegReasoning.training.mask_reward import RewardSample
    from MedSegReasoning.volume import default_window

    ip = processor.image_processor
    rule = ResizeRule(patch_size=ip.patch_size, merge_size=ip.merge_size)
    convention = get_convention("qwen2.5-vl", rule)
    return {
        sid: RewardSample.on_slice(volume, mask, default_window(volume), convention) for sid, volume, mask in images
    }


# -- one step --------------------------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def prompt_inputs(processor, sample, device: str):
    from PIL import Image

    view = sample.views.views[0]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.fromarray(view.image)], return_tensors="pt")
    return {k: v.to(device) for k, v in inputs.items()}


def step(model, processor, optimizer, samples, reward, weights, args, device: str) -> dict[str, float]:
    """One generate -> reward -> update step over every prompt; its phase times and mean rewards."""
    import torch

    from MedSegReasoning.training.rewards import format_reward

    times = {"generate_s": 0.0, "reward_s": 0.0, "update_s": 0.0}
    rewards_all: list[float] = []
    masks_all: list[float] = []
    optimizer.zero_grad(set_to_none=True)
    for sid, sample in samples.items():
        inputs = prompt_inputs(processor, sample, device)
        prompt_len = inputs["input_ids"].shape[1]
        sync(device)
        t0 = time.perf_counter()
        model.eval()
        length = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
        if args.forced:
            forced = ForcedBoxes(processor.tokenizer, sample, prompt_len, args.group)
            length = {"max_new_tokens": forced.longest + 1, "prefix_allowed_tokens_fn": forced}
        with torch.no_grad():
            sequences = model.generate(
                **inputs, do_sample=True, temperature=1.0, num_return_sequences=args.group, use_cache=True, **length
            )
        sync(device)
        t1 = time.perf_counter()
        texts = processor.batch_decode(sequences[:, prompt_len:], skip_special_tokens=True)
        mask_scores = reward(None, texts, sample_id=[sid] * len(texts))
        totals = [
            weights.total({"format": format_reward(t), "mask": m}) for t, m in zip(texts, mask_scores, strict=True)
        ]
        t2 = time.perf_counter()
        model.train()
        scores = torch.tensor(totals, dtype=torch.float32, device=device)
        advantages = (scores - scores.mean()) / (scores.std() + 1e-4) if len(totals) > 1 else scores * 0
        repeat = {
            "pixel_values": inputs["pixel_values"].repeat(args.group, 1),
            "image_grid_thw": inputs["image_grid_thw"].repeat(args.group, 1),
        }
        completion = sequences[:, prompt_len:]
        keep = completion.shape[1] + 1  # logits of the completion's positions only, as TRL's logits_to_keep
        mask = torch.ones_like(sequences)
        logits = model(input_ids=sequences, attention_mask=mask, use_cache=False, logits_to_keep=keep, **repeat).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        token_logp = logp.gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        loss = -(advantages[:, None] * token_logp).mean() / len(samples)
        loss.backward()
        del logits, logp
        sync(device)
        t3 = time.perf_counter()
        times["generate_s"] += t1 - t0
        times["reward_s"] += t2 - t1
        times["update_s"] += t3 - t2
        rewards_all += totals
        masks_all += mask_scores
    t4 = time.perf_counter()
    optimizer.step()
    sync(device)
    times["update_s"] += time.perf_counter() - t4
    return {
        **times,
        "reward_mean": sum(rewards_all) / len(rewards_all),
        "mask_dice_mean": sum(masks_all) / len(masks_all),
    }


class ForcedBoxes:
    """``--forced`` (tiny model, byte-level tokenizer): completion ``b`` of a group is constrained to an answer whose
    box is the truth's shifted by ``3 b`` pixels, so the rewards are real LiteMedSAM Dice values that differ within a
    group (non-zero advantages) although the tiny model itself has learnt nothing."""

    def __init__(self, tokenizer, sample, prompt_len: int, group: int) -> None:
        import numpy as np

        from MedSegReasoning.segmentation.base import box_from_mask

        view = sample.views.views[0]
        tile = view.tiles[0]
        i0, j0, i1, j1 = box_from_mask(np.take(sample.truth, tile.slice, axis=0))
        self.answers = []
        for b in range(group):
            x0, y0 = sample.convention.from_view_pixels(*tile.from_plane(i0 + 3 * b, j0), view.width, view.height)
            x1, y1 = sample.convention.from_view_pixels(*tile.from_plane(i1 + 1, j1 + 1), view.width, view.height)
            text = f'<think>bright oval</think><answer>{{"bbox": [{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}]}}</answer>'
            self.answers.append(tokenizer.encode(text, add_special_tokens=False))
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.prompt_len = prompt_len
        self.longest = max(len(a) for a in self.answers)

    def __call__(self, batch_id: int, input_ids) -> list[int]:
        answer = self.answers[batch_id % len(self.answers)]
        n = len(input_ids) - self.prompt_len
        return [answer[n]] if n < len(answer) else [self.end]


def peak_memory_mb(device: str) -> float | None:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    from MedSegReasoning.evaluation.metrics import peak_rss_mb

    return peak_rss_mb()


# -- the memory arithmetic ---------------------------------------------------------------------------------------
def parameter_count(arch: str) -> int:
    """Exact parameter count of ``arch``, built on the meta device (no memory, no weights)."""
    import torch
    import transformers as tf

    with torch.device("meta"):
        model = tf.Qwen2_5_VLForConditionalGeneration._from_config(qwen25_config(arch))
    return sum(p.numel() for p in model.parameters())


def lora_parameter_count(arch: str, rank: int) -> int:
    """LoRA adds ``rank * (in + out)`` per adapted projection: q, k, v, o, gate, up, down in every text layer."""
    t = ARCHS[arch]["text"]
    h, m, layers = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
    kv = t["num_key_value_heads"] * h // t["num_attention_heads"]
    per_layer = (h + h) + 2 * (h + kv) + (h + h) + 3 * (h + m)
    return rank * per_layer * layers


def memory_plan(arch: str, *, rank: int, sequences: int, prompt_tokens: int, new_tokens: int) -> dict[str, float]:
    """GiB of each part of a LoRA GRPO step on one GPU, from the architecture (arithmetic, not measured)."""
    t = ARCHS[arch]["text"]
    h, m, layers, vocab = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"], t["vocab_size"]
    head_dim = h // t["num_attention_heads"]
    tokens = prompt_tokens + new_tokens
    gib = 2**30
    params = parameter_count(arch)
    lora = lora_parameter_count(arch, rank)
    return {
        "parameters": params,
        "lora_parameters": lora,
        "weights_bf16": params * 2 / gib,
        "lora_fp32_weights_grads_adam": lora * 16 / gib,
        "checkpointed_layer_inputs": sequences * tokens * h * 2 * layers / gib,
        "one_layer_recompute": sequences * tokens * (4 * h + 3 * m) * 2 / gib,
        "completion_logits": sequences * new_tokens * vocab * (2 + 4 + 4) / gib,  # bf16, fp32 log-softmax, its grad
        "kv_cache_generate": sequences * tokens * 2 * layers * t["num_key_value_heads"] * head_dim * 2 / gib,
        "full_finetune_states": params * 16 / gib,
    }


def print_plan(args) -> dict[str, Any]:
    plans = {}
    for arch in ("3b", "7b"):
        plan = memory_plan(
            arch,
            rank=args.lora_rank,
            sequences=args.group,
            prompt_tokens=args.prompt_tokens,
            new_tokens=args.new_tokens,
        )
        plans[arch] = plan
        lora_total = sum(
            v for k, v in plan.items() if k not in ("parameters", "lora_parameters", "full_finetune_states")
        )
        print(
            f"Qwen2.5-VL-{arch.upper()}: {plan['parameters'] / 1e9:.2f} B parameters, LoRA r={args.lora_rank}: "
            f"{plan['lora_parameters'] / 1e6:.1f} M ({args.group} sequences of {args.prompt_tokens}+{args.new_tokens} tokens)"
        )
        for key, value in plan.items():
            if key not in ("parameters", "lora_parameters"):
                print(f"  {key:32s} {value:7.2f} GiB")
        print(f"  {'LoRA step total (HF generate)':32s} {lora_total:7.2f} GiB  (+ CUDA context and allocator slack)")
    return plans


# -- main ------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--base", help="hf:DIR, a local Qwen-VL checkpoint (real rewards)")
    which.add_argument("--arch", choices=sorted(ARCHS), help="the real architecture with random weights")
    which.add_argument("--tiny", action="store_true", help="a tiny model (CPU, tests)")
    which.add_argument("--plan", action="store_true", help="print the memory arithmetic for 3B and 7B and stop")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=2, help="images per step")
    parser.add_argument("--group", type=int, default=8, help="completions per image (GRPO's group)")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens per completion")
    parser.add_argument("--prompt-tokens", type=int, default=460, help="for --plan: prompt length (image + text)")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--segmenter", default="litemedsam", help="the mask reward's segmenter spec")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--forced", action="store_true", help="with --tiny: constrain completions to near-true boxes (real rewards)"
    )
    args = parser.parse_args(argv)
    if args.forced and not args.tiny:
        parser.error("--forced works with --tiny only (its byte-level tokenizer spells answers token by token)")
    if args.plan:
        plans = print_plan(args)
        if args.json:
            args.json.write_text(json.dumps({"plan": plans}, indent=2))
        return 0

    import torch

    from MedSegReasoning.segmentation.factory import create_segmenter
    from MedSegReasoning.training.mask_reward import MaskReward
    from MedSegReasoning.training.rewards import RewardWeights

    if args.tiny:
        args.new_tokens = min(args.new_tokens, 16)
        args.group = min(args.group, 4)
        args.image_size = min(args.image_size, 64)
        args.prompts = min(args.prompts, 2)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    start = time.perf_counter()
    if args.base:
        if not args.base.startswith("hf:"):
            parser.error("--base takes hf:DIR, a local checkpoint folder")
        model, processor = local_model(Path(args.base[3:]).expanduser(), device, dtype)
        what = f"checkpoint {args.base}"
    elif args.arch:
        model, processor = random_arch_model(args.arch, device, dtype)
        what = f"Qwen2.5-VL-{args.arch.upper()} architecture, random weights (rewards not meaningful)"
    else:
        from support.reasoning import build_tiny_qwen

        folder = build_tiny_qwen("qwen2_5_vl", Path(tempfile.mkdtemp(prefix="tiny-qwen-")) / "model")
        model, processor = local_model(folder, device, dtype)
        what = "tiny Qwen2.5-VL" + (
            ", completions forced to near-true boxes" if args.forced else " (rewards not meaningful)"
        )
    model = with_lora(model, args.lora_rank, not args.no_gradient_checkpointing)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    segmenter = create_segmenter(args.segmenter, device=device)
    samples = reward_samples(grounding_samples(args.prompts, args.image_size), processor)
    reward = MaskReward(segmenter, samples)
    encoded = reward.encode_all()
    weights = RewardWeights(format=0.5, box=0.0, points=0.0, mask=0.5)
    setup_s = time.perf_counter() - start
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    print(f"model: {what}; {total / 1e6:.2f} M parameters, {trainable / 1e6:.3f} M trainable (LoRA r={args.lora_rank})")
    print(
        f"device: {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else platform.processor() or 'cpu'}), "
        f"{str(dtype).removeprefix('torch.')}, gradient checkpointing {'off' if args.no_gradient_checkpointing else 'on'}; "
        f"{args.prompts} images x {args.group} completions x {args.new_tokens} tokens per step; setup {setup_s:.1f} s"
    )
    rows = []
    for n in range(1, args.steps + 1):
        t0 = time.perf_counter()
        row = step(model, processor, optimizer, samples, reward, weights, args, device)
        row["step_s"] = time.perf_counter() - t0
        row["samples_per_s"] = args.prompts * args.group / row["step_s"]
        rows.append(row)
        print(
            f"step {n}: {row['samples_per_s']:.2f} samples/s (generate {row['generate_s']:.2f} s, reward "
            f"{row['reward_s']:.2f} s, update {row['update_s']:.2f} s), reward {row['reward_mean']:.3f}, "
            f"mask Dice {row['mask_dice_mean']:.3f}"
        )
    timed = rows[1:] or rows  # the first step includes warm-up (kernels, allocator)
    samples_per_s = sum(args.prompts * args.group for _ in timed) / sum(r["step_s"] for r in timed)
    peak = peak_memory_mb(device)
    curve = [round(r["reward_mean"], 4) for r in rows]
    print(f"samples/s: {samples_per_s:.3f} (steps {2 if len(rows) > 1 else 1}-{len(rows)})")
    print(f"peak memory: {peak:.0f} MiB ({'GPU allocated' if device.startswith('cuda') else 'process RSS'})")
    print(f"reward curve: {' '.join(f'{v:.3f}' for v in curve)}")
    print(
        f"segmenter: {segmenter.stats.encoder_calls} encoder calls ({encoded} up front), "
        f"{segmenter.stats.decoder_calls} decoder calls"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": what,
                    "device": device,
                    "samples_per_s": samples_per_s,
                    "peak_memory_mb": peak,
                    "reward_curve": curve,
                    "steps": rows,
                    "encoder_calls": segmenter.stats.encoder_calls,
                    "decoder_calls": segmenter.stats.decoder_calls,
                    "measured_on_gpu": device.startswith("cuda"),
                },
                indent=2,
            )
        )
    return 0 if all(math.isfinite(r["reward_mean"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
